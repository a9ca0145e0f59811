"""Cohorts: which subjects exist, which modalities each has, and their validated volumes (DESIGN §3).

A cohort is described by either

* a **CSV manifest** with a ``subject`` column, one column per modality holding a NIfTI path or
  nothing (missing), and optional ``seg`` (tumour label map), ``mask`` (brain mask), ``wm``
  (white-matter mask) and ``split`` (``train``/``val``/``test``) columns. Relative paths are relative
  to the CSV's folder. A folder holding ``manifest.csv`` (what ``mmhvae make-cohort`` writes) is read
  through that file; or
* a **folder convention** ``<root>/<subject>/<subject>-<suffix>.nii.gz`` (BraTS style), detected
  automatically; ``<root>`` may also be a single case folder. The suffixes ``seg``, ``mask`` and
  ``wm`` name the optional maps; every other suffix is a modality.

Column names and suffixes are lower-cased and mapped through ``aliases`` (file suffix -> modality
name, e.g. ``{"t2w": "t2"}``); ``aliases=None`` uses the BraTS-friendly defaults of
:class:`~mmhvae.config.DataConfig`. Subjects without a ``split`` get one from a hash of their name
(70/15/15 train/val/test), so the assignment never changes when subjects are added.
"""

from __future__ import annotations

import csv
import hashlib
import re
import warnings as _warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np

from mmhvae.data.nifti import NiftiError, read_labels, read_volume
from mmhvae.errors import CohortError

SPLITS = ("train", "val", "test")
_SPLIT_SYNONYMS = {"training": "train", "validation": "val", "valid": "val", "testing": "test"}
SEG, MASK, WM = "seg", "mask", "wm"
MAPS = (SEG, MASK, WM)  # optional per-subject maps, not modalities
_RESERVED = ("subject", "split") + MAPS
# Display order for auto-detected modalities: the built-in cohort's order, then T1, then the rest.
_CANONICAL_ORDER = ("us", "t2", "cet1", "flair", "t1")
_NIFTI_SUFFIX = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


class CohortWarning(UserWarning):
    """Something in a cohort looks wrong but does not stop it loading (``strict=True`` refuses it)."""


@dataclass
class Subject:
    """One subject: the NIfTI path of each *present* modality and of its optional maps."""

    name: str
    paths: dict[str, Path]
    seg: Optional[Path] = None
    split: str = "train"
    brain_mask: Optional[Path] = None
    wm_mask: Optional[Path] = None

    def available(self, modalities: list[str]) -> tuple[bool, ...]:
        """Availability mask ``r`` over ``modalities`` (DESIGN §1)."""
        return tuple(m in self.paths for m in modalities)

    def files(self) -> dict[str, Path]:
        """Every file of the subject, keyed by modality or map name (``seg``, ``mask``, ``wm``)."""
        out = dict(self.paths)
        for key, path in ((SEG, self.seg), (MASK, self.brain_mask), (WM, self.wm_mask)):
            if path is not None:
                out[key] = path
        return out


def default_aliases() -> dict[str, str]:
    from mmhvae.config import DataConfig

    return dict(DataConfig().modality_aliases)


def known_modalities(aliases: dict[str, str]) -> set[str]:
    """Modality names the configuration knows (targets, rules, min-max list, alias targets)."""
    from mmhvae.config import DataConfig

    cfg = DataConfig()
    return set(_CANONICAL_ORDER) | set(cfg.wm_targets) | set(cfg.minmax_modalities) | set(aliases.values())


def hashed_split(name: str, fractions: tuple[float, float] = (0.70, 0.85)) -> str:
    """Deterministic 70/15/15 split from a hash of the subject name (stable across cohort edits)."""
    u = int(hashlib.sha1(name.encode("utf-8")).hexdigest()[:8], 16) / 2**32
    return "train" if u < fractions[0] else "val" if u < fractions[1] else "test"


def _normalize_split(value: str, where: str) -> str:
    split = _SPLIT_SYNONYMS.get(value.strip().lower(), value.strip().lower())
    if split not in SPLITS:
        raise CohortError(f"{where}: split {value!r} is not one of {list(SPLITS)}")
    return split


def _order_modalities(names: set[str]) -> list[str]:
    known = [m for m in _CANONICAL_ORDER if m in names]
    return known + sorted(names - set(known))


@dataclass
class Cohort:
    """Subjects and the ordered modality names ``modalities`` (the index order inside tensors)."""

    modalities: list[str]
    subjects: list[Subject]
    source: Path
    ignored: list[str] = field(default_factory=list)  # columns / suffixes not in the requested modalities
    skipped: list[str] = field(default_factory=list)  # subjects having only ignored modalities
    # Files matching no modality, empty subject folders, ...: warned about, refused with strict=True.
    warnings: list[str] = field(default_factory=list)

    # --- loading ----------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        source: str | Path,
        modalities: Optional[list[str]] = None,
        aliases: Optional[dict[str, str]] = None,
        strict: bool = False,
        problems: Optional[list[str]] = None,
    ) -> "Cohort":
        """Read a CSV manifest or a BraTS-style folder; see the module docstring for both layouts.

        ``modalities`` fixes the modality names and their order; a CSV column or folder suffix naming
        another known modality (e.g. ``flair`` for a model without FLAIR) is ignored and listed in
        ``ignored``, while an unrecognized CSV column is refused. ``None`` takes every modality found.
        Files are checked for existence here; their contents in :func:`load_subject`.

        A folder's files that match no modality (``sub1-adc.nii.gz`` for a model without ADC, a typo
        such as ``sub1-t2_.nii.gz``, a name without the ``<subject>-`` prefix) and empty subject folders
        are reported as :class:`CohortWarning` (listed in ``warnings``); ``strict=True`` refuses them.
        With a ``problems`` list, problems of single subjects (missing files, bad rows) are appended to
        it instead of raised, and warnings too (what ``mmhvae cohort check`` reports).
        """
        source = Path(source).expanduser()
        alias_map = default_aliases() if aliases is None else dict(aliases)
        alias_map = {k.strip().lower(): v.strip().lower() for k, v in alias_map.items()}
        wanted = [m.strip().lower() for m in modalities] if modalities is not None else None
        if wanted is not None and len(set(wanted)) != len(wanted):
            raise CohortError(f"duplicate modality names in {wanted}")
        if not source.exists():
            raise CohortError(
                f"{source}: cohort not found (expected a manifest CSV or a folder laid out as "
                "<root>/<subject>/<subject>-<modality>.nii.gz)"
            )
        if source.is_dir() and (source / "manifest.csv").is_file():
            source = source / "manifest.csv"
        if source.is_file():
            cohort = _load_csv(source, wanted, alias_map, problems)
        else:
            cohort = _load_folder(source, wanted, alias_map, problems)
        if not cohort.subjects:
            raise CohortError(f"{source}: no subjects found")
        if problems is not None:
            problems.extend(cohort.warnings)
        elif cohort.warnings and strict:
            raise CohortError(
                f"{source}: {len(cohort.warnings)} problem(s) (refused with --strict): " + "; ".join(cohort.warnings)
            )
        else:
            for message in cohort.warnings:
                _warnings.warn(message, CohortWarning, stacklevel=2)
        return cohort

    # --- queries ----------------------------------------------------------------------------------
    def select(self, split: str) -> list[Subject]:
        """Subjects of one split (``train``, ``val``, ``test``), or all of them for ``all``."""
        if split == "all":
            return list(self.subjects)
        split = _normalize_split(split, "Cohort.select")
        return [s for s in self.subjects if s.split == split]

    def subject(self, name: str) -> Subject:
        for s in self.subjects:
            if s.name == name:
                return s
        close = [s.name for s in self.subjects if name.lower() in s.name.lower()][:5]
        hint = f"; similar: {close}" if close else f"; first subjects: {[s.name for s in self.subjects[:5]]}"
        raise CohortError(f"{self.source}: no subject named {name!r}{hint}")

    def patterns(self) -> dict[tuple[bool, ...], int]:
        """Number of subjects per availability pattern ``r`` (tuple over ``modalities``), most frequent first."""
        counts: dict[tuple[bool, ...], int] = {}
        for s in self.subjects:
            key = s.available(self.modalities)
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], [not b for b in kv[0]])))

    def counts(self) -> dict[str, int]:
        """Number of subjects having each modality."""
        return {m: sum(m in s.paths for s in self.subjects) for m in self.modalities}

    def summary(self) -> str:
        """Per-modality counts and the count of each availability pattern (one pattern per line)."""
        from mmhvae.subsets import subset_name

        n = len(self.subjects)
        complete = sum(all(s.available(self.modalities)) for s in self.subjects)
        splits = {sp: sum(s.split == sp for s in self.subjects) for sp in SPLITS}
        head = ", ".join(f"{c} {m}" for m, c in self.counts().items()) + f", {complete} complete"
        lines = [
            f"{self.source}: {n} subjects",
            head,
            "split: " + ", ".join(f"{c} {sp}" for sp, c in splits.items()),
            f"segmentations: {sum(s.seg is not None for s in self.subjects)}, "
            f"brain masks: {sum(s.brain_mask is not None for s in self.subjects)}, "
            f"white-matter masks: {sum(s.wm_mask is not None for s in self.subjects)}",
            "availability patterns:",
        ]
        for pattern, count in self.patterns().items():
            name = subset_name(pattern, self.modalities) or "(none)"
            lines.append(f"  {count:5d}  {name}")
        if self.ignored:
            lines.append(f"ignored (not in the requested modalities): {sorted(self.ignored)}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} subjects with only ignored modalities: {self.skipped[:5]}")
        if self.warnings:
            lines.append(f"{len(self.warnings)} warning(s) about files (run `mmhvae cohort check` for all problems)")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# CSV manifests
# --------------------------------------------------------------------------------------------------


def _load_csv(
    path: Path, wanted: Optional[list[str]], aliases: dict[str, str], problems: Optional[list[str]] = None
) -> Cohort:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CohortError(f"{path}: cannot read the manifest ({exc})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise CohortError(f"{path}: empty manifest (expected a header row with a 'subject' column)")
    header = [c.strip().lower() for c in rows[0]]
    if "subject" not in header:
        raise CohortError(f"{path}: no 'subject' column in the header {rows[0]}")
    columns: dict[int, str] = {}  # column index -> modality or map name
    ignored: list[str] = []
    ignored_columns: list[int] = []
    for i, col in enumerate(header):
        if not col or col in ("subject", "split"):
            continue
        name = aliases.get(col, col)
        if name in MAPS:
            columns[i] = name
            continue
        if wanted is not None and name not in wanted:
            if name in known_modalities(aliases):
                ignored.append(col)  # a modality this run does not use (e.g. a model without FLAIR)
                ignored_columns.append(i)
                continue
            via = f" (alias of {name!r})" if name != col else ""
            raise CohortError(
                f"{path}: unknown modality column {rows[0][i]!r}{via}; expected modalities {wanted} or one "
                f"of {list(_RESERVED)}; rename the column or map it with an alias (e.g. --alias {col}=t2)"
            )
        if name in columns.values():
            raise CohortError(f"{path}: two columns map to {name!r}; check the header and the aliases")
        columns[i] = name
    found = [n for n in columns.values() if n not in MAPS]
    modalities = wanted if wanted is not None else _order_modalities(set(found))
    if not modalities:
        raise CohortError(f"{path}: no modality columns in the header {rows[0]}")
    split_col = header.index("split") if "split" in header else None
    subject_col = header.index("subject")

    subjects: list[Subject] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for line, row in enumerate(rows[1:], start=2):
        try:
            subject = _csv_row(path, line, row, header, columns, subject_col, split_col, ignored_columns, seen)
        except CohortError as exc:
            if problems is None:
                raise
            problems.append(str(exc))
            continue
        if isinstance(subject, str):
            skipped.append(subject)  # has images, but only of modalities this run does not use
        else:
            subjects.append(subject)
    return Cohort(modalities=list(modalities), subjects=subjects, source=path, ignored=ignored, skipped=skipped)


def _csv_row(
    path: Path, line: int, row: list[str], header: list[str], columns: dict[int, str], subject_col: int,
    split_col: Optional[int], ignored_columns: list[int], seen: set[str],
) -> "Subject | str":
    """One manifest row -> its :class:`Subject`, or its name when it only has ignored modalities."""
    where = f"{path}, line {line}"
    extra = [c for c in row[len(header):] if c.strip()]
    if extra:
        raise CohortError(
            f"{where}: {len(row)} cells but the header has {len(header)} columns (extra {extra[:3]}); "
            "a path with a comma must be quoted, or a column header is missing"
        )
    row = row + [""] * (len(header) - len(row))
    name = row[subject_col].strip()
    if not name:
        raise CohortError(f"{where}: empty subject name")
    if name in seen:
        raise CohortError(f"{where}: subject {name!r} appears twice")
    seen.add(name)
    files: dict[str, Path] = {}
    for i, key in columns.items():
        value = row[i].strip()
        if value:
            file = Path(value).expanduser()
            file = file if file.is_absolute() else path.parent / file
            if not file.is_file():
                raise CohortError(f"{where}: subject {name!r}, {key}: file not found: {file}")
            files[key] = file
    split_value = row[split_col].strip() if split_col is not None else ""
    split = _normalize_split(split_value, f"{where}, subject {name!r}") if split_value else hashed_split(name)
    if not any(k not in MAPS for k in files) and any(row[i].strip() for i in ignored_columns):
        return name
    return _make_subject(name, files, split, where)


def _make_subject(name: str, files: dict[str, Path], split: str, where: str) -> Subject:
    paths = {k: v for k, v in files.items() if k not in MAPS}
    if not paths:
        raise CohortError(f"{where}: subject {name!r} has no modality image (every modality is empty)")
    return Subject(
        name=name, paths=paths, seg=files.get(SEG), split=split,
        brain_mask=files.get(MASK), wm_mask=files.get(WM),
    )


# --------------------------------------------------------------------------------------------------
# Folder convention <root>/<subject>/<subject>-<suffix>.nii.gz
# --------------------------------------------------------------------------------------------------


def case_files(folder: Path, subject: Optional[str] = None) -> dict[str, Path]:
    """Raw suffix -> path for the files ``<folder>/<subject>-<suffix>.nii[.gz]`` (subject = folder name)."""
    subject = subject or folder.name
    out: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        if not file.is_file() or not _NIFTI_SUFFIX.search(file.name):
            continue
        stem = _NIFTI_SUFFIX.sub("", file.name)
        if stem.lower().startswith(subject.lower() + "-") or stem.lower().startswith(subject.lower() + "_"):
            out[stem[len(subject) + 1:].lower()] = file
    return out


def _stray_files(folder: Path, matched: dict[str, Path]) -> list[Path]:
    """NIfTI files in ``folder`` that do not follow ``<subject>-<suffix>.nii[.gz]``."""
    taken = set(matched.values())
    return [f for f in sorted(folder.iterdir())
            if f.is_file() and _NIFTI_SUFFIX.search(f.name) and f not in taken and not f.name.startswith(".")]


def _load_folder(
    root: Path, wanted: Optional[list[str]], aliases: dict[str, str], problems: Optional[list[str]] = None
) -> Cohort:
    folders = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    cases = [d for d in folders if case_files(d)]
    notes: list[str] = []
    if not cases:
        if case_files(root):
            cases, folders = [root], [root]  # a single case folder
        else:
            raise CohortError(
                f"{root}: no manifest.csv and no files named <subject>/<subject>-<modality>.nii.gz; "
                "write a CSV manifest or rename the files (e.g. sub01/sub01-t2.nii.gz)"
            )
    for folder in folders:
        if folder in cases:
            continue
        niftis = [f.name for f in sorted(folder.iterdir()) if f.is_file() and _NIFTI_SUFFIX.search(f.name)]
        if niftis:
            notes.append(
                f"{folder}: no file is named {folder.name}-<modality>.nii.gz (found {niftis[:3]}); "
                f"rename them, e.g. {folder.name}/{folder.name}-t2.nii.gz"
            )
        else:
            notes.append(f"{folder}: empty subject folder (no NIfTI file); remove it or add the subject's images")
    known = known_modalities(aliases)
    per_case: list[tuple[Path, dict[str, Path]]] = []
    ignored: set[str] = set()
    for case in cases:
        files: dict[str, Path] = {}
        matched = case_files(case)
        for stray in _stray_files(case, matched):
            notes.append(
                f"{stray}: does not follow {case.name}-<modality>.nii.gz and matches no modality; rename it"
            )
        for suffix, file in matched.items():
            name = aliases.get(suffix, suffix)
            if name not in MAPS and wanted is not None and name not in wanted:
                ignored.add(suffix)
                if name not in known:
                    notes.append(
                        f"{file}: suffix {suffix!r} matches no modality of {wanted}; rename the file or map it "
                        f"with an alias (--alias {suffix}=NAME)"
                    )
                continue
            if name not in MAPS and wanted is None and name not in known:
                notes.append(
                    f"{file}: suffix {suffix!r} is not a known modality name ({sorted(known)}); it is read as a "
                    f"modality of its own: rename the file or map it with --alias {suffix}=NAME if it is a typo"
                )
            if name in files:
                clash = (f"{case}: files {files[name].name} and {file.name} both map to {name!r}; "
                         "remove one or change the aliases")
                if problems is None:
                    raise CohortError(clash)
                problems.append(clash)
                continue
            files[name] = file
        per_case.append((case, files))
    found = {k for _, files in per_case for k in files if k not in MAPS}
    modalities = wanted if wanted is not None else _order_modalities(found)
    subjects = []
    for case, files in per_case:
        if not any(k not in MAPS for k in files):
            empty = (f"{case}: subject {case.name!r} has no image of the modalities {modalities} "
                     f"(found suffixes {sorted(case_files(case))}); map them with aliases (e.g. --alias t2w=t2)")
            if problems is None:
                raise CohortError(empty)
            problems.append(empty)
            continue
        subjects.append(_make_subject(case.name, files, hashed_split(case.name), str(case)))
    return Cohort(modalities=list(modalities), subjects=subjects, source=root, ignored=sorted(ignored),
                  warnings=notes)


# --------------------------------------------------------------------------------------------------
# Volumes of one subject
# --------------------------------------------------------------------------------------------------


@dataclass
class SubjectVolumes:
    """The validated volumes of one subject, all on one voxel grid ``(X, Y, Z)``.

    ``images`` holds float32 arrays of the present modalities only; ``affine`` and ``header`` are
    those of the first modality (inference writes its outputs with them).
    """

    name: str
    images: dict[str, np.ndarray]
    affine: np.ndarray
    header: nib.Nifti1Header
    seg: Optional[np.ndarray] = None  # int16 (X, Y, Z) labels
    brain_mask: Optional[np.ndarray] = None  # bool (X, Y, Z)
    wm_mask: Optional[np.ndarray] = None  # bool (X, Y, Z)

    @property
    def shape(self) -> tuple[int, int, int]:
        return next(iter(self.images.values())).shape


def _check_grid(
    subject: str, key: str, path: Path, shape: tuple, affine: np.ndarray,
    ref: tuple[str, Path, tuple, np.ndarray], tolerance: float,
) -> None:
    ref_key, ref_path, ref_shape, ref_affine = ref
    if tuple(shape) != tuple(ref_shape):
        raise CohortError(
            f"subject {subject!r}: {key} image {path} has shape {tuple(shape)} but {ref_key} image "
            f"{ref_path} has shape {tuple(ref_shape)}; all images of a subject must share one voxel grid "
            "(resample them onto a common reference first)"
        )
    diff = float(np.max(np.abs(affine - ref_affine)))
    if diff > tolerance:
        raise CohortError(
            f"subject {subject!r}: {key} image {path} has an affine that differs from that of {ref_key} "
            f"image {ref_path} by up to {diff:.4g} (tolerance {tolerance:g}); the images are not on the "
            f"same grid (register/resample them, or raise the tolerance); {key}: {_grid_text(affine)}, "
            f"{ref_key}: {_grid_text(ref_affine)}"
        )


def _grid_text(affine: np.ndarray) -> str:
    """Voxel size and origin of an affine, in one short phrase."""
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    origin = np.asarray(affine)[:3, 3]
    return f"voxels {np.round(spacing, 3).tolist()} mm at origin {np.round(origin, 2).tolist()}"


def load_subject(
    subject: Subject, affine_tolerance: float = 1e-3, modalities: Optional[list[str]] = None
) -> SubjectVolumes:
    """Read and validate every file of ``subject``.

    Checks: at least one modality; modality names within ``modalities`` (when given); each file
    readable, 3D and finite; all images and maps with the same shape and affine (max absolute
    difference of the 4x4 matrices <= ``affine_tolerance``). Raises :class:`CohortError` naming the
    subject, the file and the problem.
    """
    if not subject.paths:
        raise CohortError(f"subject {subject.name!r}: no modality image")
    if modalities is not None:
        unknown = sorted(set(subject.paths) - set(modalities))
        if unknown:
            raise CohortError(
                f"subject {subject.name!r}: unknown modality {unknown} (files "
                f"{[str(subject.paths[u]) for u in unknown]}); known modalities: {list(modalities)}"
            )
    images: dict[str, np.ndarray] = {}
    ref: Optional[tuple] = None  # (key, path, shape, affine) of the first image: the subject's grid
    header = None
    for key, path in subject.paths.items():
        try:
            data, affine, hdr = read_volume(path)
        except NiftiError as exc:
            raise CohortError(f"subject {subject.name!r}, {key}: {exc}") from None
        if ref is None:
            ref, header = (key, path, data.shape, affine), hdr
        else:
            _check_grid(subject.name, key, path, data.shape, affine, ref, affine_tolerance)
        images[key] = data
    maps: dict[str, Optional[np.ndarray]] = {SEG: None, MASK: None, WM: None}
    for key, path in ((SEG, subject.seg), (MASK, subject.brain_mask), (WM, subject.wm_mask)):
        if path is None:
            continue
        try:
            labels, affine, _ = read_labels(path)
        except NiftiError as exc:
            raise CohortError(f"subject {subject.name!r}, {key}: {exc}") from None
        _check_grid(subject.name, key, path, labels.shape, affine, ref, affine_tolerance)
        maps[key] = labels if key == SEG else labels > 0
    return SubjectVolumes(
        name=subject.name, images=images, affine=ref[3], header=header,
        seg=maps[SEG], brain_mask=maps[MASK], wm_mask=maps[WM],
    )


# --------------------------------------------------------------------------------------------------
# Integrity check of a whole cohort (``mmhvae cohort check``)
# --------------------------------------------------------------------------------------------------


@dataclass
class CohortCheck:
    """Every problem found in a cohort, one line each; ``ok`` when there is none."""

    source: Path
    subjects: int = 0
    files: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> str:
        head = f"{self.source}: {self.subjects} subjects, {self.files} files read"
        if self.ok:
            return head + ": no problem found"
        lines = [f"{head}: {len(self.problems)} problem(s)"]
        return "\n".join(lines + [f"  {p}" for p in self.problems])


def check_cohort(
    source: str | Path,
    modalities: Optional[list[str]] = None,
    aliases: Optional[dict[str, str]] = None,
    affine_tolerance: float = 1e-3,
) -> CohortCheck:
    """Read every file of a cohort and report every problem at once (like nnU-Net's integrity check).

    Finds: manifest rows naming missing files or with extra cells, files matching no modality, empty
    subject folders, unreadable or truncated files, 4D images, NaN/Inf voxels, images with no signal
    (every voxel equal), and images or maps whose shape or affine differs from the subject's first
    image. Nothing is raised for a problem of one subject; a cohort that cannot be read at all (no
    subjects, bad header) is one problem.
    """
    check = CohortCheck(source=Path(source))
    try:
        cohort = Cohort.load(source, modalities=modalities, aliases=aliases, problems=check.problems)
    except CohortError as exc:
        check.problems.append(str(exc))
        return check
    check.source = cohort.source
    check.subjects = len(cohort.subjects)
    for subject in cohort.subjects:
        check.problems.extend(_check_subject(subject, affine_tolerance, check))
    return check


def _check_subject(subject: Subject, tolerance: float, check: CohortCheck) -> list[str]:
    problems: list[str] = []
    ref: Optional[tuple] = None
    for key, path in subject.files().items():
        check.files += 1
        reader = read_volume if key not in MAPS else read_labels
        try:
            data, affine, _ = reader(path)
        except NiftiError as exc:
            problems.append(f"subject {subject.name!r}, {key}: {exc}")
            continue
        if key not in MAPS and data.size and float(data.min()) == float(data.max()):
            problems.append(f"subject {subject.name!r}, {key}: {path} has no signal (every voxel is {data.flat[0]:g})")
        if key == MASK and not data.any():
            problems.append(f"subject {subject.name!r}, mask: {path} is empty (no brain voxel)")
        if ref is None:
            ref = (key, path, data.shape, affine)
            continue
        try:
            _check_grid(subject.name, key, path, data.shape, affine, ref, tolerance)
        except CohortError as exc:
            problems.append(str(exc))
    return problems

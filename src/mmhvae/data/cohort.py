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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np

from mmhvae.data.nifti import NiftiError, read_labels, read_volume

SPLITS = ("train", "val", "test")
_SPLIT_SYNONYMS = {"training": "train", "validation": "val", "valid": "val", "testing": "test"}
SEG, MASK, WM = "seg", "mask", "wm"
MAPS = (SEG, MASK, WM)  # optional per-subject maps, not modalities
_RESERVED = ("subject", "split") + MAPS
# Display order for auto-detected modalities: the built-in cohort's order, then T1, then the rest.
_CANONICAL_ORDER = ("us", "t2", "cet1", "flair", "t1")
_NIFTI_SUFFIX = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


class CohortError(ValueError):
    """A cohort, subject or file is invalid; the message names the subject, the file and the problem."""


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

    # --- loading ----------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        source: str | Path,
        modalities: Optional[list[str]] = None,
        aliases: Optional[dict[str, str]] = None,
    ) -> "Cohort":
        """Read a CSV manifest or a BraTS-style folder; see the module docstring for both layouts.

        ``modalities`` fixes the modality names and their order; a CSV column or folder suffix naming
        another known modality (e.g. ``flair`` for a model without FLAIR) is ignored and listed in
        ``ignored``, while an unrecognized CSV column is refused. ``None`` takes every modality found.
        Files are checked for existence here; their contents in :func:`load_subject`.
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
            cohort = _load_csv(source, wanted, alias_map)
        else:
            cohort = _load_folder(source, wanted, alias_map)
        if not cohort.subjects:
            raise CohortError(f"{source}: no subjects found")
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
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# CSV manifests
# --------------------------------------------------------------------------------------------------


def _load_csv(path: Path, wanted: Optional[list[str]], aliases: dict[str, str]) -> Cohort:
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
        row = row + [""] * (len(header) - len(row))
        name = row[subject_col].strip()
        where = f"{path}, line {line}"
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
            skipped.append(name)  # has images, but only of modalities this run does not use
            continue
        subjects.append(_make_subject(name, files, split, where))
    return Cohort(modalities=list(modalities), subjects=subjects, source=path, ignored=ignored, skipped=skipped)


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


def _load_folder(root: Path, wanted: Optional[list[str]], aliases: dict[str, str]) -> Cohort:
    cases = [d for d in sorted(root.iterdir()) if d.is_dir() and case_files(d)]
    if not cases:
        if case_files(root):
            cases = [root]  # a single case folder
        else:
            raise CohortError(
                f"{root}: no manifest.csv and no files named <subject>/<subject>-<modality>.nii.gz; "
                "write a CSV manifest or rename the files (e.g. sub01/sub01-t2.nii.gz)"
            )
    per_case: list[tuple[Path, dict[str, Path]]] = []
    ignored: set[str] = set()
    for case in cases:
        files: dict[str, Path] = {}
        for suffix, file in case_files(case).items():
            name = aliases.get(suffix, suffix)
            if name not in MAPS and wanted is not None and name not in wanted:
                ignored.add(suffix)
                continue
            if name in files:
                raise CohortError(
                    f"{case}: files {files[name].name} and {file.name} both map to {name!r}; "
                    "remove one or change the aliases"
                )
            files[name] = file
        per_case.append((case, files))
    found = {k for _, files in per_case for k in files if k not in MAPS}
    modalities = wanted if wanted is not None else _order_modalities(found)
    subjects = []
    for case, files in per_case:
        if not any(k not in MAPS for k in files):
            raise CohortError(
                f"{case}: subject {case.name!r} has no image of the modalities {modalities} "
                f"(found suffixes {sorted(case_files(case))}); map them with aliases (e.g. --alias t2w=t2)"
            )
        subjects.append(_make_subject(case.name, files, hashed_split(case.name), str(case)))
    return Cohort(modalities=list(modalities), subjects=subjects, source=root, ignored=sorted(ignored))


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
            f"same grid (register/resample them, or raise the tolerance)\n{key}:\n{np.round(affine, 4)}\n"
            f"{ref_key}:\n{np.round(ref_affine, 4)}"
        )


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

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

The parts: :mod:`~mmhvae.data.subject` (one subject, splits, map names), :mod:`~mmhvae.data.manifest`
and :mod:`~mmhvae.data.case_folders` (the two layouts), :mod:`~mmhvae.data.subject_volumes` (one
subject's validated volumes) and :mod:`~mmhvae.data.cohort_check` (every problem at once); their
public names are re-exported here.
"""

from __future__ import annotations

import warnings as _warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mmhvae.data.case_folders import case_files, read_case_folders
from mmhvae.data.cohort_check import CohortCheck, check_cohort
from mmhvae.data.manifest import read_manifest
from mmhvae.data.subject import (
    MAPS,
    MASK,
    SEG,
    SPLITS,
    WM,
    CohortListing,
    Subject,
    default_aliases,
    hashed_split,
    known_modalities,
    normalize_split,
)
from mmhvae.data.subject_volumes import SubjectVolumes, load_subject
from mmhvae.errors import CohortError


class CohortWarning(UserWarning):
    """Something in a cohort looks wrong but does not stop it loading (``strict=True`` refuses it)."""



@dataclass
class Cohort(CohortListing):
    """Subjects and the ordered modality names ``modalities`` (the index order inside tensors)."""

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
        read = read_manifest if source.is_file() else read_case_folders
        cohort = cls(**vars(read(source, wanted, alias_map, problems)))
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
        split = normalize_split(split, "Cohort.select")
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

__all__ = [
    "MAPS", "MASK", "SEG", "SPLITS", "WM", "Cohort", "CohortCheck", "CohortError", "CohortWarning", "Subject",
    "SubjectVolumes", "case_files", "check_cohort", "default_aliases", "hashed_split", "known_modalities",
    "load_subject",
]

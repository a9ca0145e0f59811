"""One subject of a cohort and the vocabulary of cohort descriptions (DESIGN §3).

A subject has a NIfTI file per *present* modality and optional maps (``seg`` tumour labels,
``mask`` brain mask, ``wm`` white-matter mask); it belongs to one split (``train``/``val``/``test``),
given or drawn from a hash of its name. :class:`CohortListing` is what a manifest or a folder of
cases lists; :class:`~mmhvae.data.cohort.Cohort` adds the queries.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from mmhvae.errors import CohortError

SPLITS = ("train", "val", "test")
_SPLIT_SYNONYMS = {"training": "train", "validation": "val", "valid": "val", "testing": "test"}
SEG, MASK, WM = "seg", "mask", "wm"
MAPS = (SEG, MASK, WM)  # optional per-subject maps, not modalities
RESERVED = ("subject", "split") + MAPS
# Display order for auto-detected modalities: the built-in cohort's order, then T1, then the rest.
_CANONICAL_ORDER = ("us", "t2", "cet1", "flair", "t1")


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


def normalize_split(value: str, where: str) -> str:
    split = _SPLIT_SYNONYMS.get(value.strip().lower(), value.strip().lower())
    if split not in SPLITS:
        raise CohortError(f"{where}: split {value!r} is not one of {list(SPLITS)}")
    return split


def order_modalities(names: set[str]) -> list[str]:
    known = [m for m in _CANONICAL_ORDER if m in names]
    return known + sorted(names - set(known))


def make_subject(name: str, files: dict[str, Path], split: str, where: str) -> Subject:
    """A :class:`Subject` from its files keyed by modality or map name; it needs one modality image."""
    paths = {k: v for k, v in files.items() if k not in MAPS}
    if not paths:
        raise CohortError(f"{where}: subject {name!r} has no modality image (every modality is empty)")
    return Subject(
        name=name, paths=paths, seg=files.get(SEG), split=split,
        brain_mask=files.get(MASK), wm_mask=files.get(WM),
    )


@dataclass
class CohortListing:
    """What a cohort description lists: the ordered modality names (the index order inside tensors)
    and the subjects, with what was left out and why."""

    modalities: list[str]
    subjects: list[Subject]
    source: Path
    ignored: list[str] = field(default_factory=list)  # columns / suffixes not in the requested modalities
    skipped: list[str] = field(default_factory=list)  # subjects having only ignored modalities
    # Files matching no modality, empty subject folders, ...: warned about, refused with strict=True.
    warnings: list[str] = field(default_factory=list)

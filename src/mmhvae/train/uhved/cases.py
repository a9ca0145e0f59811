"""U-HVED cases in memory: one harmonized subject per :class:`Case`, loaded from a cohort."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from mmhvae.models.uhved import UHVEDConfig


@dataclass
class Case:
    """One harmonized subject.

    images: ``(M, X, Y, Z)`` float32 in model modality order; slots with ``available`` False are zeros
        and are never read. available: ``(M,)`` bool. seg: ``(X, Y, Z)`` int64 class indices (position
        in ``seg_labels``) or None. brain: ``(X, Y, Z)`` bool or None. affine/header: NIfTI geometry.
    """

    name: str
    images: np.ndarray
    available: np.ndarray
    seg: Optional[np.ndarray] = None
    brain: Optional[np.ndarray] = None
    affine: Optional[np.ndarray] = None
    header: Any = None


def labels_to_classes(seg: np.ndarray, seg_labels: Sequence[int], where: str = "segmentation") -> np.ndarray:
    """Label values -> class indices ``k`` with ``seg_labels[k] == value``; unknown values are refused."""
    seg = np.asarray(seg)
    rounded = np.rint(seg).astype(np.int64)
    values = np.unique(rounded)
    unknown = sorted(set(values.tolist()) - set(int(v) for v in seg_labels))
    if unknown:
        raise ValueError(
            f"{where}: label value(s) {unknown} are not in model.seg_labels {list(seg_labels)}; "
            "set model.seg_labels to the label values of your cohort"
        )
    lut = np.zeros(max(seg_labels) + 1, dtype=np.int64)
    for k, v in enumerate(seg_labels):
        lut[int(v)] = k
    return lut[rounded]


def case_from_volumes(volumes: Any, cfg: UHVEDConfig) -> Case:
    """A :class:`mmhvae.data.cohort.SubjectVolumes` -> harmonized :class:`Case` (model modalities only)."""
    from mmhvae.data.harmonize import harmonize_subject

    mods = cfg.model.modalities
    present = [m for m in mods if m in volumes.images]
    if not present:
        raise ValueError(
            f"subject {volumes.name}: none of the model's modalities {mods} is present "
            f"(has {sorted(volumes.images)})"
        )
    harmonized, _ = harmonize_subject(volumes, cfg.data)
    images = np.zeros((len(mods), *volumes.shape), dtype=np.float32)
    for j, m in enumerate(mods):
        if m in harmonized:
            images[j] = harmonized[m]
    seg = None
    if volumes.seg is not None:
        seg = labels_to_classes(volumes.seg, cfg.model.seg_labels, f"subject {volumes.name}")
    return Case(
        name=volumes.name,
        images=images,
        available=np.array([m in volumes.images for m in mods]),
        seg=seg,
        brain=volumes.brain_mask,
        affine=volumes.affine,
        header=volumes.header,
    )


def load_cases(
    cohort: str | Path, split: str, cfg: UHVEDConfig, log: Callable[[str], None] = print
) -> list[Case]:
    """Load and harmonize the subjects of ``split`` (``train``/``val``/``test``/``all``) of a cohort
    manifest or folder. Only the model's modalities are read; subjects with none of them are skipped.
    The images of a subject must share one grid (affines within ``data.affine_tolerance``)."""
    from mmhvae.data.cohort import Cohort, load_subject

    co = Cohort.load(cohort, aliases=cfg.data.modality_aliases)
    subjects = co.select(split)
    if not subjects:
        raise ValueError(f"{cohort}: no subject in split {split!r}")
    mods = cfg.model.modalities
    cases, skipped = [], []
    for subject in subjects:
        paths = {m: p for m, p in subject.paths.items() if m in mods}
        if not paths:
            skipped.append(subject.name)
            continue
        volumes = load_subject(dataclasses.replace(subject, paths=paths), cfg.data.affine_tolerance)
        cases.append(case_from_volumes(volumes, cfg))
    if skipped:
        log(f"skipped {len(skipped)} subject(s) without any of {mods}: {skipped[:5]}")
    if not cases:
        raise ValueError(
            f"{cohort}: no subject in split {split!r} has any of {mods} (cohort has {co.modalities})"
        )
    return cases

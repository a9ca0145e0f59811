"""The validated volumes of one subject, all on one voxel grid (DESIGN §3)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np

from mmhvae.data.nifti import NiftiError, read_labels, read_volume
from mmhvae.data.subject import MASK, SEG, WM, Subject
from mmhvae.errors import CohortError


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


def check_grid(
    subject: str, key: str, path: Path, shape: tuple, affine: np.ndarray,
    ref: tuple[str, Path, tuple, np.ndarray], tolerance: float,
) -> None:
    """Refuse an image or map whose shape or affine differs from the subject's reference image ``ref``."""
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
            check_grid(subject.name, key, path, data.shape, affine, ref, affine_tolerance)
        images[key] = data
    maps: dict[str, Optional[np.ndarray]] = {SEG: None, MASK: None, WM: None}
    for key, path in ((SEG, subject.seg), (MASK, subject.brain_mask), (WM, subject.wm_mask)):
        if path is None:
            continue
        try:
            labels, affine, _ = read_labels(path)
        except NiftiError as exc:
            raise CohortError(f"subject {subject.name!r}, {key}: {exc}") from None
        check_grid(subject.name, key, path, labels.shape, affine, ref, affine_tolerance)
        maps[key] = labels if key == SEG else labels > 0
    return SubjectVolumes(
        name=subject.name, images=images, affine=ref[3], header=header,
        seg=maps[SEG], brain_mask=maps[MASK], wm_mask=maps[WM],
    )

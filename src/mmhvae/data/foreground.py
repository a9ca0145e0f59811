"""Background value and foreground mask of an acquired volume (no brain mask given).

Real cohorts store the background in several ways: 0 (skull-stripped BraTS data), a negative constant
(volumes z-scored inside the brain, e.g. BraTS 2013: background = -3.6), or no background at all (MR
resliced into an ultrasound field of view). The background value is taken as the most common value
on the volume's six faces when it covers at least half of them; the foreground is then every voxel
that differs from it. With no dominant face value the whole volume is foreground.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

DOMINANT_FRACTION = 0.5  # share of face voxels the background value must cover


def background_value(volume: np.ndarray) -> Optional[float]:
    """The constant background of ``volume`` ``(X, Y, Z)``, or None when it has none."""
    volume = np.asarray(volume)
    faces = np.concatenate([
        volume[0].ravel(), volume[-1].ravel(), volume[:, 0].ravel(), volume[:, -1].ravel(),
        volume[:, :, 0].ravel(), volume[:, :, -1].ravel(),
    ])
    values, counts = np.unique(faces, return_counts=True)
    k = int(counts.argmax())
    return float(values[k]) if counts[k] >= DOMINANT_FRACTION * faces.size else None


def foreground_mask(volume: np.ndarray, background: Optional[float] = None) -> np.ndarray:
    """Bool ``(X, Y, Z)``: voxels that differ from the background (:func:`background_value` if not given)."""
    volume = np.asarray(volume)
    if background is None:
        background = background_value(volume)
    if background is None:
        return np.ones(volume.shape, dtype=bool)
    return volume != np.asarray(background, dtype=volume.dtype)


def subject_foreground(images: dict[str, np.ndarray], brain_mask: Optional[np.ndarray] = None) -> np.ndarray:
    """A subject's foreground: the brain mask if given, else the union of its images' foregrounds."""
    if brain_mask is not None:
        return np.asarray(brain_mask, dtype=bool)
    shape = next(iter(images.values())).shape
    union = np.zeros(shape, dtype=bool)
    for volume in images.values():
        union |= foreground_mask(volume)
    return union

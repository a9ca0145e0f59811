"""Random smooth fields and coordinate grids (millimetres, origin at the volume centre)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def smooth_field(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float], scale_mm: float) -> np.ndarray:
    """Zero-mean, unit-std random field ``shape`` with features about ``scale_mm`` wide.

    White noise on a coarse grid (one node per ``scale_mm``) is interpolated to full resolution with
    Gaussian weights, one axis at a time as matrix products: a few thousand random numbers and three
    small matrix multiplications instead of filtering a full-resolution noise volume.
    """
    field = rng.standard_normal([max(int(np.ceil(n * s / scale_mm)) + 3, 4) for n, s in zip(shape, spacing)])
    field = field.astype(np.float32)
    for axis, (n, s) in enumerate(zip(shape, spacing)):
        weights = _interpolator(n, s, field.shape[axis], scale_mm)
        field = np.moveaxis(np.tensordot(weights, field, axes=([1], [axis])), 0, axis)
    return ((field - field.mean()) / (field.std() + 1e-6)).astype(np.float32)


def _interpolator(n: int, spacing: float, nodes: int, scale_mm: float) -> np.ndarray:
    """``(n, nodes)`` row-normalized Gaussian weights from coarse nodes to voxel centres."""
    voxels = (np.arange(n) - (n - 1) / 2) * spacing
    centres = (np.arange(nodes) - (nodes - 1) / 2) * scale_mm
    weights = np.exp(-0.5 * ((voxels[:, None] - centres[None, :]) / (0.6 * scale_mm)) ** 2)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def grid(shape: Sequence[int], spacing: Sequence[float]) -> list[np.ndarray]:
    """Broadcastable millimetre coordinates of the voxel centres, origin at the volume centre."""
    axes = []
    for a, (n, s) in enumerate(zip(shape, spacing)):
        coords = ((np.arange(n, dtype=np.float32) - (n - 1) / 2) * s).astype(np.float32)
        view = [1, 1, 1]
        view[a] = n
        axes.append(coords.reshape(view))
    return axes


def ramp(x: np.ndarray, width: float) -> np.ndarray:
    """Soft step: 0 for ``x < -width/2``, 1 for ``x > width/2``, linear between (partial volume)."""
    return np.clip(np.float32(0.5) + x / np.float32(width), 0.0, 1.0)

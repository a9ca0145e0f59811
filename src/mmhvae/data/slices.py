"""3D volume <-> 2D slices along one axis, centre-padded or cropped to the model size (DESIGN §3).

:func:`volume_to_slices` records in a :class:`SliceGeometry` everything needed by
:func:`slices_to_volume` to put the slices back exactly where they came from; the affine is never
touched, so inference writes restacked volumes with the input's affine and header.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class SliceGeometry:
    """How slices were cut from a volume.

    ``shape``: the volume shape ``(X, Y, Z)``; ``axis``: the slice axis; ``size``: the slice side;
    ``indices``: the slice positions kept along ``axis``; ``pad``/``crop``: voxels added/removed before
    each of the two in-plane axes (in volume order, ``axis`` removed) by the centre pad/crop.
    """

    shape: tuple[int, int, int]
    axis: int
    size: int
    indices: tuple[int, ...]
    pad: tuple[int, int]
    crop: tuple[int, int]

    @property
    def in_plane(self) -> tuple[int, int]:
        """The volume's lengths along the two in-plane axes."""
        return tuple(n for a, n in enumerate(self.shape) if a != self.axis)  # type: ignore[return-value]

    def windows(self) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        """``(volume window, slice window)`` per in-plane axis: the overlapping regions of both."""
        vol, img = [], []
        for n, pad, crop in zip(self.in_plane, self.pad, self.crop):
            kept = min(n - crop, self.size - pad)
            vol.append(slice(crop, crop + kept))
            img.append(slice(pad, pad + kept))
        return (vol[0], vol[1]), (img[0], img[1])

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "SliceGeometry":
        return cls(
            shape=tuple(int(v) for v in data["shape"]), axis=int(data["axis"]), size=int(data["size"]),
            indices=tuple(int(v) for v in data["indices"]), pad=tuple(int(v) for v in data["pad"]),
            crop=tuple(int(v) for v in data["crop"]),
        )


def _check_axis(axis: int, ndim: int = 3) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"slice axis {axis} out of range for a {ndim}D volume")
    return axis % ndim


def volume_to_slices(
    volume: np.ndarray, axis: int, size: int, indices: Optional[Sequence[int]] = None
) -> tuple[np.ndarray, SliceGeometry]:
    """Cut ``volume`` ``(X, Y, Z)`` into slices ``(N, size, size)`` along ``axis``.

    In-plane axes shorter than ``size`` are zero-padded, longer ones cropped, both centred. ``indices``
    picks the slices to keep (default: all). Float volumes give float32 slices; integer and boolean
    volumes (labels, masks) keep their dtype.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {volume.shape}")
    if size <= 0:
        raise ValueError(f"slice size must be positive, got {size}")
    axis = _check_axis(axis)
    stack = np.moveaxis(volume, axis, 0)
    idx = np.arange(stack.shape[0]) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= stack.shape[0]):
        raise ValueError(f"slice indices out of range 0..{stack.shape[0] - 1}")
    pad, crop = [], []
    for n in stack.shape[1:]:
        pad.append(max(size - n, 0) // 2)
        crop.append(max(n - size, 0) // 2)
    geometry = SliceGeometry(
        shape=tuple(int(s) for s in volume.shape), axis=axis, size=int(size),
        indices=tuple(int(i) for i in idx), pad=(pad[0], pad[1]), crop=(crop[0], crop[1]),
    )
    dtype = np.float32 if np.issubdtype(volume.dtype, np.floating) else volume.dtype
    out = np.zeros((idx.size, size, size), dtype=dtype)
    (v0, v1), (i0, i1) = geometry.windows()
    out[:, i0, i1] = stack[idx][:, v0, v1]
    return out, geometry


def slices_to_volume(slices: np.ndarray, geometry: SliceGeometry, fill: float = 0.0) -> np.ndarray:
    """Exact inverse of :func:`volume_to_slices`: ``(N, size, size)`` -> volume of ``geometry.shape``.

    Voxels cropped away in-plane or on slices not in ``geometry.indices`` are set to ``fill``.
    """
    slices = np.asarray(slices)
    expected = (len(geometry.indices), geometry.size, geometry.size)
    if slices.shape != expected:
        raise ValueError(f"slices have shape {slices.shape}, the geometry expects {expected}")
    stacked_shape = (geometry.shape[geometry.axis],) + geometry.in_plane
    stack = np.full(stacked_shape, fill, dtype=slices.dtype)
    (v0, v1), (i0, i1) = geometry.windows()
    stack[np.asarray(geometry.indices, dtype=np.int64), v0, v1] = slices[:, i0, i1]
    return np.ascontiguousarray(np.moveaxis(stack, 0, geometry.axis))


def foreground_slices(volume_or_mask: np.ndarray, axis: int, min_fraction: float) -> np.ndarray:
    """Indices along ``axis`` of slices whose foreground (mask, or voxels > 0) covers at least
    ``min_fraction`` of the slice (and at least one voxel), as an int64 array."""
    data = np.asarray(volume_or_mask)
    mask = data if data.dtype == bool else data > 0
    axis = _check_axis(axis, mask.ndim)
    other = tuple(a for a in range(mask.ndim) if a != axis)
    fraction = mask.mean(axis=other)
    return np.flatnonzero((fraction > 0) & (fraction >= min_fraction)).astype(np.int64)


def crop_box_to_mask(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Bounding box of ``mask`` (e.g. the ultrasound field of view, ``us > 0``) grown by ``margin``
    voxels and clipped to the volume, as one ``slice`` per axis: ``volume[box]`` crops MR to it."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("cannot crop to an empty mask")
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)

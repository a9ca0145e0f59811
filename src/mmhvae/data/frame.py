"""The model's frame: canonical orientation, voxel spacing, slice axis, field of view (DESIGN §3 "Geometry").

A model is trained in one :class:`TrainingFrame`. :func:`to_frame` brings a subject's volumes into it:

1. **reorient** (exact, no interpolation) with nibabel's orientation tools so that voxel axis ``i``
   runs along ``frame.orientation[i]`` (default R, A, S: axis 2 is axial);
2. **resample** to ``frame.spacing``: intensities linear (or cubic) after an anti-aliasing Gaussian
   when downsampling, integer and boolean arrays (labels, masks) nearest. The frame grid covers the
   whole input box: ``m = ceil(n * s_in / s_out)`` voxels per axis, centred on the input box (voxel
   *centres* are mapped through the affines, so a point keeps its world position);
3. the **foreground** (brain mask, else the voxels that differ from each image's constant background)
   is carried along so that :func:`tiles` can place the in-plane ``size × size`` windows on it rather
   than on the array centre. A foreground wider than the window is covered by overlapping tiles
   (:func:`tiles`, :func:`cut`, :func:`blend`) or refused by :func:`check_fits`.

:func:`from_frame` maps a frame-grid array back onto the input's own grid (same shape; the caller
writes it with the input's affine and header): the inverse resampling, then the inverse reorientation.

Frame arrays keep the orientation of the frame's voxel axes; for an oblique input the frame's axes are
the input's voxel axes nearest to the canonical ones (as ``nibabel.as_closest_canonical``), not a
world-aligned grid, so nothing is interpolated for the rotation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

import nibabel as nib
import numpy as np
from scipy import ndimage

from mmhvae.data.foreground import subject_foreground
from mmhvae.errors import ConfigError, InputDataError

CANONICAL = ("R", "A", "S")
ORDERS = {"nearest": 0, "linear": 1, "cubic": 3}
_AXIS_NAMES = {"R": "LR", "L": "LR", "A": "AP", "P": "AP", "S": "SI", "I": "SI"}


class GeometryError(InputDataError):
    """An input cannot be brought into the frame (bad affine or grid, or a foreground that does not fit)."""


# --------------------------------------------------------------------------------------------------
# The frame
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingFrame:
    """Where a model's slices live.

    ``spacing``: voxel size in mm along the frame's three axes; ``size``: in-plane image side in pixels;
    ``slice_axis``: the frame axis slices are taken along (2 = axial in RAS); ``orientation``: the axis
    codes of the frame's voxel axes. The in-plane field of view is ``size × spacing`` (mm).
    """

    spacing: tuple[float, float, float]
    size: int
    slice_axis: int = 2
    orientation: tuple[str, str, str] = CANONICAL

    def __post_init__(self) -> None:
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ConfigError(f"frame spacing must be 3 positive finite mm values, got {self.spacing}")
        orientation = tuple(str(c).upper() for c in self.orientation)
        if len(orientation) != 3 or sorted(_AXIS_NAMES.get(c, "?") for c in orientation) != ["AP", "LR", "SI"]:
            raise ConfigError(f"frame orientation must name each of L/R, A/P, S/I once, got {self.orientation}")
        if int(self.size) < 1:
            raise ConfigError(f"frame image size must be >= 1 pixel, got {self.size}")
        if int(self.slice_axis) not in (0, 1, 2):
            raise ConfigError(f"frame slice axis must be 0, 1 or 2, got {self.slice_axis}")
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "orientation", orientation)
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "slice_axis", int(self.slice_axis))

    @property
    def in_plane_axes(self) -> tuple[int, int]:
        """The two frame axes of a slice, in volume order (as :func:`~mmhvae.data.slices.volume_to_slices`)."""
        return tuple(a for a in range(3) if a != self.slice_axis)  # type: ignore[return-value]

    @property
    def field_of_view(self) -> tuple[float, float]:
        """In-plane field of view in mm along :attr:`in_plane_axes`: ``size × spacing``."""
        p, q = self.in_plane_axes
        return (self.size * self.spacing[p], self.size * self.spacing[q])

    def to_dict(self) -> dict:
        return {
            "orientation": list(self.orientation), "spacing": list(self.spacing),
            "slice_axis": self.slice_axis, "size": self.size,
            "field_of_view_mm": list(self.field_of_view),  # informative; recomputed on load
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainingFrame":
        return cls(
            spacing=tuple(float(s) for s in data["spacing"]), size=int(data["size"]),
            slice_axis=int(data.get("slice_axis", 2)),
            orientation=tuple(data.get("orientation", CANONICAL)),
        )


def spacing_in(affine: np.ndarray, orientation: Sequence[str] = CANONICAL) -> np.ndarray:
    """Voxel spacing (mm) of an image with ``affine`` along the axes of ``orientation``, float64 ``(3,)``."""
    affine = np.asarray(affine, dtype=np.float64)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(tuple(orientation))
    )
    out = np.empty(3)
    out[transform[:, 0].astype(int)] = zooms  # input axis i becomes frame axis transform[i, 0]
    return out


def default_spacing(
    affines: Sequence[np.ndarray], orientation: Sequence[str] = CANONICAL, decimals: int = 2
) -> tuple[float, float, float]:
    """The cohort's median voxel spacing along the frame axes, rounded to ``decimals`` (a ``data.spacing`` default)."""
    if not len(affines):
        raise GeometryError("cannot choose a default spacing from an empty cohort")
    spacings = np.stack([spacing_in(a, orientation) for a in affines])
    median = np.round(np.median(spacings, axis=0), decimals)
    smallest = 10.0 ** -decimals
    return tuple(float(max(s, smallest)) for s in median)  # type: ignore[return-value]


def frame_of(data_cfg, image_size: int, affine: Optional[np.ndarray] = None) -> TrainingFrame:
    """The :class:`TrainingFrame` of a model's config (``data.spacing``, ``data.orientation``,
    ``data.slice_axis``, ``model.image_size``).

    A config whose ``spacing`` is empty (a checkpoint written before the frame was recorded) keeps
    the input's own spacing, given by ``affine``: volumes are reoriented but not resampled.
    """
    orientation = tuple(str(getattr(data_cfg, "orientation", "RAS") or "RAS"))
    spacing = list(getattr(data_cfg, "spacing", []) or [])
    if not spacing:
        if affine is None:
            raise GeometryError("the model records no data.spacing; give an affine to keep the input's spacing")
        spacing = [float(s) for s in spacing_in(affine, orientation)]
    return TrainingFrame(tuple(spacing), int(image_size), int(data_cfg.slice_axis), orientation)


# --------------------------------------------------------------------------------------------------
# Input grid <-> frame grid
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameMapping:
    """How one input grid maps onto the frame grid (JSON-able with :meth:`to_dict`).

    ``transform``: nibabel orientation transform from input voxel axes to the frame orientation
    (``(3, 2)``: target axis, flip). Frame voxel ``j`` sits at reoriented-input voxel coordinate
    ``zoom * j + offset`` (per axis); ``shape``/``affine``: the frame grid; ``input_shape``/
    ``input_affine``: the input grid.
    """

    input_shape: tuple[int, int, int]
    input_affine: np.ndarray
    transform: np.ndarray
    zoom: tuple[float, float, float]
    offset: tuple[float, float, float]
    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def reoriented_shape(self) -> tuple[int, int, int]:
        out = [0, 0, 0]
        for n, (axis, _) in zip(self.input_shape, self.transform):
            out[int(axis)] = n
        return tuple(out)  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return {
            "input_shape": list(self.input_shape), "input_affine": np.asarray(self.input_affine).tolist(),
            "transform": np.asarray(self.transform).tolist(), "zoom": list(self.zoom),
            "offset": list(self.offset), "shape": list(self.shape), "affine": np.asarray(self.affine).tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FrameMapping":
        return cls(
            input_shape=tuple(int(v) for v in data["input_shape"]),
            input_affine=np.asarray(data["input_affine"], dtype=np.float64),
            transform=np.asarray(data["transform"], dtype=np.float64),
            zoom=tuple(float(v) for v in data["zoom"]), offset=tuple(float(v) for v in data["offset"]),
            shape=tuple(int(v) for v in data["shape"]), affine=np.asarray(data["affine"], dtype=np.float64),
        )


def frame_mapping(shape: Sequence[int], affine: np.ndarray, frame: TrainingFrame) -> FrameMapping:
    """The mapping of an input grid (``shape``, ``affine``) onto ``frame``'s orientation and spacing."""
    shape = tuple(int(n) for n in shape)
    affine = np.asarray(affine, dtype=np.float64)
    if len(shape) != 3 or affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise GeometryError(f"expected a 3D grid with a finite 4x4 affine, got shape {shape}, affine {affine.shape}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise GeometryError("the affine is singular (zero voxel size or collinear axes)")
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(frame.orientation)
    )
    reoriented_affine = affine @ nib.orientations.inv_ornt_aff(transform, shape)
    n = np.empty(3)
    n[transform[:, 0].astype(int)] = shape
    s_in = np.sqrt((reoriented_affine[:3, :3] ** 2).sum(axis=0))
    s_out = np.asarray(frame.spacing)
    # ceil (with a tolerance for float noise): the frame box covers the whole input box.
    m = np.maximum(np.ceil(n * s_in / s_out - 1e-6), 1).astype(int)
    zoom = s_out / s_in
    offset = (n - 1) / 2 - zoom * (m - 1) / 2  # box centres coincide
    step = np.eye(4)
    step[:3, :3] = np.diag(zoom)
    step[:3, 3] = offset
    return FrameMapping(
        input_shape=shape, input_affine=affine, transform=transform,
        zoom=tuple(float(z) for z in zoom), offset=tuple(float(t) for t in offset),
        shape=tuple(int(v) for v in m), affine=reoriented_affine @ step,
    )


def _order_of(array: np.ndarray, order: str) -> int:
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
        return 0  # labels and masks: interpolating them is never right
    if order not in ORDERS:
        raise ConfigError(f"interpolation order must be one of {sorted(ORDERS)}, got {order!r}")
    return ORDERS[order]


def _resample(
    array: np.ndarray, zoom: np.ndarray, offset: np.ndarray, shape: tuple[int, ...], order: int, antialias: bool
) -> np.ndarray:
    """Output voxel ``j`` takes the value at input coordinate ``zoom * j + offset`` (separable, per axis)."""
    if np.allclose(zoom, 1.0, atol=1e-9) and np.allclose(offset, np.round(offset), atol=1e-6):
        # Same spacing, whole-voxel shift (the common 1 mm -> 1 mm case): copy, no interpolation.
        out = np.zeros(shape, dtype=array.dtype)
        shift = np.round(offset).astype(int)
        src = tuple(slice(max(t, 0), min(t + m, n)) for t, m, n in zip(shift, shape, array.shape))
        dst = tuple(slice(s.start - t, s.stop - t) for s, t in zip(src, shift))
        out[dst] = array[src]
        # Voxels beyond the input take the nearest input value, as the interpolating path does.
        return _extend_nearest(out, dst)
    is_bool = array.dtype == bool
    data = array.astype(np.uint8) if is_bool else array
    if order > 0:
        data = data.astype(np.float32, copy=False)
        if antialias and np.any(zoom > 1 + 1e-6):
            sigma = np.maximum((zoom - 1) / 2, 0)  # as skimage.transform.resize(anti_aliasing=True)
            data = ndimage.gaussian_filter(data, sigma, mode="nearest")
    out = ndimage.affine_transform(
        data, np.asarray(zoom, dtype=np.float64), offset=np.asarray(offset, dtype=np.float64),
        output_shape=shape, order=order, mode="nearest", prefilter=order > 1,
    )
    return out.astype(bool) if is_bool else out


def _extend_nearest(out: np.ndarray, filled: tuple[slice, ...]) -> np.ndarray:
    for axis, window in enumerate(filled):
        if window.stop <= window.start:
            continue
        index = [slice(None)] * out.ndim
        first, last = [slice(None)] * out.ndim, [slice(None)] * out.ndim
        first[axis], last[axis] = slice(window.start, window.start + 1), slice(window.stop - 1, window.stop)
        index[axis] = slice(0, window.start)
        out[tuple(index)] = out[tuple(first)]
        index[axis] = slice(window.stop, None)
        out[tuple(index)] = out[tuple(last)]
    return out


def resample_to_frame(
    array: np.ndarray, mapping: FrameMapping, order: str = "linear", antialias: bool = True
) -> np.ndarray:
    """One input-grid array ``(X, Y, Z)`` on the frame grid ``mapping.shape`` (float -> float32, labels nearest)."""
    array = np.asarray(array)
    if array.shape != mapping.input_shape:
        raise GeometryError(f"array shape {array.shape} differs from the mapped input grid {mapping.input_shape}")
    reoriented = nib.orientations.apply_orientation(array, mapping.transform)
    k = _order_of(array, order)
    if k > 0:
        reoriented = reoriented.astype(np.float32, copy=False)
    return np.ascontiguousarray(
        _resample(reoriented, np.asarray(mapping.zoom), np.asarray(mapping.offset), mapping.shape, k, antialias)
    )


@dataclass
class FramedVolume:
    """A subject in the frame: ``arrays[name]`` on the frame grid ``shape`` (orientation, spacing of
    ``frame``), its ``foreground`` (bool, same grid), the ``mapping`` back to the input grid and the
    input's NIfTI ``header`` (not serialized; outputs are written with it)."""

    arrays: dict[str, np.ndarray]
    foreground: np.ndarray
    mapping: FrameMapping
    frame: TrainingFrame
    header: Optional[Any] = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.mapping.shape

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-world affine of the frame grid."""
        return self.mapping.affine


def to_frame(
    arrays: Mapping[str, np.ndarray],
    affine: np.ndarray,
    frame: TrainingFrame,
    *,
    header: Optional[Any] = None,
    order: Union[str, Mapping[str, str]] = "linear",
    foreground: Optional[np.ndarray] = None,
    antialias: bool = True,
) -> FramedVolume:
    """Reorient and resample co-registered ``arrays`` (all ``(X, Y, Z)`` on one grid with ``affine``)
    into ``frame``.

    ``order``: ``"linear"``, ``"cubic"`` (or a per-name dict) for floating arrays; integer and boolean
    arrays are always nearest. ``foreground``: a brain mask on the input grid; without it, the union of
    the floating arrays' non-background voxels (:func:`~mmhvae.data.foreground.subject_foreground`).
    """
    if not arrays:
        raise GeometryError("to_frame needs at least one array")
    shapes = {name: np.shape(a) for name, a in arrays.items()}
    shape = next(iter(shapes.values()))
    if any(s != shape for s in shapes.values()):
        raise GeometryError(f"arrays are not on one grid: shapes {shapes}")
    mapping = frame_mapping(shape, affine, frame)
    framed = {}
    for name, array in arrays.items():
        kind = order.get(name, "linear") if isinstance(order, Mapping) else order
        framed[name] = resample_to_frame(array, mapping, kind, antialias)
    if foreground is None:
        images = {n: np.asarray(a) for n, a in arrays.items() if np.issubdtype(np.asarray(a).dtype, np.floating)}
        foreground = subject_foreground(images) if images else np.ones(shape, dtype=bool)
    foreground = np.asarray(foreground, dtype=bool)
    if foreground.shape != shape:
        raise GeometryError(f"foreground mask shape {foreground.shape} differs from the image shape {shape}")
    return FramedVolume(framed, resample_to_frame(foreground, mapping), mapping, frame, header)


def from_frame(
    array: np.ndarray,
    mapping: Union[FrameMapping, FramedVolume],
    *,
    order: str = "linear",
    covered: Optional[np.ndarray] = None,
    fill: float = 0.0,
    antialias: bool = True,
) -> np.ndarray:
    """Map a frame-grid ``array`` (``mapping.shape``) back onto the input grid (``mapping.input_shape``).

    Inverse resampling then inverse reorientation; write the result with the input's affine and header.
    Input voxels outside the frame box or mapped to a voxel where ``covered`` (bool, frame grid) is False
    are set to ``fill``. Floating arrays come back float32, integer/boolean ones nearest with their dtype.
    """
    if isinstance(mapping, FramedVolume):
        mapping = mapping.mapping
    array = np.asarray(array)
    if array.shape != mapping.shape:
        raise GeometryError(f"array shape {array.shape} differs from the frame grid {mapping.shape}")
    zoom, offset = np.asarray(mapping.zoom), np.asarray(mapping.offset)
    inverse_zoom, inverse_offset = 1 / zoom, -offset / zoom
    target = mapping.reoriented_shape
    k = _order_of(array, order)
    data = array.astype(np.float32, copy=False) if k > 0 else array
    back = _resample(data, inverse_zoom, inverse_offset, target, k, antialias)
    inside = _inside_box(target, inverse_zoom, inverse_offset, mapping.shape)
    if covered is not None:
        covered = np.asarray(covered, dtype=bool)
        if covered.shape != mapping.shape:
            raise GeometryError(f"covered mask shape {covered.shape} differs from the frame grid {mapping.shape}")
        inside &= _resample(covered, inverse_zoom, inverse_offset, target, 0, False)
    back = np.where(inside, back, np.asarray(fill).astype(back.dtype))
    inverse = _inverse_transform(mapping.transform)
    out = nib.orientations.apply_orientation(back, inverse)
    assert out.shape == mapping.input_shape
    return np.ascontiguousarray(out)


def _inverse_transform(transform: np.ndarray) -> np.ndarray:
    """The orientation transform undoing ``transform`` (input axis i -> frame axis transform[i, 0])."""
    inverse = np.empty_like(transform)
    for i, (axis, flip) in enumerate(transform):
        inverse[int(axis)] = (i, flip)
    return inverse


def _inside_box(shape: Sequence[int], zoom: np.ndarray, offset: np.ndarray, source: Sequence[int]) -> np.ndarray:
    """Bool ``shape``: voxels whose centre maps (``zoom * x + offset``) inside the source grid's box."""
    inside = np.ones(tuple(shape), dtype=bool)
    for axis, (n, z, t, m) in enumerate(zip(shape, zoom, offset, source)):
        j = z * np.arange(n) + t
        ok = (j >= -0.5 - 1e-6) & (j <= m - 0.5 + 1e-6)
        view = [1, 1, 1]
        view[axis] = n
        inside &= ok.reshape(view)
    return inside


# --------------------------------------------------------------------------------------------------
# Field of view on the foreground: windows, tiles, blending
# --------------------------------------------------------------------------------------------------


def _in_plane_box(foreground: np.ndarray, frame: TrainingFrame) -> Optional[tuple[tuple[int, int], tuple[int, int]]]:
    """``((lo, hi), (lo, hi))`` of the foreground along the in-plane axes (all slices), or None if empty."""
    foreground = np.asarray(foreground, dtype=bool)
    if foreground.ndim != 3:
        raise GeometryError(f"expected a 3D foreground mask, got shape {foreground.shape}")
    if not foreground.any():
        return None
    box = []
    for axis in frame.in_plane_axes:
        hits = np.flatnonzero(foreground.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return box[0], box[1]


def default_overlap(size: int) -> int:
    """Minimum overlap (pixels) between neighbouring tiles: a quarter of the window."""
    return max(size // 4, 1) if size > 1 else 0


def _starts(lo: int, hi: int, size: int, overlap: int) -> list[int]:
    extent = hi - lo
    if extent <= size:
        return [lo + (extent - size) // 2]  # centred on the foreground (may start before 0: padding)
    count = math.ceil((extent - size) / max(size - overlap, 1)) + 1
    return [lo + round(i * (extent - size) / (count - 1)) for i in range(count)]


def tiles(foreground: np.ndarray, frame: TrainingFrame, overlap: Optional[int] = None) -> list[tuple[int, int]]:
    """Starts ``(p, q)`` (along ``frame.in_plane_axes``) of the ``size × size`` windows covering the foreground.

    One window centred on the foreground's in-plane bounding box when it fits; otherwise a grid of
    windows overlapping by at least ``overlap`` pixels (default :func:`default_overlap`) whose union
    covers the box. The box is taken over all slices, so every slice uses the same windows. An empty
    foreground gives one window centred on the array. Windows may reach outside the array (:func:`cut`
    pads them).
    """
    size = frame.size
    overlap = default_overlap(size) if overlap is None else int(overlap)
    if not 0 <= overlap < max(size, 1):
        raise ConfigError(f"tile overlap must be in 0..{size - 1} pixels, got {overlap}")
    box = _in_plane_box(foreground, frame)
    if box is None:
        box = tuple((0, np.shape(foreground)[a]) for a in frame.in_plane_axes)
    ps, qs = (_starts(lo, hi, size, overlap) for lo, hi in box)
    return [(p, q) for p in ps for q in qs]


def fits(foreground: np.ndarray, frame: TrainingFrame) -> bool:
    """Whether the foreground's in-plane bounding box fits in one ``size × size`` window."""
    box = _in_plane_box(foreground, frame)
    return box is None or all(hi - lo <= frame.size for lo, hi in box)


def check_fits(foreground: np.ndarray, frame: TrainingFrame, subject: str) -> None:
    """Raise :class:`GeometryError` naming ``subject`` and an image size / spacing that would fit,
    when the foreground does not fit the field of view (the refuse alternative to :func:`tiles`)."""
    if fits(foreground, frame):
        return
    box = _in_plane_box(foreground, frame)
    assert box is not None
    extent = [hi - lo for lo, hi in box]
    p, q = frame.in_plane_axes
    mm = (extent[0] * frame.spacing[p], extent[1] * frame.spacing[q])
    factor = max(extent) / frame.size
    spacing = [math.ceil(frame.spacing[a] * factor * 100) / 100 for a in (p, q)]
    raise GeometryError(
        f"{subject}: the foreground is {mm[0]:.0f} x {mm[1]:.0f} mm in-plane ({extent[0]} x {extent[1]} px "
        f"at {frame.spacing[p]:g} x {frame.spacing[q]:g} mm), larger than the model's field of view "
        f"{frame.field_of_view[0]:.0f} x {frame.field_of_view[1]:.0f} mm ({frame.size} px); it would fit "
        f"at image size {max(extent)} px, or at an in-plane spacing of {spacing[0]:g} x {spacing[1]:g} mm; "
        "or let it be tiled"
    )


def _window(start: int, size: int, n: int) -> tuple[slice, slice]:
    """(array slice, window slice) of the overlap of ``[start, start + size)`` with ``[0, n)``."""
    lo, hi = max(start, 0), min(start + size, n)
    hi = max(hi, lo)
    return slice(lo, hi), slice(lo - start, hi - start)


def cut(
    volume: np.ndarray, start: tuple[int, int], frame: TrainingFrame,
    indices: Optional[Sequence[int]] = None, fill: float = 0.0,
) -> np.ndarray:
    """The window at ``start`` (from :func:`tiles`) of a frame volume: slices ``(N, size, size)`` along
    ``frame.slice_axis`` (``indices``, default all), padded with ``fill`` outside the array."""
    volume = np.asarray(volume)
    stack = np.moveaxis(volume, frame.slice_axis, 0)
    idx = np.arange(stack.shape[0]) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    (v0, w0), (v1, w1) = (_window(s, frame.size, n) for s, n in zip(start, stack.shape[1:]))
    dtype = np.float32 if np.issubdtype(volume.dtype, np.floating) else volume.dtype
    out = np.full((idx.size, frame.size, frame.size), fill, dtype=dtype)
    out[:, w0, w1] = stack[idx][:, v0, v1]
    return out


def tile_weight(size: int, overlap: int) -> np.ndarray:
    """Blending weight ``(size, size)`` of one tile: 1 inside, a cosine ramp over ``overlap`` pixels at
    each edge, positive everywhere (so a pixel seen by one tile keeps that tile's value exactly)."""
    d = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float64)  # distance to the edge
    ramp = max(int(overlap), 1)
    w = np.where(d < ramp, 0.5 - 0.5 * np.cos(np.pi * (d + 1) / (ramp + 1)), 1.0)
    return np.outer(w, w)


def blend(
    patches: Sequence[np.ndarray], starts: Sequence[tuple[int, int]], shape: Sequence[int], frame: TrainingFrame,
    indices: Optional[Sequence[int]] = None, overlap: Optional[int] = None, fill: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Put tile outputs back into a frame volume of ``shape``: ``(volume float32, covered bool)``.

    ``patches[t]``: ``(N, size, size)`` for the window ``starts[t]`` on the slices ``indices`` (default
    all) along ``frame.slice_axis``. Overlaps are averaged with :func:`tile_weight`; voxels no tile
    covers are ``fill`` and False in ``covered`` (pass it to :func:`from_frame`).
    """
    if len(patches) != len(starts):
        raise GeometryError(f"{len(patches)} tile outputs for {len(starts)} windows")
    shape = tuple(int(n) for n in shape)
    stacked = (shape[frame.slice_axis],) + tuple(shape[a] for a in frame.in_plane_axes)
    idx = np.arange(stacked[0]) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    overlap = default_overlap(frame.size) if overlap is None else int(overlap)
    weight = tile_weight(frame.size, overlap)
    total = np.zeros((idx.size,) + stacked[1:], dtype=np.float64)
    norm = np.zeros(stacked[1:], dtype=np.float64)
    for patch, start in zip(patches, starts):
        patch = np.asarray(patch, dtype=np.float64)
        if patch.shape != (idx.size, frame.size, frame.size):
            raise GeometryError(f"tile output has shape {patch.shape}, expected {(idx.size, frame.size, frame.size)}")
        (v0, w0), (v1, w1) = (_window(s, frame.size, n) for s, n in zip(start, stacked[1:]))
        total[:, v0, v1] += patch[:, w0, w1] * weight[w0, w1]
        norm[v0, v1] += weight[w0, w1]
    seen = norm > 0
    volume = np.full(stacked, fill, dtype=np.float32)
    volume[idx] = np.where(seen, total / np.where(seen, norm, 1.0), fill)
    covered = np.zeros(stacked, dtype=bool)
    covered[idx] = seen
    return (np.ascontiguousarray(np.moveaxis(volume, 0, frame.slice_axis)),
            np.ascontiguousarray(np.moveaxis(covered, 0, frame.slice_axis)))

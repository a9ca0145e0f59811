"""A subject's volumes as model-sized slices in the model's frame, and back (DESIGN §3 "Geometry").

:func:`frame_slices` is the one path from volumes on their acquired grid to the ``(T·N, S, S)``
slice stacks a model reads, used by training, evaluation and synthesis alike:

1. :func:`~mmhvae.data.frame.to_frame`: reorient to the frame's orientation, resample to its spacing;
2. the in-plane windows (:func:`~mmhvae.data.frame.tiles`) are placed on the foreground; a foreground
   wider than the field of view is covered by T overlapping tiles (``fit="tile"``) or refused with a
   message naming the subject and a size that would fit (``fit="refuse"``); nothing is cut silently;
3. the slices along the frame's slice axis that hold foreground are cut from every tile (tile-major:
   rows ``t·N … t·N + N - 1`` are tile ``t``).

:meth:`FrameSlices.to_input_grid` blends model outputs of those slices back into the frame volume and
maps it onto the acquired grid (same shape as the input; write it with the input's affine and header).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from mmhvae.data.frame import (
    FrameMapping, TrainingFrame, blend, check_fits, cut, from_frame, tiles, to_frame,
)
from mmhvae.data.slices import foreground_slices


@dataclass
class FrameSlices:
    """Slices of one subject in ``frame``.

    ``stacks[name]``: ``(T·N, S, S)`` for each array given (float32; labels keep their dtype);
    ``foreground``: bool ``(T·N, S, S)``; ``starts``: the T tile corners; ``indices``: the N slice
    positions along the frame's slice axis; ``mapping``: frame grid <-> acquired grid.
    """

    frame: TrainingFrame
    mapping: FrameMapping
    starts: list[tuple[int, int]]
    indices: np.ndarray
    stacks: dict[str, np.ndarray]
    foreground: np.ndarray

    @property
    def num_tiles(self) -> int:
        return len(self.starts)

    def tiles_of(self, slices: np.ndarray) -> list[np.ndarray]:
        """Split a ``(T·N, ...)`` stack into its T tiles of ``(N, ...)``."""
        n = len(self.indices)
        return [slices[t * n : (t + 1) * n] for t in range(self.num_tiles)]

    def assemble(self, slices: np.ndarray, fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Model outputs ``(T·N, S, S)`` -> ``(frame volume float32, covered bool)``, tiles blended."""
        return blend(self.tiles_of(np.asarray(slices)), self.starts, self.mapping.shape, self.frame,
                     self.indices, fill=fill)

    def plane_stack(self, slices: np.ndarray) -> np.ndarray:
        """``(T·N, S, S)`` -> ``(N, A, B)``: the N whole frame slices (tiles blended), for scoring."""
        volume, _ = self.assemble(slices)
        return np.ascontiguousarray(np.moveaxis(volume, self.frame.slice_axis, 0)[self.indices])

    def to_input_grid(self, slices: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """``(T·N, S, S)`` -> float32 volume on the acquired grid (voxels no slice covers are ``fill``)."""
        volume, covered = self.assemble(slices, fill)
        return from_frame(volume, self.mapping, covered=covered, fill=fill).astype(np.float32, copy=False)

    def meta(self) -> dict:
        """JSON-able description (the cache's ``meta.json``)."""
        return {
            "frame": self.frame.to_dict(), "mapping": self.mapping.to_dict(),
            "tiles": [list(s) for s in self.starts], "indices": [int(i) for i in self.indices],
        }


def frame_slices(
    arrays: Mapping[str, np.ndarray],
    affine: np.ndarray,
    frame: TrainingFrame,
    *,
    subject: str,
    foreground: Optional[np.ndarray] = None,
    restrict_to: Optional[np.ndarray] = None,
    fit: str = "tile",
    min_fraction: float = 0.0,
    foreground_only: bool = True,
) -> FrameSlices:
    """Cut co-registered ``arrays`` (``(X, Y, Z)`` on one grid with ``affine``) into frame slices.

    ``foreground``: bool on the acquired grid (brain mask), else the union of the images'
    non-background voxels. ``restrict_to``: bool on the acquired grid that the foreground is
    intersected with (e.g. the ultrasound field of view, ``data.crop_to_modality``). Slices along the
    frame's slice axis are kept when their foreground covers ``min_fraction`` of the plane
    (``foreground_only``), else all of them.
    """
    named = dict(arrays)
    if restrict_to is not None:
        named["__restrict__"] = np.asarray(restrict_to, dtype=bool)
    framed = to_frame(named, affine, frame, foreground=foreground)
    mask = framed.foreground
    if restrict_to is not None:
        region = framed.arrays.pop("__restrict__")
        if region.any():
            mask = mask & region
    if fit == "refuse":
        check_fits(mask, frame, subject)
    elif fit != "tile":
        raise ValueError(f"fit must be tile or refuse, got {fit!r}")
    if foreground_only:
        indices = foreground_slices(mask, frame.slice_axis, min_fraction)
    else:
        indices = np.arange(mask.shape[frame.slice_axis])
    starts = tiles(mask, frame)
    stacks = {
        name: np.concatenate([cut(array, s, frame, indices) for s in starts]) for name, array in framed.arrays.items()
    }
    fg = np.concatenate([cut(mask, s, frame, indices) for s in starts]).astype(bool)
    return FrameSlices(frame, framed.mapping, [tuple(int(v) for v in s) for s in starts], indices, stacks, fg)

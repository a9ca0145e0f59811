"""Random 3D training patches (seed §3): uniform or centred on tumour, flipped, with their availability r."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from mmhvae.train.uhved.cases import Case


@dataclass
class PatchBatch:
    """images ``(B, M, P, P, P)``; available ``(B, M)`` bool; seg ``(B, P, P, P)`` int64 (0 where
    ``has_seg`` is False, never read); has_seg ``(B,)`` bool."""

    images: Tensor
    available: Tensor
    seg: Tensor
    has_seg: Tensor

    def to(self, device: torch.device) -> "PatchBatch":
        return PatchBatch(*(t.to(device) for t in (self.images, self.available, self.seg, self.has_seg)))


class PatchSampler:
    """Random patches; a share ``tumour_fraction`` of the patches of labelled cases is centred on a
    random tumour voxel, the others lie uniformly anywhere in the volume (as NiftyNet's uniform
    sampler of the official code), so that skull and background are seen as often as at inference."""

    def __init__(
        self,
        cases: Sequence[Case],
        patch_size: Sequence[int],
        tumour_fraction: float = 0.5,
        flip: bool = True,
        seed: int = 0,
        labelled_only: bool = False,
    ):
        self.patch = tuple(int(p) for p in patch_size)
        self.tumour_fraction = tumour_fraction
        self.flip = flip
        self.rng = np.random.default_rng(seed)
        self.cases = [self._pad(c) for c in cases if c.seg is not None or not labelled_only]
        if not self.cases:
            need = " with a segmentation (U-HeMIS needs labels)" if labelled_only else ""
            raise ValueError(f"no training case{need}")
        self.tumour = [None if c.seg is None else np.argwhere(c.seg > 0) for c in self.cases]

    def state_dict(self) -> dict[str, Any]:
        """The sampler's random state (a plain dict: saved in the training state, read weights-only)."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    def _pad(self, case: Case) -> Case:
        """Zero-pad volumes smaller than the patch (background; availability is unchanged)."""
        shape = case.images.shape[1:]
        extra = [max(0, p - s) for p, s in zip(self.patch, shape)]
        if not any(extra):
            return case
        pads = [(e // 2, e - e // 2) for e in extra]
        return Case(
            name=case.name,
            images=np.pad(case.images, [(0, 0), *pads]),
            available=case.available,
            seg=None if case.seg is None else np.pad(case.seg, pads),
            brain=None if case.brain is None else np.pad(case.brain, pads),
        )

    def _corner(self, i: int) -> tuple[int, ...]:
        case = self.cases[i]
        shape = case.images.shape[1:]
        tumour = self.tumour[i]
        if tumour is not None and len(tumour) and self.rng.random() < self.tumour_fraction:
            centre = tumour[self.rng.integers(len(tumour))]
            return tuple(int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, self.patch, shape))
        return tuple(int(self.rng.integers(s - p + 1)) for p, s in zip(self.patch, shape))

    def sample(self, batch_size: int) -> PatchBatch:
        images, available, segs, has_seg = [], [], [], []
        for _ in range(batch_size):
            i = int(self.rng.integers(len(self.cases)))
            case = self.cases[i]
            c = self._corner(i)
            window = tuple(slice(a, a + p) for a, p in zip(c, self.patch))
            img = case.images[(slice(None), *window)]
            seg = case.seg[window] if case.seg is not None else np.zeros(self.patch, dtype=np.int64)
            if self.flip:
                for axis in range(3):
                    if self.rng.random() < 0.5:
                        img, seg = np.flip(img, axis + 1), np.flip(seg, axis)
            images.append(np.ascontiguousarray(img))
            segs.append(np.ascontiguousarray(seg))
            available.append(case.available)
            has_seg.append(case.seg is not None)
        return PatchBatch(
            images=torch.from_numpy(np.stack(images)).float(),
            available=torch.from_numpy(np.stack(available)).bool(),
            seg=torch.from_numpy(np.stack(segs)).long(),
            has_seg=torch.tensor(has_seg, dtype=torch.bool),
        )

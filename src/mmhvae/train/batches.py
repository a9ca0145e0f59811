"""Step-indexed batches: the batch of step t is a pure function of (seed, t, rank).

Because no iterator state exists, a resumed run sees exactly the batches the uninterrupted run would
have seen, and under DistributedDataParallel each rank takes its own disjoint share of every global
batch (this is the distributed sampler: rank r takes global positions r, r + K, r + 2K, ...).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset


class StepBatches:
    """Global batches drawn from epoch-wise permutations (or pattern-balanced draws) of a dataset."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        weights: Optional[Sequence[float]] = None,
    ):
        if len(dataset) == 0:
            raise ValueError("the training set is empty: no slice of any training subject was selected")
        if batch_size % world_size != 0:
            raise ValueError(f"train.batch_size={batch_size} must be divisible by the {world_size} processes")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        n = len(self.dataset)
        if self.weights is not None:  # balanced availability patterns: weighted draws with replacement
            return torch.multinomial(self.weights, n, replacement=True, generator=g)
        return torch.randperm(n, generator=g)

    def indices(self, step: int) -> list[int]:
        """Dataset indices of this rank's share of the global batch of ``step``."""
        n = len(self.dataset)
        start = step * self.batch_size
        out = []
        for pos in range(start + self.rank, start + self.batch_size, self.world_size):
            epoch, offset = divmod(pos, n)
            out.append(int(self._epoch_order(epoch)[offset]))
        return out

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        return collate([self.dataset[i] for i in self.indices(step)])


def collate(items: list[dict]) -> dict:
    """Stack dataset items: tensors are stacked, other values gathered in lists."""
    out = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], bool):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


class ArraySliceDataset(Dataset):
    """Slices already in memory: ``images (N, M, H, W)`` (the targets), ``available (N, M)`` bool and
    optionally ``inputs (N, M, H, W)`` (what the encoders see; default: the targets themselves).

    Items follow the contract of :class:`mmhvae.data.dataset.SliceDataset`; a missing modality's slot
    is zeroed here so that nothing downstream can depend on what it held.
    """

    def __init__(
        self, images: torch.Tensor, available: torch.Tensor, seg: Optional[torch.Tensor] = None,
        inputs: Optional[torch.Tensor] = None,
    ):
        if images.dim() != 4 or available.shape != images.shape[:2]:
            raise ValueError(f"expected images (N, M, H, W) and available (N, M), got {tuple(images.shape)}, {tuple(available.shape)}")
        if inputs is not None and inputs.shape != images.shape:
            raise ValueError(f"inputs {tuple(inputs.shape)} and images {tuple(images.shape)} differ in shape")
        self.images = images.float() * available.bool()[:, :, None, None]
        self.inputs = self.images if inputs is None else inputs.float() * available.bool()[:, :, None, None]
        self.available = available.bool()
        self.seg = seg

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict:
        H, W = self.images.shape[2:]
        seg = self.seg[i] if self.seg is not None else torch.zeros(H, W, dtype=torch.long)
        return {
            "inputs": self.inputs[i],
            "targets": self.images[i],
            "available": self.available[i],
            "seg": seg,
            "has_seg": self.seg is not None,
            "subject": f"array{i}",
            "slice": i,
        }

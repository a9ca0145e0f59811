"""Per-modality image discriminators d_psi_j (paper eq. 15-16): PatchGAN-style convolutional critics."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmhvae.nn.cells import group_norm


class PatchDiscriminator(nn.Module):
    """``(B, 1, H, W)`` image -> ``(B, 1, h, w)`` patch scores (no sigmoid: the loss family decides).

    Strided 4x4 convolutions with LeakyReLU (Isola et al. 2017); GroupNorm instead of BatchNorm so that
    a score does not depend on the other images of the batch (real images may come from the memory).
    """

    def __init__(self, channels: int = 32, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(1, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        c = channels
        for _ in range(layers - 1):
            mods += [nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), group_norm(2 * c), nn.LeakyReLU(0.2)]
            c *= 2
        mods += [nn.Conv2d(c, 1, 3, padding=1)]
        self.net = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ModalityDiscriminators(nn.Module):
    """One :class:`PatchDiscriminator` per modality, indexed like the image tensor's M axis."""

    def __init__(self, num_modalities: int, channels: int = 32, layers: int = 3):
        super().__init__()
        self.critics = nn.ModuleList(PatchDiscriminator(channels, layers) for _ in range(num_modalities))

    def forward(self, j: int, images: Tensor) -> Tensor:
        """Scores of modality ``j`` for ``(B, H, W)`` images."""
        return self.critics[j](images[:, None])

    def __len__(self) -> int:
        return len(self.critics)

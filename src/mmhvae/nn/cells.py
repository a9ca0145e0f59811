"""Network cells of the MMHVAE generator (NVAE style): encoder and decoder cells, SE, image heads.

Normalization is GroupNorm rather than NVAE's BatchNorm: the encoders of absent modalities are not run,
so per-modality batches vary in size (down to one sample), and GroupNorm behaves the same in training,
evaluation and under DistributedDataParallel.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def group_norm(channels: int, max_groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with the largest number of groups <= ``max_groups`` that divides ``channels``."""
    groups = max(g for g in range(1, max_groups + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al. 2018): global pooling -> bottleneck MLP -> sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.SiLU(),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class EncoderCell(nn.Module):
    """Residual bottom-up cell: (norm -> SiLU -> conv3x3) x 2 -> SE, plus identity. ``(B, C, H, W)``."""

    def __init__(self, channels: int, se_reduction: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            group_norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            group_norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            SqueezeExcite(channels, se_reduction),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class DecoderCell(nn.Module):
    """Top-down cell in the MobileNetV2 / NVAE style: expand x E (1x1), depthwise k x k, SE, project."""

    def __init__(self, channels: int, expand_ratio: int = 6, kernel: int = 5, se_reduction: int = 8):
        super().__init__()
        hidden = channels * expand_ratio
        self.body = nn.Sequential(
            group_norm(channels),
            nn.Conv2d(channels, hidden, 1),
            group_norm(hidden),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden),
            group_norm(hidden),
            nn.SiLU(),
            nn.Conv2d(hidden, channels, 1),
            group_norm(channels),
            SqueezeExcite(channels, se_reduction),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResBlock(nn.Module):
    """Plain ResNet block of the image heads: conv3x3 -> norm -> SiLU -> conv3x3, plus identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            group_norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def downsample(in_channels: int, out_channels: int) -> nn.Module:
    """Halve the resolution: norm -> SiLU -> strided conv3x3."""
    return nn.Sequential(
        group_norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
    )


def upsample(in_channels: int, out_channels: int) -> nn.Module:
    """Double the resolution: nearest-neighbour upsampling, then a 3x3 conv (no checkerboard)."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_channels, out_channels, 3, padding=1)
    )


def image_head(in_channels: int, channels: int, blocks: int, output_norm: bool = False) -> nn.Module:
    """mu_theta_j(z_1): ResNet blocks on the finest latent, then one output channel (paper §4.1).

    ``output_norm``: a GroupNorm before the output convolution (``model.head_output_norm``; off by
    default, see :class:`mmhvae.config.ModelConfig`).
    """
    layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1)]
    layers += [ResBlock(channels) for _ in range(blocks)]
    layers += [group_norm(channels)] if output_norm else []
    layers += [nn.SiLU(), nn.Conv2d(channels, 1, 3, padding=1)]
    return nn.Sequential(*layers)

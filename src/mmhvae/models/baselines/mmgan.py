"""MM-GAN generator (Sharma & Hamarneh, IEEE TMI 2020): a pix2pix U-Net on zero-imputed inputs.

All M modalities are stacked as channels, the unobserved ones replaced by zeros (selected from the
observed mask, never by a magic value), and one U-Net maps this ``(B, M, H, W)`` tensor to all M
outputs at once. The layer recipe follows the authors' code (``GeneratorUNet``): 4x4 stride-2
convolutions with InstanceNorm and LeakyReLU(0.2) down, transposed 4x4 convolutions with InstanceNorm
and ReLU up, skip connections by concatenation, no normalization on the first and innermost layers,
dropout 0.2 on the stages from the fourth on, and a final nearest-neighbour upsampling + 4x4 conv.

Differences from the original, each for a stated reason:
* the number of stages and their widths come from ``model.mmgan.channels`` (original: 8 stages,
  64-128-256-512-512-512-512-512 for 256x256), so any image size the config allows works; the
  ``mmgan`` method preset sets the original widths at full size (see :mod:`mmhvae.methods`);
* the output layer is linear (the authors' BraTS run used a ReLU): harmonized intensities are not
  bounded, and a ReLU output stops the reconstruction gradient wherever it is negative;
* the adversarial part (PatchGAN, LSGAN) is the trainer's shared per-modality discriminator.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmhvae.config import ModelConfig
from mmhvae.models.protocol import ImputingGenerator

DROPOUT = 0.2  # the authors' value (pix2pix used 0.5)
FIRST_DROPOUT_STAGE = 3  # original: dropout on down4..down8 and up1..up4, i.e. the stages from the 4th on


class UNetDown(nn.Module):
    """``(B, C_in, H, W)`` -> ``(B, C_out, H/2, W/2)``: conv 4x4/2 -> [InstanceNorm] -> LeakyReLU -> [dropout]."""

    def __init__(self, in_channels: int, out_channels: int, normalize: bool, dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 4, 2, 1, bias=False)]
        if normalize:
            layers.append(nn.InstanceNorm2d(out_channels))
        layers.append(nn.LeakyReLU(0.2))
        if dropout:
            layers.append(nn.Dropout(dropout))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class UNetUp(nn.Module):
    """``(B, C_in, h, w)`` and a skip ``(B, C_s, 2h, 2w)`` -> ``(B, C_out + C_s, 2h, 2w)``."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=False),
            nn.InstanceNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        if dropout:
            layers.append(nn.Dropout(dropout))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return torch.cat([self.model(x), skip], dim=1)


class MMGANGenerator(ImputingGenerator):
    """U-Net over the M zero-imputed modalities; ``len(cfg.mmgan.channels)`` stride-2 stages."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        M, widths = cfg.num_modalities, list(cfg.mmgan.channels)
        n = len(widths)
        self.downs = nn.ModuleList()
        for s, w in enumerate(widths):
            # No norm on the first stage (pix2pix) nor on the innermost one, whose map may be 1x1.
            normalize = 0 < s < n - 1
            drop = DROPOUT if s >= FIRST_DROPOUT_STAGE else 0.0
            self.downs.append(UNetDown(M if s == 0 else widths[s - 1], w, normalize, drop))
        self.ups = nn.ModuleList()
        for s in reversed(range(n - 1)):  # up to stage s, concatenated with the skip of down s
            in_ch = widths[-1] if s == n - 2 else 2 * widths[s + 1]
            drop = DROPOUT if s >= FIRST_DROPOUT_STAGE else 0.0
            self.ups.append(UNetUp(in_ch, widths[s], drop))
        final_in = 2 * widths[0] if n > 1 else widths[0]
        self.final = nn.Sequential(
            nn.Upsample(scale_factor=2),
            nn.ZeroPad2d((1, 0, 1, 0)),  # 4x4 conv with padding 1 on an even map needs one extra row/col
            nn.Conv2d(final_in, M, 4, padding=1),
        )
        self.apply(_init_normal)


    def translate(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """U-Net on the zero-imputed ``(B, M, H, W)``: every modality, and the innermost features."""
        h = x
        skips = []
        for down in self.downs:
            h = down(h)
            skips.append(h)
        bottleneck = h
        for up, skip in zip(self.ups, reversed(skips[:-1])):
            h = up(h, skip)
        return self.final(h), bottleneck



def _init_normal(module: nn.Module) -> None:
    # N(0, 0.02) for convolutions, as the authors' ``weights_init_normal``.
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)

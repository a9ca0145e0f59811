"""ResViT-style unified generator (Dalmaz, Yurt & Cukur, IEEE TMI 2022) on zero-imputed inputs.

Read top to bottom, as in the authors' ``ResViT`` module:

* convolutional encoder: reflection-padded 7x7 conv, then stride-2 3x3 convs
  (``model.resvit.channels``, original 64-128-256 for two downsamplings), BatchNorm + ReLU;
* information bottleneck: ``model.resvit.art_blocks`` aggregated residual transformer (ART) blocks at the
  coarsest width C. Every block ends with a residual CNN block; the blocks listed in
  ``model.resvit.transformer_blocks`` (original: the 1st and 6th of 9) first run a transformer branch:
  two stride-2 convs (C -> 2C -> 4C), a 1x1 patch embedding to ``transformer_dim`` tokens plus a
  learned positional embedding, the transformer encoder (pre-norm ViT blocks, *one* encoder whose
  weights these blocks share), two transposed convs back to C, concatenation with the block input,
  and channel compression (a residual conv block 2C -> C);
* decoder: stride-2 transposed 3x3 convs back to full resolution, then a 7x7 conv to M outputs.

Unification as the authors describe it: all modalities are concatenated as channels, the missing
ones zero-imputed (from the observed mask), and one model is trained over randomly drawn
source/target configurations (the ``resvit`` method preset uses a uniform subset policy).

Differences from the original, each for a stated reason:
* no ImageNet-pretrained ViT-B/16 weights and no pre-training of the CNN-only model: nothing is
  downloaded, and the comparison trains every method from scratch with the same budget;
* the output layer is linear instead of tanh: harmonized intensities are not confined to [-1, 1];
* attention is written with explicit matrix products so that FLOP counting sees it (PyTorch's fused
  attention kernels are not counted by ``FlopCounterMode`` on CPU).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from mmhvae.config import ConfigError, ModelConfig
from mmhvae.models.protocol import ImputingGenerator

TRANSFORMER_DOWNSAMPLING = 2  # stride-2 convs before tokenization in an ART block (original: 2)
DROPOUT = 0.1  # ViT-B/16 dropout rate used by the authors


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1, transposed: bool = False) -> nn.Sequential:
    if transposed:
        conv = nn.ConvTranspose2d(in_ch, out_ch, kernel, stride, padding=1, output_padding=1, bias=False)
    else:
        conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class ResnetBlock(nn.Module):
    """Residual CNN of an ART block: (reflect-pad, conv3x3, BN, ReLU, reflect-pad, conv3x3, BN) + x."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ChannelCompression(nn.Module):
    """``(B, C_in, h, w)`` -> ``(B, C_out, h, w)``: residual conv block with a 1x1 projection skip."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.skip = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.block(x) + self.skip(x))


class Attention(nn.Module):
    """Multi-head self-attention on ``(B, N, D)`` tokens."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(DROPOUT)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D // self.heads), dim=-1)
        context = (weights @ v).transpose(1, 2).reshape(B, N, D)
        return self.drop(self.out(context))


class TransformerBlock(nn.Module):
    """Pre-norm ViT block: x + MSA(LN(x)), then x + MLP(LN(x)) with a 4x GELU MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(DROPOUT), nn.Linear(4 * dim, dim), nn.Dropout(DROPOUT)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerEncoder(nn.Module):
    """``(B, N, D)`` -> ``(B, N, D)``: ``layers`` ViT blocks and a final LayerNorm."""

    def __init__(self, dim: int, layers: int, heads: int):
        super().__init__()
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.blocks(x))


class ARTBlock(nn.Module):
    """Aggregated residual transformer block on ``(B, C, h, w)`` bottleneck features.

    With ``transformer`` (shared between blocks): downsample x4, embed as ``(h/4 * w/4)`` tokens,
    encode, upsample back, concatenate with the input and compress to C; then the residual CNN.
    """

    def __init__(self, channels: int, grid: int, dim: int, transformer: Optional[TransformerEncoder]):
        super().__init__()
        # A plain attribute would register the shared encoder once per block in state_dict();
        # keeping it out of this module's children leaves one copy, owned by the generator.
        self._transformer = (transformer,) if transformer is not None else None
        if transformer is not None:
            c = channels
            self.downsample = nn.Sequential(
                _conv_bn_relu(c, 2 * c, 3, stride=2), _conv_bn_relu(2 * c, 4 * c, 3, stride=2)
            )
            self.embed = nn.Conv2d(4 * c, dim, 1)
            self.position = nn.Parameter(torch.zeros(1, grid * grid, dim))
            self.embed_drop = nn.Dropout(DROPOUT)
            self.upsample = nn.Sequential(
                _conv_bn_relu(dim, 2 * c, 3, stride=2, transposed=True),
                _conv_bn_relu(2 * c, c, 3, stride=2, transposed=True),
            )
            self.compress = ChannelCompression(2 * c, c)
        self.residual_cnn = ResnetBlock(channels)

    def forward(self, x: Tensor) -> Tensor:
        if self._transformer is not None:
            tokens = self.embed(self.downsample(x))  # (B, D, h/4, w/4)
            B, D, gh, gw = tokens.shape
            tokens = self.embed_drop(tokens.flatten(2).transpose(1, 2) + self.position)
            encoded = self._transformer[0](tokens).transpose(1, 2).reshape(B, D, gh, gw)
            x = self.compress(torch.cat([self.upsample(encoded), x], dim=1))
        return self.residual_cnn(x)


class ResViTGenerator(ImputingGenerator):
    """Unified ResViT-style generator: ``(B, M, H, W)`` zero-imputed inputs -> ``(B, M, H, W)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        M, widths, rc = cfg.num_modalities, list(cfg.resvit.channels), cfg.resvit
        down = len(widths) - 1
        bottleneck_size = cfg.image_size // 2**down
        grid = bottleneck_size // 2**TRANSFORMER_DOWNSAMPLING
        if rc.transformer_blocks and (grid < 1 or bottleneck_size % 2**TRANSFORMER_DOWNSAMPLING):
            raise ConfigError(
                f"resvit: the bottleneck ({bottleneck_size}x{bottleneck_size} after {down} downsamplings) must be "
                f"divisible by {2**TRANSFORMER_DOWNSAMPLING} for the transformer branch; use fewer model.resvit.channels "
                "stages or a larger model.image_size"
            )
        self.encoder = nn.Sequential(
            nn.Sequential(
                nn.ReflectionPad2d(3), nn.Conv2d(M, widths[0], 7, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(True)
            ),
            *[_conv_bn_relu(widths[s], widths[s + 1], 3, stride=2) for s in range(down)],
        )
        self.transformer = TransformerEncoder(rc.transformer_dim, rc.transformer_layers, rc.transformer_heads)
        with_transformer = set(rc.transformer_blocks)
        self.art = nn.Sequential(
            *[
                ARTBlock(widths[-1], grid, rc.transformer_dim, self.transformer if b in with_transformer else None)
                for b in range(rc.art_blocks)
            ]
        )
        self.decoder = nn.Sequential(
            *[_conv_bn_relu(widths[s + 1], widths[s], 3, stride=2, transposed=True) for s in reversed(range(down))],
            nn.ReflectionPad2d(3),
            nn.Conv2d(widths[0], M, 7),
        )
        if not with_transformer:
            # No ART block uses it: drop it so that parameter counts stay honest.
            self.transformer = None


    def translate(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder, ART bottleneck, decoder on the zero-imputed ``(B, M, H, W)``."""
        features = self.art(self.encoder(x))
        return self.decoder(features), features


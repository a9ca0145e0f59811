"""The U-HVED / U-HeMIS network (Dorent et al., MICCAI 2019; DESIGN §4): encoders, fusion, decoders."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmhvae.models.uhved.config import UHVEDConfig, UHVEDModelConfig
from mmhvae.nn.gaussian import DiagonalGaussian, product_of_experts


class ResBlock3d(nn.Module):
    """Pre-activation residual block ``(B, Cin, D, H, W) -> (B, Cout, D, H, W)``:
    (InstanceNorm -> LeakyReLU -> conv 3³) x 2, plus a 1³ projection of the input.

    Instance normalization is per sample, so encoders can run on the sub-batch of samples that
    observe their modality without changing any sample's output.
    """

    def __init__(self, in_channels: int, out_channels: int, negative_slope: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.InstanceNorm3d(in_channels, affine=True),
            nn.LeakyReLU(negative_slope),
            nn.Conv3d(in_channels, out_channels, 3, padding=1),
            nn.InstanceNorm3d(out_channels, affine=True),
            nn.LeakyReLU(negative_slope),
            nn.Conv3d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class ModalityEncoder(nn.Module):
    """One modality ``(n, 1, D, H, W)`` -> features ``[(n, channels[s], D/2^s, H/2^s, W/2^s)]``."""

    def __init__(self, channels: Sequence[int], negative_slope: float):
        super().__init__()
        self.stem = nn.Conv3d(1, channels[0], 1)
        widths = [channels[0], *channels]
        self.blocks = nn.ModuleList(
            ResBlock3d(widths[s], widths[s + 1], negative_slope) for s in range(len(channels))
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        h = self.stem(x)
        features = []
        for s, block in enumerate(self.blocks):
            if s > 0:
                h = F.max_pool3d(h, 2)
            h = block(h)
            features.append(h)
        return features


class SkipDecoder(nn.Module):
    """U-Net decoder from multi-scale skips ``[(B, skip[s], D/2^s, ...)]`` to ``(B, out, D, H, W)``.

    The coarsest skip starts the flow; at each finer scale the flow is upsampled (trilinear),
    concatenated with that scale's skip and refined by a residual block (seed Fig. 2).
    """

    def __init__(
        self, skip_channels: Sequence[int], channels: Sequence[int], out_channels: int, negative_slope: float
    ):
        super().__init__()
        top = len(channels) - 1
        self.top = ResBlock3d(skip_channels[top], channels[top], negative_slope)
        self.blocks = nn.ModuleList(
            ResBlock3d(channels[s + 1] + skip_channels[s], channels[s], negative_slope) for s in range(top)
        )
        self.head = nn.Sequential(
            nn.InstanceNorm3d(channels[0], affine=True),
            nn.LeakyReLU(negative_slope),
            nn.Conv3d(channels[0], out_channels, 1),
        )

    def forward(self, skips: Sequence[Tensor]) -> Tensor:
        h = self.top(skips[-1])
        for s in reversed(range(len(self.blocks))):
            h = F.interpolate(h, size=skips[s].shape[2:], mode="trilinear", align_corners=False)
            h = self.blocks[s](torch.cat([h, skips[s].to(h.dtype)], dim=1))
        return self.head(h)


@dataclass
class UHVEDOutput:
    """Network outputs for one batch.

    seg_logits: ``(B, K, D, H, W)``, K = len(seg_labels).
    images: ``(B, M, D, H, W)`` decoded modalities (all M, from any input subset); None for U-HeMIS.
    kl: ``(B,)`` KL(q(z | x_r') || N(0, I)) per element, averaged over elements and scales; None for U-HeMIS.
    """

    seg_logits: Tensor
    images: Optional[Tensor]
    kl: Optional[Tensor]


class UHVED(nn.Module):
    """U-HVED (``method="uhved"``) or U-HeMIS (``method="uhemis"``); see the module docstring."""

    def __init__(self, cfg: UHVEDModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = copy.deepcopy(cfg)
        slope = cfg.negative_slope
        self.encoders = nn.ModuleDict({m: ModalityEncoder(cfg.channels, slope) for m in cfg.modalities})
        if cfg.method == "uhved":
            # Seed §2.3: each encoder emits (mu, log sigma²) at every scale.
            self.heads = nn.ModuleDict(
                {
                    m: nn.ModuleList(nn.Conv3d(c, 2 * z, 1) for c, z in zip(cfg.channels, cfg.latent_channels))
                    for m in cfg.modalities
                }
            )
            skip_channels = list(cfg.latent_channels)
            self.image_decoders = nn.ModuleDict(
                {m: SkipDecoder(skip_channels, cfg.channels, 1, slope) for m in cfg.modalities}
            )
        else:
            # HeMIS fusion: first and second moments of the observed modalities' features.
            skip_channels = [2 * c for c in cfg.channels]
        self.seg_decoder = SkipDecoder(skip_channels, cfg.channels, cfg.num_classes, slope)

    @classmethod
    def from_config(cls, cfg: UHVEDConfig | UHVEDModelConfig) -> "UHVED":
        return cls(cfg.model if isinstance(cfg, UHVEDConfig) else cfg)

    @property
    def modalities(self) -> list[str]:
        return list(self.cfg.modalities)

    # --- inputs -----------------------------------------------------------------------------------
    def check_inputs(self, images: Tensor, observed: Tensor) -> None:
        """Refuse wrong shapes, empty subsets and sizes the pooling cannot halve, with clear messages."""
        m = self.cfg.num_modalities
        if images.dim() != 5 or images.shape[1] != m:
            raise ValueError(
                f"images must be (B, M={m}, D, H, W) in the order {self.modalities}, got {tuple(images.shape)}"
            )
        if observed.shape != images.shape[:2]:
            raise ValueError(
                f"observed mask must be (B, M)={tuple(images.shape[:2])}, got {tuple(observed.shape)}"
            )
        empty = (~observed.bool()).all(dim=1).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"empty input subset for sample(s) {empty}: observe at least one of {self.modalities}"
            )
        div = self.cfg.divisor
        if any(s % div for s in images.shape[2:]):
            raise ValueError(
                f"spatial size {tuple(images.shape[2:])} must be divisible by {div} "
                f"(2**(scales-1)); pad the volume or use sliding-window inference"
            )

    def stack_inputs(self, images: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Named volumes ``{name: (B, D, H, W) or (B, 1, D, H, W)}`` -> images ``(B, M, D, H, W)``
        (zeros in unobserved slots, never read) and ``observed`` ``(B, M)`` bool."""
        if not images:
            raise ValueError(f"empty input subset: give at least one of {self.modalities}")
        unknown = sorted(set(images) - set(self.modalities))
        if unknown:
            raise ValueError(f"unknown modality {unknown}; this model knows {self.modalities}")
        vols = {k: (v[:, 0] if v.dim() == 5 else v) for k, v in images.items()}
        ref = next(iter(vols.values()))
        for k, v in vols.items():
            if v.shape != ref.shape:
                raise ValueError(f"modality {k!r} has shape {tuple(v.shape)}, expected {tuple(ref.shape)}")
        batch, m = ref.shape[0], self.cfg.num_modalities
        stacked = torch.zeros(batch, m, *ref.shape[1:], dtype=torch.float32, device=ref.device)
        observed = torch.zeros(batch, m, dtype=torch.bool, device=ref.device)
        for j, name in enumerate(self.modalities):
            if name in vols:
                stacked[:, j] = vols[name].float()
                observed[:, j] = True
        return stacked, observed

    # --- forward ----------------------------------------------------------------------------------
    def _encode(self, images: Tensor, observed: Tensor) -> list[Optional[tuple[Tensor, list[Tensor]]]]:
        """Per modality: (indices of the samples observing it, its features at every scale), or None.

        Only observed samples go through an encoder, so an absent modality costs nothing and its
        encoder receives exactly zero gradient from that sample."""
        out: list[Optional[tuple[Tensor, list[Tensor]]]] = []
        for j, name in enumerate(self.modalities):
            idx = observed[:, j].nonzero().flatten()
            if idx.numel() == 0:
                out.append(None)
                continue
            out.append((idx, self.encoders[name](images[idx, j : j + 1])))
        return out

    @staticmethod
    def _scatter(parts: list[Optional[tuple[Tensor, Tensor]]], batch: int) -> Tensor:
        """Per-modality ``(idx, (n_j, C, ...))`` -> ``(B, M, C, ...)``; rows of unobserved samples are zero
        (and masked out downstream)."""
        ref = next(p[1] for p in parts if p is not None)
        full = []
        for p in parts:
            t = ref.new_zeros(batch, *ref.shape[1:])
            full.append(t if p is None else t.index_copy(0, p[0], p[1].to(t.dtype)))
        return torch.stack(full, dim=1)

    def _hemis_skips(self, encoded, observed: Tensor, batch: int) -> list[Tensor]:
        """HeMIS fusion per scale: ``[mean, variance]`` over observed modalities, ``(B, 2C, ...)``
        (variance 0 when one modality is observed)."""
        skips = []
        mask = observed.float()
        for s in range(self.cfg.num_scales):
            feats = self._scatter([None if e is None else (e[0], e[1][s]) for e in encoded], batch)
            w = mask.reshape(*mask.shape, *([1] * (feats.dim() - 2)))
            count = w.sum(dim=1)
            mean = (feats * w).sum(dim=1) / count
            var = (((feats - mean.unsqueeze(1)) ** 2) * w).sum(dim=1) / count
            skips.append(torch.cat([mean, var], dim=1))
        return skips

    def posteriors(self, images: Tensor, observed: Tensor) -> list[DiagonalGaussian]:
        """U-HVED: q(z_s | x_r') at every scale ``s``, tensors ``(B, latent_channels[s], D/2^s, ...)``."""
        if self.cfg.method != "uhved":
            raise ValueError(f"method {self.cfg.method!r} has no latent posteriors")
        self.check_inputs(images, observed)
        observed = observed.bool()
        batch = images.shape[0]
        encoded = self._encode(images, observed)
        out = []
        for s in range(self.cfg.num_scales):
            params = [
                None if e is None else (e[0], self.heads[name][s](e[1][s]))
                for name, e in zip(self.modalities, encoded)
            ]
            experts = DiagonalGaussian.from_params(
                self._scatter(params, batch), self.cfg.logvar_clamp, self.cfg.mean_clamp, dim=2
            )
            prior = DiagonalGaussian.standard(experts.mu[:, 0])
            # Seed eq. 4: q(z | x_r') ∝ N(0, I) · Π_{j in r'} q_j(z | x_j).
            out.append(product_of_experts(prior, experts, observed))
        return out

    def decode(self, latents: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Multi-scale latents -> segmentation logits ``(B, K, D, H, W)`` and images ``(B, M, D, H, W)``."""
        images = torch.cat([self.image_decoders[m](latents) for m in self.modalities], dim=1)
        return self.seg_decoder(latents), images

    def forward(self, images: Tensor, observed: Tensor, temperature: float = 1.0) -> UHVEDOutput:
        """images ``(B, M, D, H, W)``, observed ``(B, M)`` bool -> :class:`UHVEDOutput`.

        ``temperature`` scales the sampling noise: 1 in training, 0 for posterior means."""
        if self.cfg.method == "uhemis":
            self.check_inputs(images, observed)
            observed = observed.bool()
            encoded = self._encode(images, observed)
            seg = self.seg_decoder(self._hemis_skips(encoded, observed, images.shape[0]))
            return UHVEDOutput(seg_logits=seg, images=None, kl=None)
        posteriors = self.posteriors(images, observed)
        kl = torch.stack(
            [q.kl(DiagonalGaussian.standard(q.mu)).flatten(1).mean(dim=1) for q in posteriors], dim=1
        ).mean(dim=1)
        seg, decoded = self.decode([q.sample(temperature) for q in posteriors])
        return UHVEDOutput(seg_logits=seg, images=decoded, kl=kl)

    @torch.no_grad()
    def predict(
        self, images: Tensor, observed: Tensor, temperature: float = 0.0, samples: int = 1
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Class probabilities ``(B, K, D, H, W)`` and images ``(B, M, D, H, W)`` (None for U-HeMIS),
        averaged over ``samples`` latent draws at ``temperature`` (one pass when it is 0)."""
        if self.cfg.method == "uhemis":
            return torch.softmax(self(images, observed).seg_logits.float(), dim=1), None
        posteriors = self.posteriors(images, observed)
        draws = max(1, samples) if temperature > 0 else 1
        probs, decoded = 0.0, 0.0
        for _ in range(draws):
            seg, imgs = self.decode([q.sample(temperature) for q in posteriors])
            probs = probs + torch.softmax(seg.float(), dim=1) / draws
            decoded = decoded + imgs.float() / draws
        return probs, decoded

"""MMHVAE: a hierarchical multimodal VAE whose posterior at every level is a product of experts.

Read top to bottom: the per-modality bottom-up encoders, the top-down path with conditional priors
p(z_l | z_>l) and residual experts h_j,l (paper eq. 12), their exact product (eq. 13-14), and one
image head per modality on the finest latent z_1 (eq. 6).

Tensor conventions: images ``(B, M, H, W)``; ``available`` r and ``observed`` r' are ``(B, M)`` bool
masks, per sample. A modality that is not observed is never encoded: its encoder is not run for that
sample, so it costs nothing and receives no gradient, and whatever its image slot holds is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from mmhvae.config import ModelConfig
from mmhvae.models.protocol import check_forward_inputs
from mmhvae.nn.cells import DecoderCell, EncoderCell, downsample, group_norm, image_head, upsample
from mmhvae.nn.gaussian import DiagonalGaussian, average_of_experts, product_of_experts


@dataclass
class MMHVAEOutput:
    """What one forward pass returns.

    reconstructions: ``(B, M, H, W)`` decoded images of every modality.
    kl: per latent level, finest first, ``(B,)`` analytic KL summed over the level's elements.
    latents: per latent level, finest first, the sampled z_l (``(B, C_l, h_l, w_l)`` or ``(B, D)``).
    posteriors: per level, the fused posterior q(z_l | x_r', z_>l).
    """

    reconstructions: Tensor
    kl: list[Tensor]
    latents: list[Tensor]
    posteriors: list[DiagonalGaussian] = field(default_factory=list)

    @property
    def kl_total(self) -> Tensor:
        """``(B,)`` sum of the KL over all levels."""
        return torch.stack(self.kl, dim=0).sum(dim=0)


class ModalityEncoder(nn.Module):
    """Bottom-up path of one modality: features at every spatial stage plus the coarsest grid."""

    def __init__(self, cfg: ModelConfig, in_channels: int = 1):
        super().__init__()
        ch = cfg.channels
        self.stem = nn.Conv2d(in_channels, ch[0], 3, padding=1)
        self.stages = nn.ModuleList(
            nn.Sequential(*[EncoderCell(c, cfg.se_reduction) for _ in range(cfg.encoder_cells)]) for c in ch
        )
        outs = ch[1:] + [cfg.top_channels]
        self.downs = nn.ModuleList(downsample(c, o) for c, o in zip(ch, outs))
        self.top = EncoderCell(cfg.top_channels, cfg.se_reduction)

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """``(b, 1, H, W)`` -> features per stage (finest first) and ``(b, C_top, r, r)``."""
        feats = []
        h = self.stem(x)
        for stage, down in zip(self.stages, self.downs):
            h = stage(h)
            feats.append(h)
            h = down(h)
        return feats, self.top(h)


class MMHVAE(nn.Module):
    """The generator of DESIGN §1: M encoders, L latent levels, top-down decoder, M image heads."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        M, ch, lat = cfg.num_modalities, cfg.channels, cfg.latent_channels
        self.top_res = cfg.image_size // 2 ** len(ch)
        top_flat = cfg.top_channels * self.top_res**2
        # "concat" (ablation, MM-GAN-like): one encoder sees all zero-imputed inputs stacked.
        self.num_experts = 1 if cfg.fusion == "concat" else M
        enc_in = M if cfg.fusion == "concat" else 1
        self.encoders = nn.ModuleList(ModalityEncoder(cfg, enc_in) for _ in range(self.num_experts))

        # Top level z_L: a vector; prior N(0, I); one expert per modality from its coarsest grid.
        self.top_experts = nn.ModuleList(
            nn.Sequential(nn.Flatten(), nn.SiLU(), nn.Linear(top_flat, 2 * cfg.top_latent_dim))
            for _ in range(self.num_experts)
        )
        self.top_decode = nn.Sequential(
            nn.Linear(cfg.top_latent_dim, top_flat), nn.Unflatten(1, (cfg.top_channels, self.top_res, self.top_res))
        )
        self.top_cell = DecoderCell(cfg.top_channels, cfg.expand_ratio, cfg.depthwise_kernel, cfg.se_reduction)
        self.top_up = upsample(cfg.top_channels, ch[-1])

        # Spatial stages, processed coarsest -> finest in forward().
        self.priors = nn.ModuleDict()
        self.experts = nn.ModuleDict()
        self.combiners = nn.ModuleDict()
        self.dec_cells = nn.ModuleList()
        self.ups = nn.ModuleList()
        for s, (c, lc) in enumerate(zip(ch, lat)):
            if lc > 0:
                self.priors[str(s)] = nn.Sequential(group_norm(c), nn.SiLU(), nn.Conv2d(c, 2 * lc, 3, padding=1))
                # h_j,l(z_l | x_j, z_>l): sees the modality's features and the top-down state (eq. 12).
                self.experts[str(s)] = nn.ModuleList(
                    nn.Sequential(nn.SiLU(), nn.Conv2d(2 * c, 2 * lc, 3, padding=1)) for _ in range(self.num_experts)
                )
                if s > 0:  # z_1 feeds the image heads directly (eq. 6), not the top-down state
                    self.combiners[str(s)] = nn.Conv2d(lc, c, 1)
            self.dec_cells.append(
                nn.Sequential(
                    *[
                        DecoderCell(c, cfg.expand_ratio, cfg.depthwise_kernel, cfg.se_reduction)
                        for _ in range(cfg.decoder_cells)
                    ]
                )
            )
            self.ups.append(upsample(c, ch[s - 1]) if s > 0 else nn.Identity())
        head_in = lat[0] if lat[0] > 0 else cfg.head_channels
        # Without a latent at full resolution (depth ablation) the heads read a projection of the state.
        self.head_proj = nn.Identity() if lat[0] > 0 else nn.Conv2d(ch[0], cfg.head_channels, 1)
        self.heads = nn.ModuleList(image_head(head_in, cfg.head_channels, cfg.head_blocks) for _ in range(M))
        self._init_experts()

    def _init_experts(self) -> None:
        # Start every expert and prior near N(0, 1) so early products are well conditioned.
        for module in list(self.priors.values()) + [e for el in self.experts.values() for e in el]:
            last = module[-1]
            nn.init.normal_(last.weight, std=1e-3)
            nn.init.zeros_(last.bias)
        for module in self.top_experts:
            nn.init.normal_(module[-1].weight, std=1e-3)
            nn.init.zeros_(module[-1].bias)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "MMHVAE":
        return cls(cfg)

    @property
    def modalities(self) -> list[str]:
        return list(self.cfg.modalities)

    # ----------------------------------------------------------------------------------------------
    def _encode(self, images: Tensor, observed: Tensor) -> list[Optional[tuple[Tensor, list[Tensor], Tensor]]]:
        """Run encoder j on the samples that observe modality j only.

        Returns per expert ``(sample_indices, stage_features, top_grid)`` or ``None`` when no sample
        observes it.
        """
        if self.cfg.fusion == "concat":
            any_obs = observed.any(dim=1)
            idx = any_obs.nonzero(as_tuple=True)[0]
            if idx.numel() == 0:
                return [None]
            zero_imputed = images[idx] * observed[idx].to(images.dtype)[:, :, None, None]
            feats, top = self.encoders[0](zero_imputed)
            return [(idx, feats, top)]
        out = []
        for j, encoder in enumerate(self.encoders):
            idx = observed[:, j].nonzero(as_tuple=True)[0]
            if idx.numel() == 0:
                out.append(None)
                continue
            feats, top = encoder(images[idx, j : j + 1])
            out.append((idx, feats, top))
        return out

    def _expert_mask(self, observed: Tensor) -> Tensor:
        return observed.any(dim=1, keepdim=True) if self.cfg.fusion == "concat" else observed

    def _fuse(self, prior: DiagonalGaussian, experts: DiagonalGaussian, mask: Tensor) -> DiagonalGaussian:
        if self.cfg.fusion == "average":
            # Deterministic HeMIS-style ablation: z_l = mean of the observed experts' means.
            fused = average_of_experts(experts, mask)
            empty = ~mask.any(dim=1)
            if empty.any():
                fused = DiagonalGaussian(
                    torch.where(_bcast(empty, fused.mu), prior.mu, fused.mu),
                    torch.where(_bcast(empty, fused.logvar), prior.logvar, fused.logvar),
                )
            return fused
        return product_of_experts(prior, experts, mask)

    def _scatter_experts(self, params: list[Optional[tuple[Tensor, Tensor]]], like: Tensor, channels: int):
        """Place per-expert parameters computed on sample subsets into ``(B, E, 2C, ...)`` (zeros elsewhere)."""
        B = like.shape[0]
        columns = []
        for item in params:
            col = like.new_zeros((B, 2 * channels, *like.shape[2:]), dtype=torch.float32)
            if item is not None:
                idx, p = item
                col = col.index_copy(0, idx, p.float())
            columns.append(col)
        full = torch.stack(columns, dim=1)
        return DiagonalGaussian.from_params(full, self.cfg.logvar_clamp, self.cfg.mean_clamp, dim=2)

    def _sample_level(self, q: DiagonalGaussian, p: DiagonalGaussian, temperature: float):
        z = q.mu if self.cfg.fusion == "average" else q.sample(temperature)
        if self.cfg.fusion == "average":
            kl = torch.zeros(z.shape[0], device=z.device)
        else:
            kl = q.kl(p).flatten(1).sum(dim=1)
        return z, kl

    # ----------------------------------------------------------------------------------------------
    def forward(
        self,
        images: Tensor,
        observed: Tensor,
        temperature: float = 1.0,
        available: Optional[Tensor] = None,
    ) -> MMHVAEOutput:
        """Encode the observed subset r' of each sample and decode every modality.

        Args:
            images: ``(B, M, H, W)``; slots of unobserved modalities are ignored (may hold anything).
            observed: r' ``(B, M)`` bool, the inputs the encoder sees (a subset of the available ones).
            temperature: tau, scales the posterior standard deviation when sampling (0 = mean).
            available: r ``(B, M)`` bool, only checked (r' must be within r); losses use it.
        """
        check_forward_inputs(self.cfg, images, observed, available)
        observed = observed.bool()
        encoded = self._encode(images, observed)
        mask = self._expert_mask(observed)
        B = images.shape[0]
        kls, latents, posteriors = [], [], []

        # Level L (top): q(z_L | x_r') = N(0, I) x prod_j h_j(z_L | x_j)   (eq. 13, first factor)
        top_params = [None if e is None else (e[0], self.top_experts[j](e[2])) for j, e in enumerate(encoded)]
        ref = images.new_zeros((B, 1))
        experts = self._scatter_experts(top_params, ref, self.cfg.top_latent_dim)
        prior = DiagonalGaussian.standard(images.new_zeros((B, self.cfg.top_latent_dim)))
        q = self._fuse(prior, experts, mask)
        z, kl = self._sample_level(q, prior, temperature)
        kls.append(kl)
        latents.append(z)
        posteriors.append(q)
        h = self.top_up(self.top_cell(self.top_decode(z.to(images.dtype))))

        # Levels l = L-1 .. 1: q(z_l | x_r', z_>l) = p(z_l | z_>l) x prod_j h_j,l   (eq. 13-14)
        z_finest = None
        for s in reversed(range(len(self.cfg.channels))):
            key = str(s)
            h = self.dec_cells[s](h)
            if key in self.priors:
                prior = DiagonalGaussian.from_params(
                    self.priors[key](h), self.cfg.logvar_clamp, self.cfg.mean_clamp
                )
                params = []
                for j, e in enumerate(encoded):
                    if e is None:
                        params.append(None)
                        continue
                    idx, feats, _ = e
                    params.append((idx, self.experts[key][j](torch.cat([feats[s], h[idx]], dim=1))))
                experts = self._scatter_experts(params, h, self.cfg.latent_channels[s])
                q = self._fuse(prior, experts, mask)
                z, kl = self._sample_level(q, prior, temperature)
                kls.append(kl)
                latents.append(z)
                posteriors.append(q)
                if s == 0:
                    z_finest = z
                    break
                h = h + self.combiners[key](z.to(h.dtype))
            h = self.ups[s](h)

        head_in = z_finest.to(images.dtype) if z_finest is not None else self.head_proj(h)
        recon = torch.cat([head(head_in) for head in self.heads], dim=1)
        # Finest level first, as in the paper's numbering z_1 ... z_L.
        return MMHVAEOutput(recon, kls[::-1], latents[::-1], posteriors[::-1])

    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def synthesize(
        self,
        images: Mapping[str, Tensor],
        temperature: Optional[float] = None,
        targets: Optional[Sequence[str]] = None,
    ) -> dict[str, Tensor]:
        """Synthesize every modality (or ``targets``) from any non-empty subset of named inputs.

        Args:
            images: modality name -> ``(B, H, W)``, ``(B, 1, H, W)`` or ``(H, W)`` tensor.
            temperature: tau (paper: 0.5); 0 gives the deterministic posterior-mean output; None =
                the checkpoint's ``eval.temperature`` (:func:`~mmhvae.models.protocol.default_temperature`).
        Returns:
            modality name -> tensor of the same layout as the inputs.
        """
        from mmhvae.models.protocol import synthesize_named

        return synthesize_named(self, images, temperature, targets)


def _bcast(mask: Tensor, like: Tensor) -> Tensor:
    return mask.reshape(mask.shape[0], *([1] * (like.dim() - 1)))


def _register() -> None:
    from mmhvae.models import register

    # MMHVAE and the variants that differ from it only by configuration (DESIGN §2):
    # "mmhvae" (PoE), fusion ablations via model.fusion, depth ablation via model.latent_channels.
    register("mmhvae")(MMHVAE)


_register()

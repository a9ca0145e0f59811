"""MMHVAE: a hierarchical multimodal VAE whose posterior at every level is a product of experts.

Read top to bottom: the per-modality bottom-up encoders, the top-down path with conditional priors
p(z_l | z_>l) and residual experts h_j,l (paper eq. 12), their exact product (eq. 13-14), and one
image head per modality on the finest latent z_1 (eq. 6).

Tensor conventions: images ``(B, M, H, W)``; ``available`` r and ``observed`` r' are ``(B, M)`` bool
masks, per sample. A modality that is not observed is never encoded: its encoder is not run for that
sample, so it costs nothing and receives no gradient, and whatever its image slot holds is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from mmhvae.config import ModelConfig
from mmhvae.models.protocol import Generator, MMHVAEOutput, check_forward_inputs
from mmhvae.nn.cells import DecoderCell, EncoderCell, downsample, group_norm, image_head, upsample
from mmhvae.nn.fusion import build_fusion
from mmhvae.nn.gaussian import DiagonalGaussian


@dataclass
class Encoding:
    """What :meth:`MMHVAE.encode` returns: per expert ``(rows, stage features finest first, top grid)``
    computed on the batch rows that observe it (``None`` when none does); ``mask`` ``(B, E)`` the
    experts encoded per row; ``dtype`` of the images."""

    experts: list[Optional[tuple[Tensor, list[Tensor], Tensor]]]
    mask: Tensor
    dtype: torch.dtype

    @property
    def batch(self) -> int:
        return self.mask.shape[0]

    def _tensors(self) -> list[Tensor]:
        return [t for e in self.experts if e is not None for t in (*e[1], e[2])]

    def detached(self) -> "Encoding":
        """The same features as leaves that collect gradients: decode from them once per draw (each draw
        back-propagates into them), then :meth:`backward` runs the encoders' backward once for all."""
        experts = [
            None if e is None else (e[0], [f.detach().requires_grad_() for f in e[1]], e[2].detach().requires_grad_())
            for e in self.experts
        ]
        return Encoding(experts, self.mask, self.dtype)

    def backward(self, leaves: "Encoding") -> None:
        """Back-propagate the gradients gathered by ``leaves`` (from :meth:`detached`) into the encoders."""
        pairs = [(t, leaf.grad) for t, leaf in zip(self._tensors(), leaves._tensors()) if leaf.grad is not None]
        if pairs:
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])


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


class MMHVAE(Generator):
    """The generator of DESIGN §1: M encoders, L latent levels, top-down decoder, M image heads."""

    # forward() takes a list of T masks r' (one encoding, one batched decoder pass; DDP-safe, T times the
    # decoder's activation memory); on one process the trainer uses encode_draws + decode per draw instead.
    draws_in_one_forward = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        M, ch, lat = cfg.num_modalities, cfg.channels, cfg.latent_channels
        self.top_res = cfg.image_size // 2 ** len(ch)
        top_flat = cfg.top_channels * self.top_res**2
        # How the observed modalities are fused, at every level (mmhvae.nn.fusion): poe / average / concat.
        self.fusion = build_fusion(cfg.fusion)
        self.num_experts = self.fusion.num_experts(M)
        enc_in = self.fusion.encoder_channels(M)
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
        self.heads = nn.ModuleList(
            image_head(head_in, cfg.head_channels, cfg.head_blocks, cfg.head_output_norm) for _ in range(M)
        )
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
    def from_config(cls, cfg) -> "MMHVAE":
        """The network of a :class:`ModelConfig`, or of an experiment config's ``model`` section."""
        return cls(getattr(cfg, "model", cfg))

    # ----------------------------------------------------------------------------------------------
    def encode(self, images: Tensor, observed: Tensor) -> "Encoding":
        """The bottom-up pass: run each expert's encoder on the rows that observe it, once.

        With per-modality experts (``poe``, ``average``) the features of modality j do not depend on
        which other modalities are observed, so one encoding of r serves every r' within it
        (:meth:`decode` with any ``observed`` inside ``observed`` here).
        """
        check_forward_inputs(self.cfg, images, observed, None)
        observed = observed.bool()
        experts = []
        for j, item in enumerate(self.fusion.encoder_inputs(images, observed)):
            if item is None:
                experts.append(None)
                continue
            rows, x = item
            feats, top = self.encoders[j](x)
            experts.append((rows, feats, top))
        return Encoding(experts, self.fusion.expert_mask(observed), images.dtype)

    def decode(
        self,
        encoding: "Encoding",
        observed: Tensor,
        temperature: float = 1.0,
        rows: Optional[Tensor] = None,
        noise: Optional[Sequence[Tensor]] = None,
    ) -> MMHVAEOutput:
        """The top-down pass: fuse the experts of ``observed`` r' at every level, sample, decode.

        Args:
            encoding: from :meth:`encode` of a batch of B rows.
            observed: r' ``(N, M)`` bool; row n uses the features of encoded row ``rows[n]`` (``rows``
                ``None``: N = B, row n of the encoding) and must be within what was encoded there.
            temperature: tau (0 = posterior means).
            noise: optional standard-normal noise per level, finest first, shaped like ``latents``
                (default: drawn from the global RNG, coarsest level first).
        """
        observed = observed.bool()
        mask, picks = self._picks(encoding, observed, rows)
        N = observed.shape[0]
        noise = list(noise)[::-1] if noise is not None else None  # coarsest first, as sampled
        device = observed.device
        kls, latents, posteriors = [], [], []

        def level(prior: DiagonalGaussian, experts) -> Tensor:
            q = self._posterior(prior, experts, mask)
            z, kl = self.fusion.sample(q, prior, temperature, None if noise is None else noise[len(latents)])
            kls.append(kl)
            latents.append(z)
            posteriors.append(q)
            return z

        # Level L (top): q(z_L | x_r') = N(0, I) x prod_j h_j(z_L | x_j)   (eq. 13, first factor)
        prior = DiagonalGaussian.standard(torch.zeros((N, self.cfg.top_latent_dim), device=device))
        z = level(prior, self._top_experts(picks))
        h = self.top_up(self.top_cell(self.top_decode(z.to(encoding.dtype))))

        # Levels l = L-1 .. 1: q(z_l | x_r', z_>l) = p(z_l | z_>l) x prod_j h_j,l   (eq. 13-14)
        z_finest = None
        for s in reversed(range(len(self.cfg.channels))):
            key = str(s)
            h = self.dec_cells[s](h)
            if key in self.priors:
                prior = DiagonalGaussian.from_params(self.priors[key](h), self.cfg.logvar_clamp, self.cfg.mean_clamp)
                z = level(prior, self._stage_experts(s, picks, h))
                if s == 0:
                    z_finest = z
                    break
                h = h + self.combiners[key](z.to(h.dtype))
            h = self.ups[s](h)

        head_in = z_finest.to(encoding.dtype) if z_finest is not None else self.head_proj(h)
        recon = torch.cat([head(head_in) for head in self.heads], dim=1)
        # Finest level first, as in the paper's numbering z_1 ... z_L.
        return MMHVAEOutput(recon, kls[::-1], latents[::-1], posteriors[::-1])

    def _picks(self, encoding: "Encoding", observed: Tensor, rows: Optional[Tensor]):
        """The expert mask of ``observed`` and, per expert, :meth:`_pick` (checked against the encoding)."""
        mask = self.fusion.expert_mask(observed)
        N = observed.shape[0]
        if rows is None and N != encoding.batch:
            raise ValueError(f"observed has {N} rows but the encoding {encoding.batch}; pass rows=")
        if not self.fusion.shares_encoding and (rows is not None or not torch.equal(mask, encoding.mask)):
            raise ValueError(f"fusion {self.fusion.name!r} encodes r' itself: decode the observed that was encoded")
        return mask, [self._pick(e, mask[:, j], rows, encoding.batch) for j, e in enumerate(encoding.experts)]

    def _top_experts(self, picks):
        """h_j(z_L | x_j) of the picked experts, from their coarsest grids."""
        experts = []
        for j, pick in enumerate(picks):
            if pick is not None:
                sel, src, e = pick
                params = self.top_experts[j](e[2] if src is None else e[2].index_select(0, src))
                experts.append((sel, j, params))
        return self._gaussians(experts)

    def _stage_experts(self, s: int, picks, h: Tensor):
        """h_j,l(z_l | x_j, z_>l) of the picked experts at spatial stage ``s``: features and top-down state."""
        experts = []
        for j, pick in enumerate(picks):
            if pick is not None:
                sel, src, e = pick
                feats = e[1][s] if src is None else e[1][s].index_select(0, src)
                state = h if sel is None else h.index_select(0, sel)
                experts.append((sel, j, self.experts[str(s)][j](torch.cat([feats, state], dim=1))))
        return self._gaussians(experts)

    @staticmethod
    def _pick(expert, wanted: Tensor, rows: Optional[Tensor], batch: int):
        """Which decoded rows use this expert (``sel``, None = all) and where their features are (``src``,
        None = the encoded rows in order); None when no row uses it."""
        if expert is None:
            if wanted.any():
                raise ValueError("observed r' must be within the encoded modalities")
            return None
        sel = wanted.nonzero(as_tuple=True)[0]
        if sel.numel() == 0:
            return None
        enc_rows = expert[0]
        where = torch.full((batch,), -1, dtype=torch.long, device=wanted.device)
        where[enc_rows] = torch.arange(enc_rows.numel(), device=wanted.device)
        src = where[sel if rows is None else rows[sel]]
        if bool((src < 0).any()):
            raise ValueError("observed r' must be within the encoded modalities")
        if src.numel() == enc_rows.numel() and torch.equal(src, torch.arange(src.numel(), device=src.device)):
            src = None
        return (None if sel.numel() == wanted.shape[0] else sel), src, expert

    def _gaussians(self, experts):
        return [
            (sel, j, DiagonalGaussian.from_params(p, self.cfg.logvar_clamp, self.cfg.mean_clamp)) for sel, j, p in experts
        ]

    def _posterior(self, prior: DiagonalGaussian, experts, mask: Tensor):
        if type(self)._fuse is not MMHVAE._fuse:  # a subclass's posterior over every expert slot (MoPoE)
            return self._fuse(prior, _dense(experts, prior, mask.shape[1]), mask)
        return self.fusion.combine(prior, [(sel, e) for sel, _, e in experts])

    def _fuse(self, prior: DiagonalGaussian, experts: DiagonalGaussian, mask: Tensor):
        """Hook for posteriors that need every expert slot: experts ``(B, E, ...)`` (zeros where
        ``mask`` ``(B, E)`` is False). The default is the model's fusion."""
        return self.fusion.combine(
            prior, [(mask[:, j].nonzero(as_tuple=True)[0], DiagonalGaussian(experts.mu[mask[:, j], j],
                                                                             experts.logvar[mask[:, j], j]))
                    for j in range(mask.shape[1])]
        )

    # ----------------------------------------------------------------------------------------------
    def forward(
        self,
        images: Tensor,
        observed,
        temperature: float = 1.0,
        available: Optional[Tensor] = None,
        rows=None,
        noise: Optional[Sequence[Tensor]] = None,
        encoding: Optional["Encoding"] = None,
    ):
        """Encode the observed subset r' of each sample and decode every modality.

        Args:
            images: ``(B, M, H, W)``; slots of unobserved modalities are ignored (may hold anything).
            observed: r' ``(B, M)`` bool, the inputs the encoder sees (a subset of the available ones);
                or a list of T such masks (the T draws of a training step, Algorithm 1 lines 8-16):
                then each modality is encoded once for all draws, the draws are decoded in one
                batched pass, and a list of T outputs is returned (one forward, so DDP-safe).
            temperature: tau, scales the posterior standard deviation when sampling (0 = mean).
            available: r ``(B, M)`` bool, only checked (r' must be within r); losses use it.
            rows: with a list of masks, per draw the batch rows it uses (``None`` = all B rows); with
                ``encoding``, the encoded row of each of the B rows (``None`` = the same row).
            noise: standard-normal noise per level (see :meth:`decode`); with a list of masks, one
                such list per draw.
            encoding: features from :meth:`encode` / :meth:`encode_draws` (e.g. ``Encoding.detached()``)
                that cover r': decode from them instead of encoding ``images`` again.
        """
        if isinstance(observed, (list, tuple)):
            return self._forward_draws(images, list(observed), temperature, available, rows, noise)
        check_forward_inputs(self.cfg, images, observed, available)
        if encoding is not None:
            return self.decode(encoding, observed, temperature, rows=rows, noise=noise)
        return self.decode(self.encode(images, observed), observed, temperature, noise=noise)

    def encode_draws(self, images: Tensor, draws: Sequence[Tensor], rows: Optional[Sequence[Optional[Tensor]]] = None):
        """One encoding of every modality that one of the ``draws`` r' observes (per row), or ``None`` when
        the fusion's features depend on r' (``concat``): then each draw needs its own forward."""
        if not self.fusion.shares_encoding:
            return None
        B = images.shape[0]
        union = torch.zeros(B, self.cfg.num_modalities, device=images.device)
        for d, r in zip(draws, rows if rows is not None else [None] * len(draws)):
            union = union + d.float() if r is None else union.index_add(0, r.to(images.device), d.float())
        return self.encode(images, union > 0)

    def _forward_draws(self, images, draws, temperature, available, rows, noise=None) -> list[MMHVAEOutput]:
        B = images.shape[0]
        rows = list(rows) if rows is not None else [None] * len(draws)
        if len(rows) != len(draws) or not draws:
            raise ValueError("give one rows entry per draw (and at least one draw)")
        check_forward_inputs(self.cfg, images, torch.ones(images.shape[:2], dtype=torch.bool), None)
        sources = []
        for observed, r in zip(draws, rows):
            idx = torch.arange(B, device=images.device) if r is None else r.to(images.device)
            if observed.shape != (idx.numel(), images.shape[1]):
                raise ValueError(f"observed mask must be ({idx.numel()}, {images.shape[1]}), got {tuple(observed.shape)}")
            if available is not None and (observed.bool() & ~available[idx].bool()).any():
                raise ValueError("observed inputs r' must be a subset of the available modalities r")
            sources.append(idx)
        observed = torch.cat([d.bool() for d in draws])
        source = torch.cat(sources)
        if noise is not None:  # per draw, per level -> per level, the draws' rows in order
            noise = [torch.cat(level) for level in zip(*noise)]
        if self.fusion.shares_encoding:
            union = torch.zeros(B, observed.shape[1], device=images.device).index_add(0, source, observed.float()) > 0
            out = self.decode(self.encode(images, union), observed, temperature, rows=source, noise=noise)
        else:
            out = self.decode(self.encode(images.index_select(0, source), observed), observed, temperature, noise=noise)
        bounds = torch.tensor([0] + [d.shape[0] for d in draws]).cumsum(0).tolist()
        return [out.rows(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

    # ----------------------------------------------------------------------------------------------


def _dense(experts, prior: DiagonalGaussian, num_experts: int) -> DiagonalGaussian:
    """``[(rows, j, h_j)]`` -> ``(B, E, ...)`` Gaussian parameters, zeros in the unobserved slots."""
    mu = prior.mu.new_zeros((prior.mu.shape[0], num_experts, *prior.mu.shape[1:]))
    logvar = torch.zeros_like(mu)
    for sel, j, e in experts:
        idx = torch.arange(mu.shape[0], device=mu.device) if sel is None else sel
        mu = mu.index_put((idx, torch.full_like(idx, j)), e.mu)
        logvar = logvar.index_put((idx, torch.full_like(idx, j)), e.logvar)
    return DiagonalGaussian(mu, logvar)


def _register() -> None:
    from mmhvae.models import register

    # MMHVAE and the variants that differ from it only by configuration (DESIGN §2):
    # "mmhvae" (PoE), fusion ablations via model.fusion, depth ablation via model.latent_channels.
    register("mmhvae")(MMHVAE)


_register()

"""What every generator shares: the checks of the forward protocol and named-modality synthesis.

The protocol (see :mod:`mmhvae.models`) is ``model(images (B, M, H, W), observed (B, M) bool, ...)``;
users call ``model.synthesize({name: image}, temperature, targets)`` instead. Both checks live here so
that MMHVAE and the baselines refuse bad inputs with the same messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from mmhvae.config import ModelConfig
from mmhvae.nn.gaussian import DiagonalGaussian


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

    def rows(self, start: int, stop: int) -> "MMHVAEOutput":
        """The output of rows ``start:stop`` (views)."""
        return MMHVAEOutput(
            self.reconstructions[start:stop],
            [k[start:stop] for k in self.kl],
            [z[start:stop] for z in self.latents],
            [DiagonalGaussian(q.mu[start:stop], q.logvar[start:stop]) for q in self.posteriors],
        )


def check_forward_inputs(cfg: ModelConfig, images: Tensor, observed: Tensor, available: Optional[Tensor]) -> None:
    """Refuse tensors that do not match ``cfg``: images ``(B, M, S, S)``, masks ``(B, M)``, r' within r."""
    M, S = cfg.num_modalities, cfg.image_size
    if images.dim() != 4 or images.shape[1] != M or tuple(images.shape[2:]) != (S, S):
        raise ValueError(
            f"images must be (B, M={M}, {S}, {S}) for modalities {list(cfg.modalities)}, got {tuple(images.shape)}"
        )
    if observed.shape != images.shape[:2]:
        raise ValueError(f"observed mask must be (B, M)={tuple(images.shape[:2])}, got {tuple(observed.shape)}")
    if available is not None:
        if available.shape != observed.shape:
            raise ValueError("available and observed masks must have the same shape (B, M)")
        if (observed.bool() & ~available.bool()).any():
            raise ValueError("observed inputs r' must be a subset of the available modalities r")


def zero_impute(images: Tensor, observed: Tensor) -> Tensor:
    """``(B, M, H, W)`` -> the same with every unobserved slot set to 0 (MM-GAN / ResViT input).

    Selected with ``where`` from the mask, never by multiplying: an unobserved slot may hold anything,
    NaN included, and ``NaN * 0`` is NaN.
    """
    keep = observed.bool()[:, :, None, None]
    return torch.where(keep, images, images.new_zeros(()))


def synthesize_named(
    model: nn.Module,
    images: Mapping[str, Tensor],
    temperature: Optional[float],
    targets: Optional[Sequence[str]],
) -> dict[str, Tensor]:
    """Run ``model`` on named inputs and return named outputs (the body of every ``synthesize``).

    Args:
        model: a generator following the protocol (has ``.modalities`` and ``.cfg``).
        images: modality name -> ``(B, H, W)``, ``(B, 1, H, W)`` or ``(H, W)``; one shape for all.
        temperature: tau passed to the forward pass (0 = deterministic output; None = the
            checkpoint's ``eval.temperature``, :func:`default_temperature`).
        targets: modality names to return; ``None`` = every modality of the model.
    Returns:
        modality name -> tensor in the layout of the inputs.
    """
    temperature = check_temperature(default_temperature(model) if temperature is None else temperature)
    return synthesize_samples(model, images, temperature, targets, 1)[0]


def check_request(modalities: Sequence[str], inputs: Mapping[str, object], targets: Optional[Sequence[str]]) -> list[str]:
    """Refuse an empty input subset and unknown input or target names; the targets (default: all)."""
    modalities = list(modalities)
    if not inputs:
        raise ValueError(f"empty input subset: give at least one of {modalities}")
    unknown = [k for k in inputs if k not in modalities]
    if unknown:
        raise ValueError(f"unknown modality {unknown}; this model knows {modalities}")
    targets = list(targets) if targets is not None else modalities
    bad = [t for t in targets if t not in modalities]
    if bad:
        raise ValueError(f"unknown target modality {bad}; this model knows {modalities}")
    return targets


def synthesize_samples(
    model: nn.Module,
    images: Mapping[str, Tensor],
    temperature: float,
    targets: Optional[Sequence[str]],
    samples: int,
) -> list[dict[str, Tensor]]:
    """``samples`` K draws of :func:`synthesize_named` from one encoding of the inputs.

    A model with ``encode`` / ``decode`` (MMHVAE) encodes once and decodes K times; the noise is drawn
    in the same order as K separate calls, so the results equal them. Other models run K times.
    """
    modalities = list(model.modalities)
    targets = check_request(modalities, images, targets)
    shapes = {k: tuple(v.shape) for k, v in images.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"input images must share one shape, got {shapes}")
    first = next(iter(images.values()))
    layout = first.dim()
    if layout == 2:
        batch = {k: v[None] for k, v in images.items()}
    elif layout == 3:
        batch = dict(images)
    elif layout == 4 and first.shape[1] == 1:
        batch = {k: v[:, 0] for k, v in images.items()}
    else:
        raise ValueError(f"input images must be (H, W), (B, H, W) or (B, 1, H, W), got {tuple(first.shape)}")
    ref = next(iter(batch.values()))
    B = ref.shape[0]
    param = next(model.parameters())
    stacked = torch.zeros((B, len(modalities), *ref.shape[1:]), device=param.device, dtype=param.dtype)
    observed = torch.zeros((B, len(modalities)), dtype=torch.bool, device=param.device)
    for name, img in batch.items():
        j = modalities.index(name)
        stacked[:, j] = img.to(param.device, param.dtype)
        observed[:, j] = True
    if hasattr(model, "encode") and hasattr(model, "decode"):
        encoding = model.encode(stacked, observed)
        outs = (model.decode(encoding, observed, temperature) for _ in range(samples))
    else:
        outs = (model(stacked, observed, temperature=temperature) for _ in range(samples))
    results = []
    for out in outs:
        result = {}
        for t in targets:
            y = out.reconstructions[:, modalities.index(t)]
            result[t] = y[0] if layout == 2 else (y[:, None] if layout == 4 else y)
        results.append(result)
    return results


def default_temperature(model) -> float:
    """The one temperature default: the checkpoint's ``eval.temperature`` (a
    :class:`~mmhvae.trained_model.TrainedModel` from :func:`mmhvae.infer.load_model`), else
    :class:`~mmhvae.config.EvalConfig`'s default."""
    from mmhvae.config import EvalConfig

    config = getattr(model, "config", None)
    return float(config.eval.temperature) if config is not None else float(EvalConfig().temperature)


def check_temperature(temperature: float) -> float:
    """tau must be a finite number >= 0 (0 = posterior mean)."""
    tau = float(temperature)
    if not (tau >= 0 and tau < float("inf")):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = deterministic mean), got {temperature}")
    return tau


@torch.no_grad()
def synthesize_batched(
    model,
    inputs: Mapping[str, "np.ndarray"],
    temperature: Optional[float] = None,
    batch_size: int = 16,
    targets: Optional[Sequence[str]] = None,
    samples: int = 1,
    seed: Optional[int] = None,
    progress: bool = False,
) -> dict[str, "np.ndarray"]:
    """Slices ``{modality: (N, H, W)}`` -> ``{target: (K, N, H, W)}`` synthesized, in batches.

    The one batched-synthesis loop of inference and evaluation; ``model`` is a
    :class:`~mmhvae.trained_model.TrainedModel` or a bare generator. ``samples`` K draws per slice at
    ``temperature`` (default :func:`default_temperature`). With ``seed``, noise comes from a forked
    RNG seeded with it, so the global random state is left untouched and results are reproducible.
    The K samples of a batch share one encoding (:func:`synthesize_samples`).
    """
    import numpy as np

    tau = check_temperature(default_temperature(model) if temperature is None else temperature)
    if samples < 1 or batch_size < 1:
        raise ValueError(f"samples and batch_size must be >= 1, got {samples} and {batch_size}")
    model = getattr(model, "network", model)  # a TrainedModel's generator, or the generator itself
    targets = list(targets or model.cfg.modalities)
    first = next(iter(inputs.values()))
    n = first.shape[0]
    out = {t: np.zeros((samples, n, *first.shape[1:]), dtype=np.float32) for t in targets}
    device = next(model.parameters()).device
    model.eval()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        starts = range(0, n, batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="synthesize", unit="batch")
        for start in starts:
            batch = {m: torch.from_numpy(np.ascontiguousarray(v[start : start + batch_size], dtype=np.float32)).to(device)
                     for m, v in inputs.items()}
            for k, res in enumerate(synthesize_samples(model, batch, tau, targets, samples)):  # one encoding
                for t in targets:
                    out[t][k, start : start + batch_size] = res[t].float().cpu().numpy()
    return out


class Generator(nn.Module):
    """What every generator shares: ``cfg`` (its :class:`~mmhvae.config.ModelConfig`), the modality
    names, and named-modality synthesis. Subclasses implement ``forward(images (B, M, H, W),
    observed (B, M), temperature, available)``."""

    cfg: ModelConfig

    @property
    def modalities(self) -> list[str]:
        return list(self.cfg.modalities)

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
            temperature: tau (paper: 0.5); 0 gives the deterministic output; None = the default of
                :func:`default_temperature` (a trained model's ``eval.temperature``).
        Returns:
            modality name -> tensor of the same layout as the inputs.
        """
        return synthesize_named(self, images, temperature, targets)



class ImputingGenerator(Generator):
    """A deterministic generator on zero-imputed inputs (MM-GAN, ResViT): subclasses implement
    ``translate(x (B, M, H, W)) -> (reconstructions (B, M, H, W), bottleneck features)``."""

    def translate(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(
        self,
        images: Tensor,
        observed: Tensor,
        temperature: float = 1.0,
        available: Optional[Tensor] = None,
    ) -> MMHVAEOutput:
        """Zero-impute the unobserved slots and synthesize every modality.

        Args:
            images: ``(B, M, H, W)``; slots of unobserved modalities are ignored.
            observed: r' ``(B, M)`` bool.
            temperature: unused (deterministic generator), kept for the protocol.
            available: r ``(B, M)`` bool, only checked.
        Returns:
            reconstructions ``(B, M, H, W)``, ``kl=[]``, ``latents=[bottleneck features (B, C, h, h)]``.
        """
        check_forward_inputs(self.cfg, images, observed, available)
        reconstructions, features = self.translate(zero_impute(images, observed))
        return MMHVAEOutput(reconstructions, [], [features])

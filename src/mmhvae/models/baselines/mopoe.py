"""MoPoE-VAE (Sutter, Daunhawer & Vogt, "Generalized multimodal ELBO", ICLR 2021) on our network.

The joint posterior given the inputs X_S is the *mixture*, over the non-empty subsets s of S, of the
product of experts of each subset (their eq. 6-8, uniform weights):

    q(z | X_S) = 1/|P(S)| * sum_{s in P(S)} PoE(p(z), {q(z | x_j) : j in s})

and its ELBO is E_{q(z|X_S)}[log p(X_S | z)] - KL(q(z|X_S) || p(z)), with the KL of the mixture
replaced by the subset average of the components' KLs (an upper bound by convexity; their eq. 9).
The network is the MMHVAE network with a single latent group (the top vector, L = 1): a ``mopoe``
model differs from an ``mmhvae`` one only by this posterior. In training, each sample draws one
component uniformly (z is a sample of the mixture); evaluated (``model.eval()``), the model uses the
component of every given input, PoE(S), as the authors' conditional generation does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from mmhvae.config import ConfigError, ModelConfig
from mmhvae.models.mmhvae import MMHVAE
from mmhvae.nn.gaussian import DiagonalGaussian, GaussianMoments, product_of_experts
from mmhvae.subsets import all_subsets


@dataclass
class SubsetMixture(GaussianMoments):
    """A uniform mixture of subset PoEs, with one component selected per sample for sampling
    (``mu``, ``logvar``, ``sample``: those of the selected component).

    components: PoE of each subset of all modalities, tensors ``(B, K, D)`` (K = 2^M - 1, in
    :func:`~mmhvae.subsets.all_subsets` order); weights ``(B, K)``: 1/|P(S)| for the subsets of the
    sample's inputs S, 0 elsewhere; selected ``(B,)``: the component ``sample`` draws from.
    """

    components: DiagonalGaussian
    weights: Tensor
    selected: Tensor

    def _pick(self, t: Tensor) -> Tensor:
        return t[torch.arange(t.shape[0], device=t.device), self.selected]

    @property
    def mu(self) -> Tensor:
        return self._pick(self.components.mu)

    @property
    def logvar(self) -> Tensor:
        return self._pick(self.components.logvar)

    def kl(self, other: DiagonalGaussian) -> Tensor:
        """Element-wise ``sum_k w_k KL(q_k || other)`` ``(B, D)``: the subset-averaged KL of MoPoE."""
        p = DiagonalGaussian(other.mu[:, None], other.logvar[:, None])
        return (self.weights[..., None] * self.components.kl(p)).sum(dim=1)


def subset_mixture(
    prior: DiagonalGaussian, experts: DiagonalGaussian, observed: Tensor, sample: bool,
    generator: Optional[torch.Generator] = None,
) -> SubsetMixture:
    """The MoPoE posterior of inputs ``observed`` ``(B, M)`` from per-modality ``experts`` ``(B, M, D)``.

    ``sample``: draw the selected component of each row uniformly among the subsets of its inputs
    (training); otherwise select PoE of all its inputs (evaluation).
    """
    observed = observed.bool()
    B, M = observed.shape
    subsets = torch.tensor(all_subsets(M), dtype=torch.bool, device=observed.device)  # (K, M)
    comps = [product_of_experts(prior, experts, observed & s[None]) for s in subsets]
    components = DiagonalGaussian(torch.stack([c.mu for c in comps], 1), torch.stack([c.logvar for c in comps], 1))
    within = ~(subsets[None] & ~observed[:, None]).any(dim=2)  # (B, K): subset k lies within the inputs
    weights = within.float() / within.sum(dim=1, keepdim=True).clamp_min(1).float()
    if sample:
        selected = torch.multinomial(weights, 1, generator=generator).flatten()
    else:
        selected = (subsets[None] == observed[:, None]).all(dim=2).float().argmax(dim=1)
    return SubsetMixture(components, weights, selected)


class MoPoEVAE(MMHVAE):
    """The MMHVAE network (L = 1) with the MoPoE mixture-of-subset-PoEs posterior (see module doc)."""

    def __init__(self, cfg: ModelConfig):
        if any(c > 0 for c in cfg.latent_channels) or cfg.fusion != "poe":
            raise ConfigError(
                "model.method=mopoe has one latent group (latent_channels all 0) fused by products of experts "
                f"(fusion=poe); got latent_channels={cfg.latent_channels}, fusion={cfg.fusion!r}"
            )
        super().__init__(cfg)

    def _fuse(self, prior: DiagonalGaussian, experts: DiagonalGaussian, mask: Tensor):
        # The only latent level is the top vector, so this is called once per forward pass.
        return subset_mixture(prior, experts, mask, sample=self.training)

"""How the observed modalities make one posterior at every latent level (``model.fusion``).

A :class:`Fusion` is chosen once, when the model is built (:func:`build_fusion`), and used at every
level; the model has no branches on the fusion name. It says three things:

* **encoding**: how many encoders (experts) there are, what each one sees and on which rows
  (:meth:`Fusion.encoder_inputs`), and whether an expert's features depend on the subset r' at all
  (:attr:`Fusion.shares_encoding`): per-modality encoders see their own image only, so the features
  of one encoding serve every draw of r' that is within it;
* **combination** of the prior and the observed experts into q (:meth:`Fusion.combine`), from the
  observed experts only, ``[(rows, h_j)]``: nothing is materialized for unobserved ones;
* **sampling** z from q and its KL to the prior (:meth:`Fusion.sample`).

``poe`` is the paper's exact product of experts (eq. 13-14); ``average`` the deterministic HeMIS-style
ablation (z = mean of the observed experts' means, no KL); ``concat`` the MM-GAN-like ablation: one
encoder on the zero-imputed stack of all inputs, fused with the prior by the product.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from mmhvae.nn.gaussian import DiagonalGaussian, average_of_observed_experts, product_of_observed_experts

Experts = Sequence[tuple[Optional[Tensor], DiagonalGaussian]]


class Fusion:
    """Product of experts, one expert per modality (the paper's fusion)."""

    name = "poe"
    shares_encoding = True

    def num_experts(self, num_modalities: int) -> int:
        return num_modalities

    def encoder_channels(self, num_modalities: int) -> int:
        """Input channels of each expert's encoder."""
        return 1

    def expert_mask(self, observed: Tensor) -> Tensor:
        """``(B, M)`` r' -> ``(B, E)``: which experts each row observes."""
        return observed

    def encoder_inputs(self, images: Tensor, observed: Tensor) -> list[Optional[tuple[Tensor, Tensor]]]:
        """Per expert ``(rows, input)`` for the rows that observe it, or ``None`` when no row does."""
        out = []
        for j in range(images.shape[1]):
            rows = observed[:, j].nonzero(as_tuple=True)[0]
            out.append(None if rows.numel() == 0 else (rows, images[rows, j : j + 1]))
        return out

    def combine(self, prior: DiagonalGaussian, experts: Experts) -> DiagonalGaussian:
        return product_of_observed_experts(prior, experts)

    def sample(
        self, q: DiagonalGaussian, prior: DiagonalGaussian, temperature: float, noise: Optional[Tensor] = None
    ) -> tuple[Tensor, Tensor]:
        """z ~ q at ``temperature`` and the ``(B,)`` analytic KL(q || prior) summed over the level."""
        return q.sample(temperature, noise), q.kl(prior).flatten(1).sum(dim=1)


class ProductOfExperts(Fusion):
    pass


class AverageOfExperts(Fusion):
    """HeMIS-style ablation: z_l is the mean of the observed experts' means (deterministic, no KL)."""

    name = "average"

    def combine(self, prior: DiagonalGaussian, experts: Experts) -> DiagonalGaussian:
        return average_of_observed_experts(prior, experts)

    def sample(self, q, prior, temperature, noise=None):
        return q.mu, torch.zeros(q.mu.shape[0], device=q.mu.device)


class Concatenation(Fusion):
    """MM-GAN-like ablation: one encoder sees every input stacked, unobserved ones set to 0."""

    name = "concat"
    shares_encoding = False  # the zero-imputed stack, hence every feature, depends on r'

    def num_experts(self, num_modalities: int) -> int:
        return 1

    def encoder_channels(self, num_modalities: int) -> int:
        return num_modalities

    def expert_mask(self, observed: Tensor) -> Tensor:
        return observed.any(dim=1, keepdim=True)

    def encoder_inputs(self, images, observed):
        rows = observed.any(dim=1).nonzero(as_tuple=True)[0]
        if rows.numel() == 0:
            return [None]
        keep = observed[rows][:, :, None, None]
        return [(rows, torch.where(keep, images[rows], images.new_zeros(())))]


FUSIONS = {"poe": ProductOfExperts, "average": AverageOfExperts, "concat": Concatenation}


def build_fusion(name: str) -> Fusion:
    """The strategy named by ``model.fusion``."""
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; choose one of {', '.join(FUSIONS)}")
    return FUSIONS[name]()

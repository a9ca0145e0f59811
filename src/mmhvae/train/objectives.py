"""Training objectives: which ELBO terms make up one training step (``train.objective``).

An objective turns a batch's availability r ``(B, M)`` into :class:`Term` s. Each term is one forward
pass: the rows it uses, what their encoders see (r') and which modalities its loss scores, with a
weight. The trainer runs the terms, adds ``lambda_KL`` times the model's KL (and the GAN term when on)
and back-propagates ``weight x loss`` per term; how a method's ELBO differs is said here, not in the
trainer.

* ``mixture`` (:class:`MixtureDraws`): Algorithm 1 of the paper (MMHVAE, MHVAE, the ablations, MM-GAN
  and ResViT): ``train.draws`` subsets r' drawn from ``train.subset_policy``, every available
  modality scored (eq. 9), the draws averaged.
* ``mvae`` (:class:`SubsampledELBO`): Wu & Goodman 2018, §3.2: the sum of the ELBO of the joint
  (every available input), of each single modality, and of ``train.mvae_random_subsets`` random
  subsets of 2 .. M-1 modalities (drawn without replacement per step). Each ELBO reconstructs the
  modalities it encodes only; a sample that has none of a subset's modalities is left out of that
  term (as in the reference implementation).
* ``mopoe`` (:class:`MixtureOfSubsetsELBO`): Sutter et al. 2021: one term per draw that gives the model
  every available input; the model (:class:`~mmhvae.models.baselines.mopoe.MoPoEVAE`) samples z from
  its mixture-of-PoE posterior and returns the mixture's KL; every available modality is scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch
from torch import Tensor

from mmhvae.config import TrainConfig
from mmhvae.subsets import SubsetPolicy


@dataclass
class Term:
    """One forward pass of a training step.

    rows: indices of the batch rows it uses (``None`` = all); observed r' and scored are ``(b, M)``
    bool masks over those rows: what the encoders see, and which modalities the loss scores.
    """

    observed: Tensor
    scored: Tensor
    weight: float
    rows: Optional[Tensor] = None
    name: str = ""


class Objective(Protocol):
    def terms(self, available: Tensor, generator: torch.Generator) -> list[Term]:
        """The terms of one step for availability r ``(B, M)`` (on CPU)."""
        ...


class MixtureDraws:
    """Algorithm 1: ``draws`` subsets r' from the subset policy, each scoring every available modality."""

    def __init__(self, policy: SubsetPolicy, draws: int):
        self.policy, self.draws = policy, max(1, int(draws))

    def terms(self, available: Tensor, generator: torch.Generator) -> list[Term]:
        return [
            Term(self.policy.sample_masks(available, generator), available, 1.0 / self.draws, name=f"draw{t}")
            for t in range(self.draws)
        ]


class SubsampledELBO:
    """MVAE's sub-sampled training: joint + every single modality + ``k`` random subsets, summed."""

    def __init__(self, num_modalities: int, k: int = 1):
        self.M, self.k = num_modalities, int(k)
        from mmhvae.subsets import all_subsets

        self.middle = [torch.tensor(s) for s in all_subsets(num_modalities) if 1 < sum(s) < num_modalities]

    def subsets(self, generator: torch.Generator) -> list[Tensor]:
        """The subsets of this step: the full set, each single modality, then ``k`` random ones."""
        out = [torch.ones(self.M, dtype=torch.bool)]
        out += [torch.eye(self.M, dtype=torch.bool)[j] for j in range(self.M)]
        k = min(self.k, len(self.middle))
        if k > 0:
            pick = torch.randperm(len(self.middle), generator=generator)[:k]
            out += [self.middle[i] for i in pick.tolist()]
        return out

    def terms(self, available: Tensor, generator: torch.Generator) -> list[Term]:
        terms = []
        for subset in self.subsets(generator):
            observed = available.bool() & subset[None]
            rows = observed.any(dim=1).nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            name = "joint" if bool(subset.all()) else "+".join(str(j) for j in subset.nonzero().flatten().tolist())
            # The subset's ELBO reconstructs what it encodes: scored = observed.
            terms.append(Term(observed[rows], observed[rows], 1.0, rows if rows.numel() < len(available) else None, name))
        return terms


class MixtureOfSubsetsELBO:
    """MoPoE: the model sees every available input and samples its own mixture component."""

    def __init__(self, draws: int):
        self.draws = max(1, int(draws))

    def terms(self, available: Tensor, generator: torch.Generator) -> list[Term]:
        return [Term(available.bool(), available.bool(), 1.0 / self.draws, name=f"draw{t}") for t in range(self.draws)]


def build_objective(tc: TrainConfig, policy: SubsetPolicy, num_modalities: int) -> Objective:
    """The objective named by ``tc.objective``."""
    if tc.objective == "mixture":
        return MixtureDraws(policy, tc.draws)
    if tc.objective == "mvae":
        return SubsampledELBO(num_modalities, tc.mvae_random_subsets)
    if tc.objective == "mopoe":
        return MixtureOfSubsetsELBO(tc.draws)
    raise ValueError(f"unknown train.objective {tc.objective!r}; choose mixture, mvae or mopoe")

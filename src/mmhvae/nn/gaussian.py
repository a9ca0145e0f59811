"""Diagonal Gaussians, the product of experts, KL and temperature sampling (paper eq. 11-14).

Everything here is computed in float32, also under autocast: precisions of several experts are
summed, and bfloat16's 8-bit mantissa would make the product visibly wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

LOG_2PI = 1.8378770664093453


def soft_clamp(x: Tensor, bound: float) -> Tensor:
    """Smoothly limit ``x`` to (-bound, bound): ``bound * tanh(x / bound)`` (NVAE)."""
    return bound * torch.tanh(x / bound)


class GaussianMoments:
    """What a diagonal Gaussian computes from its ``mu`` and ``logvar`` (given by the subclass)."""

    mu: Tensor
    logvar: Tensor

    @property
    def var(self) -> Tensor:
        return torch.exp(self.logvar)

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, temperature: float = 1.0, noise: Optional[Tensor] = None) -> Tensor:
        """Reparameterized sample ``mu + tau * sigma * eps``; ``tau = 0`` returns the mean exactly."""
        if temperature == 0.0:
            return self.mu
        if noise is None:
            noise = torch.randn_like(self.mu)
        return self.mu + temperature * self.std * noise


@dataclass
class DiagonalGaussian(GaussianMoments):
    """N(mu, exp(logvar)) with independent elements; ``mu`` and ``logvar`` share any shape."""

    mu: Tensor
    logvar: Tensor

    @classmethod
    def from_params(cls, params: Tensor, logvar_bound: float, mean_bound: float, dim: int = 1):
        """Split a network output ``(B, 2C, ...)`` into a clamped Gaussian ``(B, C, ...)`` in float32."""
        mu, logvar = params.float().chunk(2, dim=dim)
        return cls(soft_clamp(mu, mean_bound), soft_clamp(logvar, logvar_bound))

    @classmethod
    def standard(cls, like: Tensor) -> "DiagonalGaussian":
        zeros = torch.zeros_like(like, dtype=torch.float32)
        return cls(zeros, zeros.clone())

    def log_prob(self, z: Tensor) -> Tensor:
        """Element-wise log-density."""
        z = z.float()
        return -0.5 * (LOG_2PI + self.logvar + (z - self.mu) ** 2 * torch.exp(-self.logvar))

    def kl(self, other: "DiagonalGaussian") -> Tensor:
        """Element-wise analytic KL(self || other)."""
        return 0.5 * (
            other.logvar
            - self.logvar
            + (self.var + (self.mu - other.mu) ** 2) * torch.exp(-other.logvar)
            - 1.0
        )


def product_of_experts(
    prior: DiagonalGaussian, experts: DiagonalGaussian, observed: Tensor
) -> DiagonalGaussian:
    """Exact product of the prior and the observed residual experts, in precision form (eq. 13-14).

    Args:
        prior: conditional prior p(z_l | z_>l), tensors ``(B, *S)``.
        experts: residual experts h_j, tensors ``(B, M, *S)``.
        observed: input mask r' ``(B, M)`` (bool); an unobserved expert contributes nothing,
            whatever values (even NaN or Inf) its slot holds, and receives zero gradient.

    Returns:
        q(z_l | x_r', z_>l) with  lambda = 1/s_p^2 + sum_j r'_j / s_j^2,
        mu = (mu_p / s_p^2 + sum_j r'_j mu_j / s_j^2) / lambda,  s^2 = 1 / lambda.
        (Paper eq. 14 prints D^-1 before the mean; the correct factor is D = 1/lambda.)
    """
    if observed.dim() != 2 or observed.shape[:2] != experts.mu.shape[:2]:
        raise ValueError(
            f"observed mask must be (B, M)={tuple(experts.mu.shape[:2])}, got {tuple(observed.shape)}"
        )
    mask = observed.bool().reshape(*observed.shape, *([1] * (experts.mu.dim() - 2)))
    # Select before any arithmetic so that garbage in absent slots cannot leak into values or grads.
    mu_j = torch.where(mask, experts.mu.float(), torch.zeros((), device=mask.device))
    logvar_j = torch.where(mask, experts.logvar.float(), torch.zeros((), device=mask.device))
    prec_j = torch.where(mask, torch.exp(-logvar_j), torch.zeros((), device=mask.device))
    prec_p = torch.exp(-prior.logvar.float())
    precision = prec_p + prec_j.sum(dim=1)
    weighted = prior.mu.float() * prec_p + (mu_j * prec_j).sum(dim=1)
    mu = weighted / precision
    return DiagonalGaussian(mu, -torch.log(precision))


def average_of_experts(experts: DiagonalGaussian, observed: Tensor) -> DiagonalGaussian:
    """HeMIS-style fusion ablation: the arithmetic mean of the observed experts' parameters."""
    mask = observed.bool().reshape(*observed.shape, *([1] * (experts.mu.dim() - 2)))
    count = mask.sum(dim=1).clamp_min(1).float()
    mu = torch.where(mask, experts.mu.float(), torch.zeros((), device=mask.device)).sum(1) / count
    logvar = torch.where(mask, experts.logvar.float(), torch.zeros((), device=mask.device)).sum(1) / count
    return DiagonalGaussian(mu, logvar)


def product_of_observed_experts(
    prior: DiagonalGaussian, experts: Sequence[tuple[Optional[Tensor], DiagonalGaussian]]
) -> DiagonalGaussian:
    """:func:`product_of_experts` from the observed experts only, without zero-filled slots.

    Args:
        prior: p(z_l | z_>l), tensors ``(B, *S)``.
        experts: per expert, ``(rows, h_j)``: the rows of the batch that observe it (``None`` = all)
            and its Gaussian on those rows, ``(len(rows), *S)``. Precisions and precision-weighted
            means are accumulated into the prior's, so memory and work scale with the observed
            experts, not with M.
    Returns:
        q with lambda = 1/s_p^2 + sum_j 1/s_j^2 and mu = (mu_p/s_p^2 + sum_j mu_j/s_j^2) / lambda.
    """
    prec_p = torch.exp(-prior.logvar.float())
    precision = weighted = None  # the experts' sums first, then the prior's (the order of the dense form)
    for rows, e in experts:
        prec_j = torch.exp(-e.logvar.float())
        term = e.mu.float() * prec_j
        if rows is not None:  # add into the rows that observe expert j
            if precision is None:
                precision, weighted = torch.zeros_like(prec_p), torch.zeros_like(prec_p)
            precision, weighted = precision.index_add(0, rows, prec_j), weighted.index_add(0, rows, term)
        elif precision is None:
            precision, weighted = prec_j, term
        else:
            precision, weighted = precision + prec_j, weighted + term
    if precision is None:
        return DiagonalGaussian(prior.mu.float(), -torch.log(prec_p))
    precision = prec_p + precision
    return DiagonalGaussian((prior.mu.float() * prec_p + weighted) / precision, -torch.log(precision))


def average_of_observed_experts(
    prior: DiagonalGaussian, experts: Sequence[tuple[Optional[Tensor], DiagonalGaussian]]
) -> DiagonalGaussian:
    """:func:`average_of_experts` from the observed experts only; a row with none keeps the prior."""
    mu = torch.zeros_like(prior.mu, dtype=torch.float32)
    logvar = torch.zeros_like(mu)
    count = torch.zeros(mu.shape[0], device=mu.device)
    for rows, e in experts:
        if rows is None:
            mu, logvar, count = mu + e.mu.float(), logvar + e.logvar.float(), count + 1
        else:
            mu, logvar = mu.index_add(0, rows, e.mu.float()), logvar.index_add(0, rows, e.logvar.float())
            count = count.index_add(0, rows, torch.ones(rows.shape[0], device=mu.device))
    shape = (-1,) + (1,) * (mu.dim() - 1)
    empty = (count == 0).reshape(shape)
    denom = count.clamp_min(1).reshape(shape)
    return DiagonalGaussian(
        torch.where(empty, prior.mu.float(), mu / denom), torch.where(empty, prior.logvar.float(), logvar / denom)
    )

"""The Gaussian algebra of DESIGN §1 against closed forms and numerical references."""

import math

import pytest
import torch

from mmhvae.nn.gaussian import DiagonalGaussian, product_of_experts, soft_clamp


def _g(mu, sd):
    mu = torch.tensor(mu, dtype=torch.float32)
    sd = torch.tensor(sd, dtype=torch.float32)
    return DiagonalGaussian(mu, 2 * torch.log(sd))


def test_soft_clamp_bounds_and_identity_near_zero():
    x = torch.linspace(-100, 100, 101)
    y = soft_clamp(x, 5.0)
    assert y.abs().max() <= 5.0  # tanh saturates to exactly 1 in float32
    assert torch.allclose(soft_clamp(torch.tensor([0.01]), 5.0), torch.tensor([0.01]), atol=1e-6)


def test_poe_matches_numerical_product_of_densities_on_a_grid():
    prior = _g([0.3], [0.5])
    experts = DiagonalGaussian(
        torch.tensor([[[1.0], [-0.5], [7.0]]]), 2 * torch.log(torch.tensor([[[0.8], [1.2], [0.1]]]))
    )
    observed = torch.tensor([[True, True, False]])  # the third (sharp, far) expert must not count
    q = product_of_experts(DiagonalGaussian(prior.mu[None], prior.logvar[None]), experts, observed)

    grid = torch.linspace(-6, 6, 200001, dtype=torch.float64)
    logp = _g([0.3], [0.5]).log_prob(grid.float()).double()
    for j in range(2):
        e = DiagonalGaussian(experts.mu[0, j], experts.logvar[0, j])
        logp = logp + e.log_prob(grid.float()).double()
    w = torch.softmax(logp, dim=0)
    mean = (w * grid).sum()
    var = (w * (grid - mean) ** 2).sum()
    assert q.mu.item() == pytest.approx(mean.item(), abs=1e-4)
    assert q.var.item() == pytest.approx(var.item(), rel=1e-3)


def test_poe_one_expert_is_prior_times_expert_closed_form():
    mp, sp, me, se = 0.7, 1.3, -1.1, 0.6
    q = product_of_experts(
        DiagonalGaussian(torch.tensor([[mp]]), torch.tensor([[2 * math.log(sp)]])),
        DiagonalGaussian(torch.tensor([[[me]]]), torch.tensor([[[2 * math.log(se)]]])),
        torch.tensor([[True]]),
    )
    var = 1 / (1 / sp**2 + 1 / se**2)
    mean = var * (mp / sp**2 + me / se**2)
    assert q.mu.item() == pytest.approx(mean, rel=1e-5)
    assert q.var.item() == pytest.approx(var, rel=1e-5)


def test_poe_without_experts_is_the_prior():
    prior = DiagonalGaussian(torch.randn(2, 3), torch.randn(2, 3))
    experts = DiagonalGaussian(torch.randn(2, 4, 3), torch.randn(2, 4, 3))
    q = product_of_experts(prior, experts, torch.zeros(2, 4, dtype=torch.bool))
    assert torch.allclose(q.mu, prior.mu, atol=1e-6)
    assert torch.allclose(q.logvar, prior.logvar, atol=1e-5)


def test_poe_is_permutation_invariant():
    g = torch.Generator().manual_seed(0)
    prior = DiagonalGaussian(torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g))
    experts = DiagonalGaussian(torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g))
    observed = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    perm = torch.tensor([2, 0, 3, 1])
    a = product_of_experts(prior, experts, observed)
    b = product_of_experts(prior, DiagonalGaussian(experts.mu[:, perm], experts.logvar[:, perm]), observed[:, perm])
    assert torch.allclose(a.mu, b.mu, atol=1e-6) and torch.allclose(a.logvar, b.logvar, atol=1e-6)


def test_masked_expert_has_no_influence_even_with_nan_and_gets_zero_gradient():
    prior = DiagonalGaussian(torch.zeros(1, 2), torch.zeros(1, 2))
    mu = torch.tensor([[[1.0, 2.0], [float("nan"), float("inf")]]], requires_grad=True)
    logvar = torch.tensor([[[0.1, -0.2], [float("-inf"), float("nan")]]], requires_grad=True)
    observed = torch.tensor([[True, False]])
    q = product_of_experts(prior, DiagonalGaussian(mu, logvar), observed)
    ref = product_of_experts(
        prior, DiagonalGaussian(mu[:, :1].detach(), logvar[:, :1].detach()), observed[:, :1]
    )
    assert torch.isfinite(q.mu).all() and torch.isfinite(q.logvar).all()
    assert torch.allclose(q.mu, ref.mu) and torch.allclose(q.logvar, ref.logvar)
    (q.mu.sum() + q.logvar.sum()).backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(logvar.grad).all()
    assert (mu.grad[0, 1] == 0).all() and (logvar.grad[0, 1] == 0).all()
    assert (mu.grad[0, 0] != 0).all()


def test_analytic_kl_matches_monte_carlo():
    torch.manual_seed(0)
    q = _g([0.5, -1.0, 2.0], [0.7, 1.5, 0.3])
    p = _g([0.0, 0.5, 1.5], [1.0, 0.8, 0.6])
    z = q.mu + q.std * torch.randn(400_000, 3)
    mc = (q.log_prob(z) - p.log_prob(z)).mean(0)
    assert torch.allclose(q.kl(p), mc, atol=0.02)
    assert torch.allclose(q.kl(q), torch.zeros(3), atol=1e-6)


def test_temperature_zero_is_the_mean_and_temperature_scales_the_spread():
    q = _g([1.0, -2.0], [0.5, 2.0])
    assert torch.equal(q.sample(0.0), q.mu)
    torch.manual_seed(1)
    s = torch.stack([q.sample(0.5) for _ in range(20000)])
    assert torch.allclose(s.std(0), 0.5 * q.std, rtol=0.03)


def test_poe_is_float32_under_bfloat16_inputs():
    prior = DiagonalGaussian(torch.zeros(1, 3, dtype=torch.bfloat16), torch.zeros(1, 3, dtype=torch.bfloat16))
    experts = DiagonalGaussian(torch.ones(1, 2, 3, dtype=torch.bfloat16), torch.zeros(1, 2, 3, dtype=torch.bfloat16))
    q = product_of_experts(prior, experts, torch.ones(1, 2, dtype=torch.bool))
    assert q.mu.dtype == torch.float32
    assert torch.allclose(q.mu, torch.full((1, 3), 2 / 3))

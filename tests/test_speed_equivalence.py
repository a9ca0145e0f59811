"""Doing each piece of work once (issue 14) does not change the maths.

* the T draws of a training step share one encoding and one batched decoder pass: same losses and
  gradients as encoding per draw (with the same noise);
* K-sample synthesis encodes once and decodes K times: equal to K separate calls with the same RNG;
* the product of experts accumulated from the observed experts equals the dense, masked one.
"""

import dataclasses

import numpy as np
import pytest
import torch

from mmhvae.config import preset
from mmhvae.models.mmhvae import MMHVAE
from mmhvae.models.protocol import synthesize_batched
from mmhvae.nn.gaussian import (
    DiagonalGaussian,
    average_of_experts,
    average_of_observed_experts,
    product_of_experts,
    product_of_observed_experts,
)
from mmhvae.train.losses import kl_per_pixel, reconstruction_loss


def _model(fusion="poe", seed=0):
    cfg = dataclasses.replace(preset("tiny").model, fusion=fusion)
    torch.manual_seed(seed)
    model = MMHVAE(cfg)
    # Non-trivial experts and priors (the initialization starts them near N(0, 1)).
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _draws(B, M, seed=1):
    g = torch.Generator().manual_seed(seed)
    available = torch.ones(B, M, dtype=torch.bool)
    available[0, 2] = False
    draws = []
    for _ in range(3):
        d = (torch.rand(B, M, generator=g) < 0.5) & available
        d[:, 0] |= ~d.any(dim=1)  # never empty (modality 0 is always available)
        draws.append(d)
    return available, draws


def _noise(model, x, observed, seed):
    """Standard-normal noise shaped like each level's latent (finest first)."""
    with torch.no_grad():
        shapes = [z.shape for z in model(x, observed, 0.0).latents]
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) for s in shapes]


def _loss(out, targets, available):
    H, W = targets.shape[-2:]
    return reconstruction_loss(out.reconstructions, targets, available) + 1e-2 * kl_per_pixel(out.kl_total, H, W)


@pytest.mark.parametrize("fusion", ["poe", "average", "concat"])
def test_shared_encoding_training_step_equals_encoding_per_draw(fusion):
    model = _model(fusion)
    cfg = model.cfg
    B, M = 4, cfg.num_modalities
    x = torch.rand(B, M, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(2))
    x[0, 2] = float("nan")  # not available: must never be read
    available, draws = _draws(B, M)
    rows = [None, None, torch.tensor([1, 3])]  # a term over some rows only (as MVAE's subsets are)
    draws[2] = draws[2][rows[2]]
    noises = [_noise(model, x if r is None else x[r], d, 10 + t) for t, (d, r) in enumerate(zip(draws, rows))]

    # Reference: one forward (its own encoding) and one backward per draw, as the trainer did before.
    model.zero_grad()
    ref_losses = []
    for d, r, n in zip(draws, rows, noises):
        xi, ai = (x, available) if r is None else (x[r], available[r])
        loss = _loss(model(xi, d, 1.0, ai, noise=n), torch.nan_to_num(xi), ai) / 3
        loss.backward()
        ref_losses.append(loss.detach())
    ref_grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    # Shared: one forward for the three draws, one backward.
    model.zero_grad()
    outs = model(x, draws, 1.0, available, rows=rows, noise=noises)
    losses = [
        _loss(o, torch.nan_to_num(x if r is None else x[r]), available if r is None else available[r]) / 3
        for o, r in zip(outs, rows)
    ]
    sum(losses).backward()
    for a, b in zip(losses, ref_losses):
        assert torch.allclose(a.detach(), b, rtol=1e-5, atol=1e-6)
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == ref_grads.keys()
    for k, g in grads.items():
        assert torch.allclose(g, ref_grads[k], rtol=1e-4, atol=1e-6), k
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_shared_encoding_runs_each_encoder_once_for_all_draws():
    model = _model("poe")
    cfg = model.cfg
    B, M = 4, cfg.num_modalities
    x = torch.rand(B, M, cfg.image_size, cfg.image_size)
    available, draws = _draws(B, M)
    calls = [0] * M
    for j, enc in enumerate(model.encoders):
        enc.register_forward_hook(lambda *_, j=j: calls.__setitem__(j, calls[j] + 1))
    model(x, draws, 1.0, available)
    used = torch.stack(draws).any(0).any(0)
    assert calls == [int(u) for u in used.tolist()]


def test_observed_must_lie_within_the_encoding():
    model = _model("poe")
    cfg = model.cfg
    x = torch.rand(2, cfg.num_modalities, cfg.image_size, cfg.image_size)
    enc = model.encode(x, torch.tensor([[1, 0, 0], [1, 1, 0]], dtype=torch.bool))
    model.decode(enc, torch.tensor([[1, 0, 0], [0, 1, 0]], dtype=torch.bool), 0.5)  # within: fine
    with pytest.raises(ValueError, match="within"):
        model.decode(enc, torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool), 0.5)


@pytest.mark.parametrize("fusion", ["poe", "concat"])
def test_k_sample_synthesis_equals_k_separate_calls(fusion):
    model = _model(fusion).eval()
    cfg = model.cfg
    g = np.random.default_rng(0)
    inputs = {m: g.random((5, cfg.image_size, cfg.image_size), dtype=np.float32) for m in cfg.modalities[:2]}
    out = synthesize_batched(model, inputs, temperature=0.7, batch_size=3, samples=3, seed=4)
    torch.manual_seed(4)
    for start in (0, 3):  # batch-major, then sample, as the loop draws the noise
        batch = {m: torch.from_numpy(v[start : start + 3]) for m, v in inputs.items()}
        n = next(iter(batch.values())).shape[0]
        x = torch.zeros(n, cfg.num_modalities, cfg.image_size, cfg.image_size)
        observed = torch.zeros(n, cfg.num_modalities, dtype=torch.bool)
        for j, m in enumerate(cfg.modalities[:2]):
            x[:, j], observed[:, j] = batch[m], True
        for k in range(3):
            with torch.no_grad():
                ref = model(x, observed, 0.7).reconstructions  # a whole forward: encode + decode
            for j, t in enumerate(cfg.modalities):
                assert np.array_equal(out[t][k, start : start + n], ref[:, j].numpy())
    assert not np.array_equal(out[cfg.modalities[2]][0], out[cfg.modalities[2]][1])  # K different draws


def _experts(B=5, M=4, C=3):
    g = torch.Generator().manual_seed(3)
    prior = DiagonalGaussian(torch.randn(B, C, 2, 2, generator=g), torch.randn(B, C, 2, 2, generator=g))
    experts = DiagonalGaussian(torch.randn(B, M, C, 2, 2, generator=g), torch.randn(B, M, C, 2, 2, generator=g))
    observed = torch.rand(B, M, generator=g) < 0.5
    observed[0] = False  # a row with nothing observed
    observed[:, 1] = True  # an expert every row observes
    return prior, experts, observed


def _observed_list(experts, observed):
    out = []
    for j in range(observed.shape[1]):
        rows = observed[:, j].nonzero(as_tuple=True)[0]
        if rows.numel():
            out.append((None if rows.numel() == observed.shape[0] else rows,
                        DiagonalGaussian(experts.mu[rows, j], experts.logvar[rows, j])))
    return out


@pytest.mark.parametrize("dense,sparse", [(product_of_experts, product_of_observed_experts),
                                          (average_of_experts, average_of_observed_experts)])
def test_accumulated_fusion_equals_the_dense_masked_one(dense, sparse):
    prior, experts, observed = _experts()
    experts.mu.requires_grad_(True)
    q = sparse(prior, _observed_list(experts, observed))
    if dense is average_of_experts:
        ref = dense(experts, observed)
        empty = ~observed.any(1)
        assert torch.allclose(q.mu[empty], prior.mu[empty])  # nothing observed: the prior
        assert torch.allclose(q.mu[~empty], ref.mu[~empty], atol=1e-6)
        assert torch.allclose(q.logvar[~empty], ref.logvar[~empty], atol=1e-6)
    else:
        ref = dense(prior, experts, observed)
        assert torch.allclose(q.mu, ref.mu, atol=1e-6) and torch.allclose(q.logvar, ref.logvar, atol=1e-6)
    (g,) = torch.autograd.grad(q.mu.sum(), experts.mu)
    assert (g[~observed] == 0).all() and (g[observed] != 0).any()


@pytest.mark.parametrize("objective", ["mixture", "mvae"])
def test_trainer_step_with_one_encoding_equals_one_forward_per_term(tmp_path, monkeypatch, objective):
    from mmhvae.train.batches import ArraySliceDataset
    from mmhvae.train.trainer import Trainer

    # Posterior means instead of samples: the two paths draw their noise in different orders.
    monkeypatch.setattr(DiagonalGaussian, "sample", lambda self, temperature=1.0, noise=None: self.mu)
    g = torch.Generator().manual_seed(0)
    available = torch.rand(8, 3, generator=g) < 0.7
    available[:, 0] = True
    data = ArraySliceDataset(torch.rand(8, 3, 32, 32, generator=g), available)
    cfg = preset("tiny")
    cfg.train.steps, cfg.train.draws, cfg.train.batch_size, cfg.train.objective = 4, 3, 4, objective
    cfg.train.use_gan = False
    logs, params = [], []  # params: the step's gradients
    for shared in (False, True):
        trainer = Trainer(cfg, tmp_path / str(shared), data, None, progress=False)
        trainer.model.draws_in_one_forward = shared
        calls = []
        for enc in trainer.model.encoders:
            enc.register_forward_hook(lambda *_: calls.append(1))
        logs.append(trainer.training_step(trainer.batches.batch(0), 0))
        params.append([p.grad.clone() for p in trainer.model.parameters() if p.grad is not None])
        if shared:  # each modality encoded at most once for all the step's terms
            assert len(calls) <= cfg.model.num_modalities
    assert logs[0]["loss"] == pytest.approx(logs[1]["loss"], rel=1e-5)
    assert logs[0]["grad_norm"] == pytest.approx(logs[1]["grad_norm"], rel=1e-4)
    assert len(params[0]) == len(params[1]) > 0
    scale = max(float(a.abs().max()) for a in params[0])  # float32 sums in another order: relative to it
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5 * scale) for a, b in zip(*params))

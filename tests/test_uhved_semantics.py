"""What U-HVED is (Dorent et al. 2019; DESIGN §4), tested as behaviour (issue 12).

Properties, not numbers: at every scale the posterior is N(0, I) x the observed modalities'
Gaussians; the KL compares it with N(0, I) and enters the loss with its weight; the image loss
scores every available modality and no unavailable one; training samples the latents at tau = 1 and
draws r' within r; unobserved encoders get no gradient.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmhvae.models.uhved import UHVED, uhved_preset
from mmhvae.nn.gaussian import DiagonalGaussian
from mmhvae.train.uhved import Case, PatchBatch, UHVEDTrainer, uhved_loss


def tiny_cfg(**train):
    cfg = uhved_preset("uhved-tiny")
    cfg.train.grad_clip = 0.0  # no clipping: gradients are compared exactly
    cfg.train.amp = "fp32"
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg.validate()


def tiny_model(seed: int = 0) -> UHVED:
    torch.manual_seed(seed)
    return UHVED.from_config(tiny_cfg())


def volumes(B: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, 16, 16, 16, generator=g)


def masks(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def batch_of(x: torch.Tensor, available: torch.Tensor, labelled: bool = True) -> PatchBatch:
    g = torch.Generator().manual_seed(3)
    seg = torch.randint(0, 4, (x.shape[0], *x.shape[2:]), generator=g)
    x = torch.where(available[:, :, None, None, None], x, torch.zeros(()))
    return PatchBatch(x, available, seg, torch.full((x.shape[0],), labelled))


def analytic_kl_to_standard(q: DiagonalGaussian) -> torch.Tensor:
    return 0.5 * (-q.logvar + q.logvar.exp() + q.mu**2 - 1.0)


def expected_product(experts: list, observed: torch.Tensor) -> DiagonalGaussian:
    """N(0, I) x prod_{j in r'} expert_j (seed eq. 4), in precision form."""
    ref = next(e for e in experts if e is not None)
    prec = torch.ones_like(ref.mu)
    num = torch.zeros_like(ref.mu)
    for j, e in enumerate(experts):
        if e is None:
            continue
        w = observed[:, j].float().reshape(-1, *([1] * (e.mu.dim() - 1)))
        p = torch.exp(-e.logvar) * w
        prec = prec + p
        num = num + torch.where(w > 0, e.mu, torch.zeros_like(e.mu)) * p
    return DiagonalGaussian(num / prec, -torch.log(prec))


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


def test_posterior_at_every_scale_is_a_standard_prior_times_the_observed_experts():
    model = tiny_model()
    cfg = model.cfg
    obs = masks((1, 0, 0), (0, 1, 1), (1, 1, 1))
    calls = {}
    handles = [
        model.heads[m][s].register_forward_hook(
            lambda mod, args, out, key=(j, s): calls.__setitem__(key, out.detach()))
        for j, m in enumerate(cfg.modalities) for s in range(cfg.num_scales)
    ]
    x = volumes(3)
    with torch.no_grad():
        post = model.posteriors(x, obs)
    for h in handles:
        h.remove()
    for s, q in enumerate(post):
        experts = []
        for j in range(cfg.num_modalities):
            out = calls[(j, s)]
            if out.shape[0] != obs.shape[0]:
                full = out.new_zeros((obs.shape[0], *out.shape[1:]))
                out = full.index_copy(0, obs[:, j].nonzero(as_tuple=True)[0], out)
            experts.append(DiagonalGaussian.from_params(out, cfg.logvar_clamp, cfg.mean_clamp))
        want = expected_product(experts, obs)
        assert torch.allclose(q.mu, want.mu, atol=1e-5) and torch.allclose(q.logvar, want.logvar, atol=1e-5)
    # experts depend on their own modality only: precisions of one-modality posteriors add up (- prior's)
    with torch.no_grad():
        one = [model.posteriors(x[:1], masks(row)) for row in [(1, 0, 0), (0, 1, 0), (0, 0, 1)]]
        both = model.posteriors(x[:1], masks((1, 1, 1)))
    for s in range(cfg.num_scales):
        lam = [torch.exp(-p[s].logvar) for p in one]
        assert torch.allclose(torch.exp(-both[s].logvar), sum(lam) - 2.0, rtol=1e-4, atol=1e-4)
        assert torch.allclose(both[s].mu / both[s].logvar.exp(), sum(p[s].mu * l for p, l in zip(one, lam)),
                              rtol=1e-4, atol=1e-4)


def test_kl_is_the_analytic_kl_of_every_scale_to_the_standard_prior():
    """out.kl: KL(q(z_s | x_r') || N(0, I)), mean over each scale's elements, then over scales."""
    model = tiny_model(1)
    x, obs = volumes(3, seed=1), masks((1, 1, 0), (0, 0, 1), (1, 1, 1))
    with torch.no_grad():
        out = model(x, obs, temperature=1.0)
        post = model.posteriors(x, obs)
    want = torch.stack([analytic_kl_to_standard(q).flatten(1).mean(1) for q in post], 1).mean(1)
    assert out.kl.shape == (3,)
    assert torch.allclose(out.kl, want, rtol=1e-4, atol=1e-6) and (out.kl > 1e-3).all()


def test_uninformative_experts_give_the_prior_and_no_kl():
    model = tiny_model(2)
    with torch.no_grad():
        for heads in model.heads.values():
            for conv in heads:
                conv.weight.zero_()
                C = conv.bias.shape[0] // 2
                conv.bias[:C] = 0.0
                conv.bias[C:] = 1e3  # log-variance at its clamp
        out = model(volumes(2, seed=2), masks((1, 1, 1), (0, 1, 0)), temperature=1.0)
    assert out.kl.abs().max() < 1e-3


def test_temperature_zero_decodes_means_and_positive_temperature_samples():
    model = tiny_model(3)
    x, obs = volumes(2, seed=3), masks((1, 0, 1), (0, 1, 0))
    with torch.no_grad():
        a, b = model(x, obs, temperature=0.0), model(x, obs, temperature=0.0)
        c = model(x, obs, temperature=1.0)
    assert torch.equal(a.images, b.images) and torch.equal(a.seg_logits, b.seg_logits)
    assert not torch.allclose(a.images, c.images)


# --------------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------------


def test_kl_enters_the_loss_with_its_weight_and_reaches_the_encoders():
    cfg = tiny_cfg()
    model = tiny_model(4)
    x, avail = volumes(2, seed=4), masks((1, 1, 0), (1, 1, 1))
    batch = batch_of(x, avail)
    torch.manual_seed(0)
    out = model(batch.images, masks((1, 0, 0), (0, 1, 1)), temperature=1.0)
    with_kl = uhved_loss(out, batch, cfg.train)
    cfg.train.kl_weight = 0.0
    without = uhved_loss(out, batch, cfg.train)
    assert float(with_kl["kl"].detach()) > 1e-3
    assert float((with_kl["loss"] - without["loss"]).detach()) == pytest.approx(0.1 * float(out.kl.detach().mean()), rel=1e-5)
    (g_with,) = torch.autograd.grad(with_kl["loss"], model.heads["t2"][0].weight, retain_graph=True)
    (g_without,) = torch.autograd.grad(without["loss"], model.heads["t2"][0].weight)
    assert not torch.allclose(g_with, g_without)


def test_image_loss_scores_available_modalities_in_and_out_of_the_input_only():
    """With r' = {t2}: cet1 (available, not an input) is scored, flair (unavailable) is not; the
    encoders of cet1 and flair get no gradient; the decoder of flair gets none from the image loss."""
    cfg = tiny_cfg(kl_weight=0.0, dice_weight=0.0, ce_weight=0.0)
    model = tiny_model(5)
    x, avail = volumes(2, seed=5), masks((1, 1, 0), (1, 1, 0))
    obs = masks((1, 0, 0), (1, 0, 0))

    def mse(images):
        torch.manual_seed(0)
        return uhved_loss(model(images, obs, temperature=1.0), batch_of(images, avail), cfg.train)

    base = mse(x)
    y = x.clone()
    y[:, 1] += 0.5
    assert abs(float((mse(y)["mse"] - base["mse"]).detach())) > 1e-3
    b = batch_of(x, avail)
    b.images[:, 2] = 7.0  # an unavailable slot holding anything
    torch.manual_seed(0)
    other = uhved_loss(model(b.images, obs, temperature=1.0), b, cfg.train)
    assert torch.equal(other["mse"].detach(), base["mse"].detach())
    model.zero_grad()
    base["loss"].backward()

    def grad(module):
        return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)

    assert grad(model.encoders["t2"]) > 0
    assert grad(model.encoders["cet1"]) == 0 and grad(model.encoders["flair"]) == 0
    assert grad(model.image_decoders["t2"]) > 0 and grad(model.image_decoders["cet1"]) > 0
    assert grad(model.image_decoders["flair"]) == 0


# --------------------------------------------------------------------------------------------------
# Training step
# --------------------------------------------------------------------------------------------------


def cases(n: int = 2) -> list[Case]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        seg = rng.integers(0, 4, size=(16, 16, 16))
        images = rng.random((3, 16, 16, 16)).astype(np.float32)
        out.append(Case(f"c{i}", images, np.array([True, True, True]), seg, np.ones((16, 16, 16), bool), np.eye(4)))
    return out


class Step:
    """One step of a fresh trainer on a fixed batch, recording r', the posteriors and the latents."""

    def __init__(self, tmp_path, cfg, batch: PatchBatch, noise_seed: int = 0):
        self.trainer = UHVEDTrainer(cfg, cases(), tmp_path)
        model = self.trainer.model
        self.observed, self.posteriors, self.latents = [], [], []

        def pre(module, args, kwargs):
            images = args[0] if args else kwargs["images"]
            observed = args[1] if len(args) > 1 else kwargs["observed"]
            self.observed.append(observed.detach().clone())
            with torch.no_grad():
                self.posteriors.append(module.posteriors(images, observed))

        def skips(module, args):
            self.latents.append([z.detach() for z in args[0]])

        handles = [model.register_forward_pre_hook(pre, with_kwargs=True),
                   model.seg_decoder.register_forward_pre_hook(skips)]
        torch.manual_seed(noise_seed)
        try:
            self.logs = self.trainer.step(0, batch)
        finally:
            for h in handles:
                h.remove()
        self.grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                               for p in model.parameters()])


def test_training_samples_at_temperature_one_and_draws_r_prime_within_r(tmp_path):
    avail = masks((1, 1, 0), (0, 1, 1), (1, 1, 1), (1, 0, 0))
    rec = Step(tmp_path, tiny_cfg(), batch_of(volumes(4, seed=6), avail))
    (obs,) = rec.observed
    assert obs.any(1).all() and not (obs & ~avail).any()
    eps = torch.cat([((z - q.mu) * torch.exp(-0.5 * q.logvar)).flatten() for z, q in zip(rec.latents[0], rec.posteriors[0])])
    assert eps.std().item() == pytest.approx(1.0, rel=0.05) and abs(eps.mean().item()) < 0.05


def test_training_gradient_is_affine_in_the_kl_weight(tmp_path):
    batch = batch_of(volumes(2, seed=7), masks((1, 1, 1), (1, 1, 0)))
    g = [Step(tmp_path / str(w), tiny_cfg(kl_weight=w), batch).grad for w in (0.0, 0.1, 0.2)]
    slope = g[1] - g[0]
    assert slope.norm() > 1e-4 * g[0].norm()
    assert torch.allclose(g[2] - g[0], 2 * slope, rtol=1e-3, atol=1e-3 * float(slope.abs().max()))

"""What the paper's method is, tested as behaviour (issue 12): posteriors, KL, losses, gradients, r'.

These tests do not pin output numbers. Each one states a property of MMHVAE (paper §3, eq. 9-16,
Algorithm 1) and checks it on a tiny model whose priors and experts are spread away from N(0, I)
(at initialization they sit on it, which would hide a prior swapped for N(0, I)):

* the posterior at the top level is N(0, I) x the observed experts; below it, the *conditional*
  prior p(z_l | z_>l) x the observed residual experts h_j,l(z_l | x_j, z_>l) (eq. 12-14);
* the KL of every level compares the posterior with that conditional prior (Algorithm 1, line 12);
* residual experts see both their modality's features and the top-down state z_>l;
* training samples at temperature 1; the loss scores every *available* modality, inputs and
  cross-modal targets alike (eq. 9), averaged over T draws of r' within r; the KL and GAN terms
  enter with their weights and signs; which modules receive gradient.

Forward hooks read the intermediate priors and expert outputs; nothing here depends on how the
model code is laid out beyond its public modules (``priors``, ``experts``, ``top_experts``, ``heads``,
``encoders``).
"""

from __future__ import annotations

import copy

import pytest
import torch

from mmhvae.config import preset
from mmhvae.models.mmhvae import MMHVAE
from mmhvae.nn.gaussian import DiagonalGaussian
from mmhvae.train.batches import ArraySliceDataset
from mmhvae.train.gan import LOSSES, discriminator_loss, generator_loss
from mmhvae.train.losses import reconstruction_loss
from mmhvae.train.trainer import Trainer

US, T2, CET1 = 0, 1, 2  # the tiny preset's modalities, in config order


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def spread(model: MMHVAE, seed: int = 0, bias: float = 0.5) -> MMHVAE:
    """Re-draw the last layer of every prior and expert so that none of them is close to N(0, I)."""
    g = torch.Generator().manual_seed(seed)
    lasts = [m[-1] for m in model.priors.values()]
    lasts += [e[-1] for group in model.experts.values() for e in group]
    lasts += [m[-1] for m in model.top_experts]
    with torch.no_grad():
        for layer in lasts:
            fan_in = layer.weight[0].numel()
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) / fan_in**0.5)
            layer.bias.copy_(bias * torch.randn(layer.bias.shape, generator=g))
    return model


def tiny_model(seed: int = 0) -> MMHVAE:
    torch.manual_seed(seed)
    return spread(MMHVAE(preset("tiny").model), seed).eval()


def images(B: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, 32, 32, generator=g)


def masks(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def level_index(model: MMHVAE, key: str) -> int:
    """Position of spatial stage ``key`` in the outputs' finest-first list of levels."""
    return sorted(int(k) for k in model.priors).index(int(key))


def gaussian(params: torch.Tensor, cfg) -> DiagonalGaussian:
    return DiagonalGaussian.from_params(params, cfg.logvar_clamp, cfg.mean_clamp)


def expected_product(prior: DiagonalGaussian, experts: list, observed: torch.Tensor) -> DiagonalGaussian:
    """prior x prod_{j in r'} expert_j, written out in precision form (eq. 13-14)."""
    prec = torch.exp(-prior.logvar)
    num = prior.mu * prec
    for j, e in enumerate(experts):
        if e is None:
            continue
        w = observed[:, j].float().reshape(-1, *([1] * (e.mu.dim() - 1)))
        p = torch.exp(-e.logvar) * w
        prec = prec + p
        num = num + torch.where(w > 0, e.mu, torch.zeros_like(e.mu)) * p
    return DiagonalGaussian(num / prec, -torch.log(prec))


def analytic_kl(q: DiagonalGaussian, p: DiagonalGaussian) -> torch.Tensor:
    """Element-wise KL(q || p) of diagonal Gaussians."""
    return 0.5 * (p.logvar - q.logvar + (q.logvar.exp() + (q.mu - p.mu) ** 2) / p.logvar.exp() - 1.0)


class Outputs:
    """Forward-hook recorder: the output of every call of each module, in call order."""

    def __init__(self, modules: dict):
        self.calls: dict = {name: [] for name in modules}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name):
        def hook(module, args, output):
            self.calls[name].append(output.detach())

        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def per_sample(outputs: torch.Tensor, observed_col: torch.Tensor) -> torch.Tensor:
    """An expert's output over the samples it ran on -> a full batch (zeros where not observed)."""
    B = observed_col.shape[0]
    if outputs.shape[0] == B:
        return outputs
    full = outputs.new_zeros((B, *outputs.shape[1:]))
    return full.index_copy(0, observed_col.nonzero(as_tuple=True)[0], outputs)


# --------------------------------------------------------------------------------------------------
# Model: posteriors, KL, what each level depends on
# --------------------------------------------------------------------------------------------------


def test_top_level_fuses_the_observed_experts_with_a_standard_normal_prior():
    """At z_L, each expert depends on its own modality only and the prior is N(0, I), so the
    precisions and precision-weighted means of one-modality posteriors add up (minus the prior's)."""
    model = tiny_model()
    x = images(2)
    with torch.no_grad():
        q = {s: model(x, masks(s, s), temperature=0.0).posteriors[-1] for s in
             [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 1, 1)]}
    lam = {s: torch.exp(-g.logvar) for s, g in q.items()}
    eta = {s: g.mu * lam[s] for s, g in q.items()}
    a, b, c = (1, 0, 0), (0, 1, 0), (0, 0, 1)
    assert torch.allclose(lam[(1, 1, 0)], lam[a] + lam[b] - 1.0, rtol=1e-4, atol=1e-4)
    assert torch.allclose(lam[(1, 1, 1)], lam[a] + lam[b] + lam[c] - 2.0, rtol=1e-4, atol=1e-4)
    assert torch.allclose(eta[(1, 1, 0)], eta[a] + eta[b], rtol=1e-4, atol=1e-4)
    assert torch.allclose(eta[(1, 1, 1)], eta[a] + eta[b] + eta[c], rtol=1e-4, atol=1e-4)
    # one observed expert: N(0, I) x h_j is strictly more precise than either alone would be
    assert (lam[a] > 1.0).all() and not torch.allclose(q[a].mu, q[b].mu)


def test_every_posterior_is_the_conditional_prior_times_the_observed_experts():
    """q(z_l | x_r', z_>l) = p(z_l | z_>l) x prod_{j in r'} h_j,l per sample (eq. 13-14); at the top,
    N(0, I) x prod_j h_j. Read from the prior and expert modules' own outputs."""
    model = tiny_model(1)
    cfg = model.cfg
    obs = masks((1, 0, 0), (0, 1, 1), (1, 1, 1), (0, 0, 1))
    modules = {("prior", k): m for k, m in model.priors.items()}
    modules.update({("expert", k, j): e for k, group in model.experts.items() for j, e in enumerate(group)})
    modules.update({("top", j): e for j, e in enumerate(model.top_experts)})
    rec = Outputs(modules)
    with torch.no_grad():
        out = model(images(4, seed=2), obs, temperature=1.0)
    rec.close()
    M = cfg.num_modalities

    def experts_of(name):
        return [gaussian(per_sample(rec.calls[(*name, j)][0], obs[:, j]), cfg) for j in range(M)]

    top = expected_product(DiagonalGaussian.standard(out.posteriors[-1].mu), experts_of(("top",)), obs)
    assert torch.allclose(out.posteriors[-1].mu, top.mu, atol=1e-5)
    assert torch.allclose(out.posteriors[-1].logvar, top.logvar, atol=1e-5)
    for key in model.priors:
        prior = gaussian(rec.calls[("prior", key)][0], cfg)
        assert prior.mu.abs().mean() > 0.1  # the conditional prior is far from N(0, I) here
        want = expected_product(prior, experts_of(("expert", key)), obs)
        got = out.posteriors[level_index(model, key)]
        assert torch.allclose(got.mu, want.mu, atol=1e-4), f"level of stage {key}: wrong posterior mean"
        assert torch.allclose(got.logvar, want.logvar, atol=1e-4), f"level of stage {key}: wrong variance"


def test_kl_of_every_level_is_against_the_conditional_prior():
    """Algorithm 1 line 12: KL[q(z_l | x_r', z_>l) || p(z_l | z_>l)], summed over the level's elements;
    the top level's prior is N(0, I)."""
    model = tiny_model(2)
    rec = Outputs(dict(model.priors.items()))
    with torch.no_grad():
        out = model(images(3, seed=3), masks((1, 1, 0), (0, 0, 1), (1, 1, 1)), temperature=1.0)
    rec.close()
    top = out.posteriors[-1]
    want_top = analytic_kl(top, DiagonalGaussian.standard(top.mu)).flatten(1).sum(1)
    assert torch.allclose(out.kl[-1], want_top, rtol=1e-4, atol=1e-4)
    for key in model.priors:
        i = level_index(model, key)
        prior = gaussian(rec.calls[key][0], model.cfg)
        want = analytic_kl(out.posteriors[i], prior).flatten(1).sum(1)
        against_standard = analytic_kl(out.posteriors[i], DiagonalGaussian.standard(prior.mu)).flatten(1).sum(1)
        assert torch.allclose(out.kl[i], want, rtol=1e-4, atol=1e-3), f"level of stage {key}"
        assert not torch.allclose(want, against_standard, rtol=1e-2)  # the test can tell them apart
    assert torch.allclose(out.kl_total, torch.stack(out.kl).sum(0))


def test_uninformative_experts_leave_the_conditional_prior_and_no_kl():
    """Experts with (near) zero precision carry no information: every posterior is then the prior of
    its level, p(z_l | z_>l) below the top, and every KL vanishes. A posterior or KL built on N(0, I)
    instead of the conditional prior does not."""
    model = tiny_model(3)
    with torch.no_grad():
        for layer in [e[-1] for group in model.experts.values() for e in group] + [m[-1] for m in model.top_experts]:
            layer.weight.zero_()
            C = layer.bias.shape[0] // 2
            layer.bias[:C] = 0.0
            layer.bias[C:] = 1e3  # log-variance at its clamp: precision ~exp(-8)
        out = model(images(2, seed=4), masks((1, 1, 1), (1, 0, 0)), temperature=1.0)
    for i, (q, kl) in enumerate(zip(out.posteriors, out.kl)):
        assert kl.abs().max() < 0.05, f"level {i}: KL {kl.tolist()}"
    for key in model.priors:  # and those priors are not N(0, I): the posterior sits on them
        q = out.posteriors[level_index(model, key)]
        assert q.mu.abs().mean() > 0.1 or (q.logvar.abs().mean() > 0.1)


def test_residual_experts_see_the_top_down_state():
    """h_j,l(z_l | x_j, z_>l) (eq. 12): with the conditional priors made constant, a level's posterior
    still changes when only the sampled z_>l changes (same images, same r', other noise)."""
    model = tiny_model(4)
    with torch.no_grad():
        for m in model.priors.values():
            m[-1].weight.zero_()
            m[-1].bias.zero_()  # p(z_l | z_>l) = N(0, I) whatever z_>l
    x, obs = images(2, seed=5), masks((1, 1, 0), (0, 1, 1))
    with torch.no_grad():
        torch.manual_seed(0)
        a = model(x, obs, temperature=1.0)
        torch.manual_seed(1)
        b = model(x, obs, temperature=1.0)
    assert torch.equal(a.posteriors[-1].mu, b.posteriors[-1].mu)  # the top level sees no noise
    for key in model.priors:
        i = level_index(model, key)
        assert not torch.allclose(a.posteriors[i].mu, b.posteriors[i].mu, atol=1e-4), f"stage {key}"


def test_each_sampled_latent_feeds_the_levels_below_it():
    """z_l is part of z_>l for every finer level (the top-down path carries it): shifting the prior
    of one spatial level moves its z_l (tau = 0) and so the posteriors of the finer levels, while
    the coarser levels are unchanged."""
    model = tiny_model(9)
    x, obs = images(2, seed=10), masks((1, 1, 0), (0, 0, 1))
    keys = sorted(int(k) for k in model.priors)
    with torch.no_grad():
        base = model(x, obs, temperature=0.0).posteriors
        for k in keys[1:]:  # every spatial level that has a finer one
            handle = model.priors[str(k)].register_forward_hook(lambda mod, args, out: out + 1.0)
            moved = model(x, obs, temperature=0.0).posteriors
            handle.remove()
            i = level_index(model, str(k))
            assert not torch.allclose(moved[i].mu, base[i].mu)
            for finer in range(i):
                assert not torch.allclose(moved[finer].mu, base[finer].mu, atol=1e-4), f"z of stage {k} unused"
            for coarser in range(i + 1, len(base)):
                assert torch.equal(moved[coarser].mu, base[coarser].mu)


def test_a_level_posterior_depends_on_the_observed_features_at_that_level():
    """With z_L made independent of the images (top experts output constants) and tau = 0, the
    top-down state entering the first spatial level is the same for any image, so its posterior
    can only change with the images through the experts' features, and only through observed ones."""
    model = tiny_model(5)
    with torch.no_grad():
        for m in model.top_experts:
            m[-1].weight.zero_()
    coarsest = str(max(int(k) for k in model.priors))
    i = level_index(model, coarsest)
    x = images(2, seed=6)
    y = x.clone()
    y[:, T2] = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        def q(imgs, *row):
            return model(imgs, masks(row, row), temperature=0.0).posteriors
        assert torch.equal(q(x, 0, 1, 0)[-1].mu, q(y, 0, 1, 0)[-1].mu)  # z_L: constant by construction
        assert not torch.allclose(q(x, 0, 1, 0)[i].mu, q(y, 0, 1, 0)[i].mu, atol=1e-4)  # t2 observed
        assert not torch.allclose(q(x, 1, 1, 0)[i].mu, q(y, 1, 1, 0)[i].mu, atol=1e-4)
        assert torch.equal(q(x, 1, 0, 1)[i].mu, q(y, 1, 0, 1)[i].mu)  # t2 not in r': no effect at all


def test_an_unobserved_modality_never_matters_and_gets_no_gradient():
    """PoE masking by r': whatever an unobserved slot holds, and whatever its encoder would output,
    the posteriors and outputs are unchanged and that encoder and its experts get no gradient."""
    model = tiny_model(6).train()
    x = images(3, seed=7)
    obs = masks((1, 1, 0), (1, 0, 0), (0, 1, 0))
    y = x.clone()
    y[:, CET1] = 1e4
    y[1, T2] = float("nan")
    torch.manual_seed(0)
    a = model(x, obs, temperature=1.0)
    # an unobserved encoder that would output garbage must not matter either
    handle = model.encoders[CET1].register_forward_hook(
        lambda mod, args, out: ([f * float("nan") for f in out[0]], out[1] * float("nan")))
    torch.manual_seed(0)
    b = model(y, obs, temperature=1.0)
    handle.remove()
    assert torch.equal(a.reconstructions, b.reconstructions)
    assert all(torch.equal(p.mu, r.mu) for p, r in zip(a.posteriors, b.posteriors))
    b.reconstructions.square().mean().backward()
    dead = list(model.encoders[CET1].parameters()) + list(model.top_experts[CET1].parameters())
    dead += [p for group in model.experts.values() for p in group[CET1].parameters()]
    assert all(p.grad is None or not p.grad.any() for p in dead)
    for j in (US, T2):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders[j].parameters())
    # and an observed modality does matter: adding t2 to the first sample changes its posterior
    with torch.no_grad():
        c = model(x, masks((1, 0, 0), (1, 0, 0), (0, 1, 0)), temperature=0.0)
        d = model(x, obs, temperature=0.0)
    assert not torch.allclose(c.posteriors[-1].mu[0], d.posteriors[-1].mu[0])
    assert torch.allclose(c.posteriors[-1].mu[1:], d.posteriors[-1].mu[1:])


def test_every_image_head_decodes_the_finest_latent():
    """Eq. 6: x_j = mu_theta_j(z_1) for every modality j, observed or not."""
    model = tiny_model(8)
    seen = {}
    handles = [h.register_forward_pre_hook(lambda mod, args, j=j: seen.__setitem__(j, args[0].detach()))
               for j, h in enumerate(model.heads)]
    with torch.no_grad():
        out = model(images(2, seed=9), masks((1, 0, 0), (0, 1, 1)), temperature=1.0)
    for h in handles:
        h.remove()
    assert sorted(seen) == list(range(model.cfg.num_modalities))
    assert all(torch.equal(z, out.latents[0]) for z in seen.values())


def test_temperature_scales_the_sampling_noise():
    """tau = 0 decodes the posterior means (deterministic); tau > 0 draws z = mu + tau sigma eps."""
    model = tiny_model(7)
    x, obs = images(4, seed=8), masks((1, 1, 1), (1, 0, 0), (0, 1, 1), (0, 0, 1))
    with torch.no_grad():
        a = model(x, obs, temperature=0.0)
        b = model(x, obs, temperature=0.0)
        assert torch.equal(a.reconstructions, b.reconstructions)
        assert all(torch.equal(z, q.mu) for z, q in zip(a.latents, a.posteriors))
        for tau in (1.0, 0.5):
            out = model(x, obs, temperature=tau)
            eps = torch.cat([((z - q.mu) * torch.exp(-0.5 * q.logvar)).flatten() for z, q in zip(out.latents, out.posteriors)])
            assert eps.std().item() == pytest.approx(tau, rel=0.05) and abs(eps.mean().item()) < 0.05
            assert not torch.allclose(out.reconstructions, a.reconstructions)


# --------------------------------------------------------------------------------------------------
# Training step (Algorithm 1): what the loss reacts to, which modules get gradient
# --------------------------------------------------------------------------------------------------


def image_keys(batch: dict) -> list[str]:
    """Keys of the batch's image tensors (encoder inputs and loss targets; one or two tensors)."""
    return [k for k, v in batch.items() if torch.is_tensor(v) and v.dim() == 4 and v.is_floating_point()]


def targets_of(batch: dict) -> torch.Tensor:
    return batch["targets"] if "targets" in batch else batch["images"]


def with_modality(batch: dict, j: int, value) -> dict:
    """A copy of the batch with modality j's images (inputs and targets) replaced by ``value``."""
    out = dict(batch)
    for k in image_keys(batch):
        t = batch[k].clone()
        t[:, j] = value
        out[k] = t
    return out


def dataset(available=((1, 1, 0),) * 4, seed: int = 0) -> ArraySliceDataset:
    """Random targets; the encoder inputs differ from them (as acquired vs harmonized images)."""
    g = torch.Generator().manual_seed(seed)
    avail = torch.tensor(available, dtype=torch.bool)
    targets = torch.rand(avail.shape[0], 3, 32, 32, generator=g)
    try:
        return ArraySliceDataset(targets, avail, inputs=targets.sqrt())
    except TypeError:  # a dataset without separate inputs
        return ArraySliceDataset(targets, avail)


def cfg_for(**train):
    cfg = preset("tiny")
    cfg.train.steps = 4
    cfg.train.batch_size = 4
    cfg.train.use_gan = False
    cfg.train.grad_clip = 1e12  # no clipping: gradients are compared exactly
    cfg.train.amp = "fp32"
    gan = train.pop("gan", {})
    for k, v in train.items():
        setattr(cfg.train, k, v)
    for k, v in gan.items():
        setattr(cfg.train.gan, k, v)
    return cfg


class StepRecord:
    """One training step of a fresh (spread) trainer, recording every forward pass of the model."""

    def __init__(self, tmp_path, cfg, data, batch=None, step=0, noise_seed=0, before=None):
        self.trainer = Trainer(cfg, tmp_path / "run", data, None, progress=False)
        spread(self.trainer.model, 11)
        self.discriminators = copy.deepcopy(self.trainer.discriminators)  # as the generator saw them
        self.observed, self.outputs, self.recon_grads = [], [], []
        handle = self.trainer.model.register_forward_hook(self._hook, with_kwargs=True)
        self.batch = batch if batch is not None else self.trainer.batches.batch(step)
        if before is not None:
            before(self.trainer)
        torch.manual_seed(noise_seed)
        try:
            self.logs = self.trainer.training_step(self.batch, step)
        finally:
            handle.remove()
        self.grads = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                      for n, p in self.trainer.model.named_parameters()}

    def _hook(self, module, args, kwargs, output):
        observed = args[1] if len(args) > 1 else kwargs["observed"]
        self.observed.append(observed.detach().clone())
        self.outputs.append(output)
        i = len(self.recon_grads)
        self.recon_grads.append(None)
        if output.reconstructions.requires_grad:
            output.reconstructions.register_hook(lambda g: self.recon_grads.__setitem__(i, g.detach().clone()))

    def flat_grad(self) -> torch.Tensor:
        return torch.cat([g.flatten() for g in self.grads.values()])

    def module_grad(self, prefix: str) -> float:
        return sum(float(g.abs().sum()) for n, g in self.grads.items() if n.startswith(prefix + "."))


def test_training_samples_the_posterior_at_temperature_one(tmp_path):
    """Algorithm 1 line 11: z_l is a random sample of q (tau = 1), not its mean or a cooled sample."""
    rec = StepRecord(tmp_path, cfg_for(draws=2), dataset())
    assert len(rec.outputs) == 2
    eps = torch.cat([((z.detach() - q.mu.detach()) * torch.exp(-0.5 * q.logvar.detach())).flatten()
                     for out in rec.outputs for z, q in zip(out.latents, out.posteriors)])
    assert eps.std().item() == pytest.approx(1.0, rel=0.05) and abs(eps.mean().item()) < 0.05


def test_training_step_is_stochastic_through_the_latent_noise(tmp_path):
    """Same batch, same draws of r', other noise: the loss changes (it would not at tau = 0)."""
    cfg = cfg_for(draws=1, subset_policy="weights", subset_weights={"us+t2": 1.0})
    a = StepRecord(tmp_path / "a", cfg, dataset(), noise_seed=0)
    b = StepRecord(tmp_path / "b", cfg, dataset(), noise_seed=1)
    assert torch.equal(a.observed[0], b.observed[0])
    assert a.logs["img"] != b.logs["img"]
    assert not torch.allclose(a.flat_grad(), b.flat_grad())


def test_draws_of_r_prime_are_subsets_of_r_and_the_loss_is_their_average(tmp_path):
    """Lines 8-9 and 23-24: T draws r' ~ p(r' | r), each a non-empty subset of r per sample; the
    logged terms and the gradient are averages over the draws, and the gradient that reaches each
    draw's reconstructions is 1/T of that of the reconstruction loss over the available modalities
    (inputs and cross-modal targets, eq. 9), whatever was encoded."""
    T = 3
    avail = ((1, 1, 0), (1, 1, 1), (0, 1, 1), (1, 0, 1))
    rec = StepRecord(tmp_path, cfg_for(draws=T, kl_weight=0.0), dataset(avail))
    available = rec.batch["available"]
    targets = targets_of(rec.batch)
    assert len(rec.observed) == T
    for obs in rec.observed:
        assert obs.any(dim=1).all() and not (obs & ~available).any()
    assert len({tuple(map(tuple, o.tolist())) for o in rec.observed}) > 1  # r' varies between draws
    per_draw = []
    for out, grad in zip(rec.outputs, rec.recon_grads):
        x = out.reconstructions.detach().float().clone().requires_grad_(True)
        loss = reconstruction_loss(x, targets, available, rec.trainer.cfg.train.reconstruction)
        (want,) = torch.autograd.grad(loss, x)
        per_draw.append(float(loss.detach()))
        assert torch.allclose(grad.float(), want / T, rtol=1e-4, atol=1e-9)
        assert (grad[~available] == 0).all()  # an unavailable modality is never scored
    assert rec.logs["img"] == pytest.approx(sum(per_draw) / T, rel=1e-5)


def test_reconstruction_scores_available_targets_not_only_the_inputs(tmp_path):
    """Eq. 9: with r' = {us} always, t2 (available, not encoded) is still a target: its images change
    the loss and its head gets gradient; cet1 (unavailable) changes nothing. The encoders of t2 and
    cet1 get no gradient, the encoder of us does."""
    cfg = cfg_for(draws=2, subset_policy="weights", subset_weights={"us": 1.0})
    data = dataset()
    base = StepRecord(tmp_path / "a", cfg, data)
    assert all((o == masks(*[(1, 0, 0)] * 4)).all() for o in base.observed)
    shifted_t2 = StepRecord(tmp_path / "b", cfg, data, batch=with_modality(base.batch, T2, 0.9))
    shifted_cet1 = StepRecord(tmp_path / "c", cfg, data, batch=with_modality(base.batch, CET1, 0.9))
    assert abs(shifted_t2.logs["img"] - base.logs["img"]) > 1e-3
    assert shifted_cet1.logs["img"] == base.logs["img"]
    assert torch.equal(shifted_cet1.flat_grad(), base.flat_grad())
    assert base.module_grad(f"heads.{T2}") > 0 and base.module_grad(f"heads.{US}") > 0
    assert base.module_grad(f"heads.{CET1}") == 0  # unavailable and no GAN: nothing scores it
    assert base.module_grad(f"encoders.{US}") > 0
    assert base.module_grad(f"encoders.{T2}") == 0 and base.module_grad(f"encoders.{CET1}") == 0
    assert base.module_grad(f"top_experts.{T2}") == 0


def test_the_kl_term_enters_the_gradient_with_its_weight(tmp_path):
    """L = L_img + lambda_KL L_KL: the gradient is affine in lambda_KL with a non-zero slope, and the
    logged KL is the draws' mean KL per pixel of the model's outputs."""
    data = dataset()
    runs = {w: StepRecord(tmp_path / str(w), cfg_for(draws=2, kl_weight=w), data) for w in (0.0, 0.05, 0.1)}
    g0, g1, g2 = (runs[w].flat_grad() for w in (0.0, 0.05, 0.1))
    slope = g1 - g0
    assert slope.norm() > 1e-3 * g0.norm()
    assert torch.allclose(g2 - g0, 2 * slope, rtol=1e-3, atol=1e-3 * float(slope.abs().max()))
    r = runs[0.05]
    H, W = targets_of(r.batch).shape[-2:]
    kl = sum(float(o.kl_total.detach().mean()) for o in r.outputs) / len(r.outputs) / (H * W)
    assert r.logs["kl"] == pytest.approx(kl, rel=1e-4) and r.logs["kl"] > 0
    assert r.logs["loss"] == pytest.approx(r.logs["img"] + 0.05 * r.logs["kl"], rel=1e-5)


def test_memory_keeps_real_targets_of_available_modalities_only(tmp_path):
    """Lines 27-28: m_j <- x_j where r_j = 1 (the images the fakes are compared with)."""
    avail = ((1, 1, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0))
    rec = StepRecord(tmp_path, cfg_for(draws=1), dataset(avail))
    targets, available = targets_of(rec.batch), rec.batch["available"]
    for j, memory in enumerate(rec.trainer.memories):
        n = int(available[:, j].sum())
        assert len(memory) == n
        if n:
            stored = memory.buffer[:n]
            assert torch.allclose(stored, targets[available[:, j], j].float())


def test_encoders_see_the_inputs_and_the_loss_scores_the_targets(tmp_path):
    """Paper §4.4.1: the model gets the images as acquired and must output harmonized ones. Changing
    only the targets changes the loss, not the reconstructions; changing only the inputs of an
    observed modality changes the reconstructions."""
    if "inputs" not in dataset()[0]:
        pytest.skip("this dataset has no separate encoder inputs")
    cfg = cfg_for(draws=1, subset_policy="weights", subset_weights={"us+t2": 1.0})
    base = StepRecord(tmp_path / "a", cfg, dataset())
    new_targets = dict(base.batch, targets=base.batch["targets"] * 0.5)
    new_inputs = dict(base.batch, inputs=base.batch["inputs"].flip(-1))
    t = StepRecord(tmp_path / "t", cfg, dataset(), batch=new_targets)
    i = StepRecord(tmp_path / "i", cfg, dataset(), batch=new_inputs)
    recon = [r.outputs[0].reconstructions.detach() for r in (base, t, i)]
    assert torch.equal(recon[0], recon[1]) and t.logs["img"] != base.logs["img"]
    assert not torch.allclose(recon[0], recon[2])


def test_discriminators_compare_fakes_with_memory_images_of_a_missing_modality(tmp_path):
    """Lines 27-30: the real side of d_j is the batch's x_j where r_j = 1, topped up from the memory
    m_j; a modality no sample of the batch has is judged against the memory's images only."""
    cfg = cfg_for(draws=1, use_gan=True, gan={"start_fraction": 0.0})
    seen = {US: [], CET1: []}
    snapshot = {}

    def prepare(trainer):
        trainer.memories[CET1].add(torch.full((4, 32, 32), 0.77))
        snapshot.update({k: v.clone() for k, v in trainer.discriminators.critics[CET1].state_dict().items()})
        for j in seen:
            trainer.discriminators.critics[j].register_forward_pre_hook(
                lambda mod, args, j=j: seen[j].append(args[0].detach().clone()))

    rec = StepRecord(tmp_path, cfg, dataset(), before=prepare)
    targets = targets_of(rec.batch)
    assert any(x.shape[0] == 4 and torch.all(x == 0.77) for x in seen[CET1])  # real side: the memory
    assert any(x.shape[0] == 4 and torch.equal(x[:, 0], targets[:, US].float()) for x in seen[US])
    moved = rec.trainer.discriminators.critics[CET1].state_dict()
    assert any(not torch.equal(snapshot[k], v) for k, v in moved.items())


# --------------------------------------------------------------------------------------------------
# GAN term (eq. 15-16) and its schedule
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LOSSES)
def test_generator_loss_falls_as_fakes_look_real_to_the_discriminator(kind):
    """For every loss family: moving the scores of fakes toward 'real' (higher scores, what the
    discriminator loss wants for real images) lowers the generator's loss and raises the
    discriminator's; the two pull the fake scores in opposite directions."""
    real = torch.full((8,), 0.9)
    fake = torch.linspace(0.05, 0.6, 8)
    for delta in (0.05, 0.2):
        assert generator_loss(kind, fake + delta) < generator_loss(kind, fake)
        assert discriminator_loss(kind, real, fake + delta) > discriminator_loss(kind, real, fake)
        assert discriminator_loss(kind, real + delta, fake) <= discriminator_loss(kind, real, fake)
    s = fake.clone().requires_grad_(True)
    (g_gen,) = torch.autograd.grad(generator_loss(kind, s), s)
    (g_dis,) = torch.autograd.grad(discriminator_loss(kind, real, s), s)
    assert (g_gen < 0).all() and (g_dis > 0).all()


def test_gan_gradient_moves_the_fakes_toward_real_and_reaches_every_modality(tmp_path):
    """Eq. 16 in Algorithm 1 (lines 17, 23): the adversarial part of the gradient that reaches the
    reconstructions is a descent direction for the generator loss, so a step along it raises the
    discriminators' scores of the fakes; it regularizes every decoded modality, even one that no
    sample of the batch has (its head gets gradient only from the GAN)."""
    gan = {"start_fraction": 0.0, "weight": 0.5}
    data = dataset()
    with_gan = StepRecord(tmp_path / "g", cfg_for(draws=1, use_gan=True, gan=gan), data)
    without = StepRecord(tmp_path / "n", cfg_for(draws=1, use_gan=False, gan=gan), data)
    assert with_gan.logs["lambda_gan"] == 0.5 and without.logs["lambda_gan"] == 0.0
    x = with_gan.outputs[0].reconstructions.detach().float()
    assert torch.equal(x, without.outputs[0].reconstructions.detach().float())
    adversarial = with_gan.recon_grads[0].float() - without.recon_grads[0].float()
    assert adversarial.abs().sum() > 0
    x = x.clone().requires_grad_(True)
    score = sum(with_gan.discriminators(j, x[:, j]).float().mean() for j in range(x.shape[1]))
    (d_score,) = torch.autograd.grad(score, x)
    assert float((d_score * adversarial).sum()) < 0  # -gradient raises the scores of the fakes
    assert with_gan.module_grad(f"heads.{CET1}") > 0 and without.module_grad(f"heads.{CET1}") == 0


def test_discriminator_step_separates_real_from_fake(tmp_path):
    """Lines 30-32: after its update each discriminator's loss on the step's real and fake images is
    lower than before it (it learns to tell them apart)."""
    cfg = cfg_for(draws=1, use_gan=True, gan={"start_fraction": 0.0})
    rec = StepRecord(tmp_path, cfg, dataset(((1, 1, 1),) * 4))
    targets = targets_of(rec.batch).float()
    fakes = rec.outputs[0].reconstructions.detach().float()
    with torch.no_grad():
        for j in range(3):
            def loss(d):
                return discriminator_loss(cfg.train.gan.loss, d(j, targets[:, j]).float(), d(j, fakes[:, j]).float())
            assert loss(rec.trainer.discriminators) < loss(rec.discriminators), f"critic {j}"


def test_no_discriminator_gradient_before_the_gan_starts_or_at_weight_zero(tmp_path):
    """lambda_GAN = 0 before the GAN start (paper §4.2: the first 80% of training) and when its weight
    is 0: the generator's gradient is then exactly that of the run without a GAN."""
    data = dataset()
    plain = StepRecord(tmp_path / "plain", cfg_for(draws=1), data)
    late = cfg_for(draws=1, use_gan=True, gan={"start_fraction": 0.5, "weight": 0.5})
    before = StepRecord(tmp_path / "before", late, data, step=0)
    zero = StepRecord(tmp_path / "zero", cfg_for(draws=1, use_gan=True, gan={"start_fraction": 0.0, "weight": 0.0}), data)
    for r in (before, zero):
        assert r.logs["lambda_gan"] == 0.0 and r.logs["gan_g"] == 0.0
        assert torch.equal(r.flat_grad(), plain.flat_grad())
    after = StepRecord(tmp_path / "after", late, data, batch=plain.batch, step=2)
    assert after.logs["lambda_gan"] == 0.5
    assert not torch.allclose(after.flat_grad(), plain.flat_grad())

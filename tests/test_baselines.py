"""Baselines and ablations: every method builds, runs, synthesizes, round-trips, trains; presets say what the docs say."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from mmhvae.config import ConfigError, preset
from mmhvae.methods import METHODS, apply_method, paper_groups_to_stages, parse_methods
from mmhvae.models import available_methods, build_model
from mmhvae.models.mmhvae import MMHVAE
from mmhvae.subsets import all_subsets, subset_name

ALL = list(METHODS)


def _model(method: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = apply_method(preset("tiny"), method)
    return build_model(cfg.model), cfg


def _batch(cfg, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, cfg.num_modalities, cfg.image_size, cfg.image_size, generator=g)


MASKS = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 1]], dtype=torch.bool)


@pytest.mark.parametrize("method", ALL)
def test_forward_backward_and_synthesis_from_every_subset(method):
    model, cfg = _model(method)
    x = _batch(cfg.model)
    out = model(x, MASKS, 1.0, available=torch.ones_like(MASKS))
    assert out.reconstructions.shape == x.shape
    assert isinstance(out.kl, list) and isinstance(out.latents, list)
    loss = (out.reconstructions - x).square().mean() + sum(k.mean() for k in out.kl)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)

    model.eval()
    mods = cfg.model.modalities
    for subset in all_subsets(len(mods)):
        given = {m: torch.rand(32, 32) for m, on in zip(mods, subset) if on}
        y = model.synthesize(given, temperature=0.0)
        assert set(y) == set(mods), subset_name(subset, mods)
        assert all(v.shape == (32, 32) and torch.isfinite(v).all() for v in y.values())


@pytest.mark.parametrize("method", ALL)
def test_weights_round_trip_through_safetensors(method, tmp_path):
    from safetensors.torch import load_file, save_file

    model, cfg = _model(method, seed=0)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    other = build_model(copy.deepcopy(cfg.model))
    torch.manual_seed(1)
    for p in other.parameters():  # make sure loading, not the seed, makes them equal
        torch.nn.init.normal_(p)
    other.load_state_dict(load_file(str(path)), strict=True)
    x = _batch(cfg.model, seed=2)
    with torch.no_grad():
        a = model.eval()(x, MASKS, temperature=0.0).reconstructions
        b = other.eval()(x, MASKS, temperature=0.0).reconstructions
    assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["mmgan", "resvit"])
def test_zero_imputation_uses_the_mask_not_the_values(method):
    model, cfg = _model(method)
    model.eval()
    x = _batch(cfg.model)
    garbage = x.clone()
    garbage[~MASKS] = float("nan")  # unobserved slots may hold anything
    zeros = torch.where(MASKS[:, :, None, None], x, torch.zeros(()))
    with torch.no_grad():
        a = model(garbage, MASKS)
        b = model(zeros, MASKS)
    assert torch.isfinite(a.reconstructions).all() and torch.equal(a.reconstructions, b.reconstructions)
    assert a.kl == []  # deterministic: nothing for the KL term


@pytest.mark.parametrize("method", ["mmgan", "resvit"])
def test_a_few_steps_reduce_the_reconstruction_loss(method):
    model, cfg = _model(method)
    # Discs whose three "modalities" are intensity maps of one anatomy: learnable cross-modally.
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    disc = torch.stack([((xx - c) ** 2 + yy**2 < 0.3).float() for c in (-0.3, 0.0, 0.2, 0.4)])
    x = torch.stack([disc, 1 - 0.5 * disc, 0.7 * disc], dim=1)
    obs = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(15):
        loss = (model(x, obs).reconstructions - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.4 * losses[0]


@pytest.mark.parametrize("model_cls", ["mmhvae", "mmgan", "resvit"])
def test_synthesize_refuses_bad_requests_with_the_same_messages(model_cls):
    model, _ = _model(model_cls)
    with pytest.raises(ValueError, match="empty input subset"):
        model.synthesize({})
    with pytest.raises(ValueError, match="unknown modality"):
        model.synthesize({"ct": torch.rand(32, 32)})
    with pytest.raises(ValueError, match="unknown target modality"):
        model.synthesize({"us": torch.rand(32, 32)}, targets=["pet"])
    with pytest.raises(ValueError, match="must share one shape"):
        model.synthesize({"us": torch.rand(32, 32), "t2": torch.rand(2, 32, 32)})
    with pytest.raises(ValueError, match=r"images must be \(B, M=3"):
        model(torch.rand(1, 2, 32, 32), torch.ones(1, 2, dtype=torch.bool))
    y = model.eval().synthesize({"t2": torch.rand(2, 1, 32, 32)}, temperature=0.0, targets=["us"])
    assert list(y) == ["us"] and y["us"].shape == (2, 1, 32, 32)


def test_registry_and_resvit_shares_one_transformer():
    assert {"mmhvae", "mmgan", "resvit"} <= set(available_methods())
    model, cfg = _model("resvit")
    keys = list(model.state_dict())
    assert sum(k.startswith("transformer.") for k in keys) > 0
    assert not any(".transformer." in k for k in keys if k.startswith("art."))  # one copy, owned by the generator
    assert cfg.model.resvit.transformer_blocks == [0, 2] and cfg.model.resvit.art_blocks == 4


def test_resvit_refuses_a_bottleneck_too_small_for_the_transformer():
    cfg = apply_method(preset("tiny"), "resvit").model
    cfg.image_size = 8  # 8 / 2**2 = 2: not divisible by 4 for the transformer branch
    with pytest.raises(ConfigError, match="divisible by 4"):
        build_model(cfg)


# --------------------------------------------------------------------------------------------------
# Presets say what docs/methods.md says
# --------------------------------------------------------------------------------------------------


def test_depth_ablation_keeps_the_paper_groups_at_the_paper_preset():
    paper = preset("paper")
    lat = paper.model.latent_channels  # [8, 16, 32, 64, 64, 64], stage s = group s + 1
    expect = {
        "L1": [0, 0, 0, 0, 0, 0],
        "L2": [8, 0, 0, 0, 0, 0],  # groups 1 and 7
        "L3": [8, 0, 0, 64, 0, 0],  # groups 1, 4 and 7
        "L5": [8, 0, 32, 64, 64, 0],  # groups 1, 3, 4, 5 and 7
        "L7": lat,
    }
    for name, latents in expect.items():
        cfg = apply_method(paper, name)
        assert cfg.model.latent_channels == latents, name
        assert cfg.model.num_levels == int(name[1:])
    assert apply_method(paper, "mmhvae").model == paper.model


def test_depth_ablation_mapping_on_fewer_stages():
    assert paper_groups_to_stages(6, [1, 4, 7]) == [0, 3]
    assert paper_groups_to_stages(4, [1, 3, 4, 5, 7]) == [0, 1, 2, 3]
    assert paper_groups_to_stages(4, [1, 4, 7]) == [0, 2]
    small = preset("small")  # latent_channels [4, 8, 0, 16]
    assert apply_method(small, "L3").model.latent_channels == [4, 0, 8, 0]  # stage 2 borrows the finer width
    assert apply_method(small, "L7").model.latent_channels == [4, 8, 8, 16]
    assert apply_method(small, "L7").model.num_levels == 5
    assert apply_method(preset("tiny"), "L3").model.latent_channels == [4, 0, 8]


def test_baseline_presets():
    paper = preset("paper")
    mvae = apply_method(paper, "mvae")
    assert mvae.model.num_levels == 1 and mvae.model.method == "mmhvae"
    assert (mvae.train.objective, mvae.train.mvae_random_subsets) == ("mvae", 1)
    mopoe = apply_method(paper, "mopoe")
    assert mopoe.model.num_levels == 1 and (mopoe.model.method, mopoe.train.objective) == ("mopoe", "mopoe")
    mhvae = apply_method(paper, "mhvae")
    assert mhvae.train.complete_only and mhvae.model.num_levels == 7 and mhvae.train.subset_policy == "uniform"
    assert apply_method(paper, "concat-zeros").model.fusion == "concat"
    assert apply_method(paper, "average").model.fusion == "average"
    assert apply_method(paper, "no-gan").train.use_gan is False
    mmgan = apply_method(paper, "mmgan")
    assert mmgan.model.method == "mmgan" and mmgan.model.mmgan.channels == [64, 128, 256, 512, 512, 512]
    assert mmgan.train.reconstruction == "l1" and mmgan.train.gan.start_fraction == 0.0
    assert mmgan.train.gan.weight == pytest.approx(0.1 / 0.9) and mmgan.train.gan.channels == 64
    resvit = apply_method(paper, "resvit")
    m = resvit.model.resvit
    assert (resvit.model.method, m.channels, m.art_blocks, m.transformer_blocks) == ("resvit", [64, 128, 256], 9, [0, 5])
    assert (m.transformer_dim, m.transformer_layers, m.transformer_heads) == (768, 12, 12)
    assert resvit.train.gan.weight == pytest.approx(0.01) and resvit.train.optimizer == "adam"
    small = preset("small")
    b = 2 * small.model.channels[0]  # reduced presets: base width twice the preset's first stage
    assert apply_method(small, "mmgan").model.mmgan.channels == [b * 2**s for s in range(len(small.model.channels))]
    assert apply_method(small, "resvit").model.resvit.channels == [b, 2 * b, 4 * b]


def test_apply_method_copies_names_and_refuses_unknown():
    base = preset("small")
    before = base.to_dict()
    cfg = apply_method(base, "mmgan")
    assert base.to_dict() == before and cfg.name == "small-mmgan"
    with pytest.raises(ConfigError, match="unknown method"):
        apply_method(base, "pix2pix")
    assert parse_methods("mmhvae, L3,mmhvae") == ["mmhvae", "L3"]
    assert parse_methods("all") == ALL
    with pytest.raises(ConfigError):
        parse_methods("mmhvae,nope")


def test_every_method_is_documented():
    text = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    for name, spec in METHODS.items():
        assert f"`{name}`" in text, name
        assert spec.source and spec.summary


# --------------------------------------------------------------------------------------------------
# Through the real trainer
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    from mmhvae.data.phantom import make_cohort

    root = tmp_path_factory.mktemp("cohort")
    # 12 subjects with ReMIND-like missingness: two complete training subjects for `mhvae`.
    return make_cohort(root / "cohort", subjects=12, seed=0, shape=(32, 32, 16), workers=1)


@pytest.mark.parametrize("method", ALL)
def test_each_method_trains_two_steps_through_train(method, tiny_cohort, tmp_path):
    from mmhvae.checkpoint import load_generator
    from mmhvae.train.trainer import train

    base = preset("tiny")
    base.model.modalities = ["us", "t2", "cet1", "flair"]  # the built-in cohort's modalities
    base.data.cohort = str(tiny_cohort)
    base.data.cache_dir = str(tiny_cohort.parent / "cache")
    base.train.steps = 2
    base.train.val_subjects = 1  # validation scores every subset: keep it to a few slices
    cfg = apply_method(base, method)
    result = train(cfg, tmp_path / method, progress=False)
    assert result.best_checkpoint.is_file()
    model = load_generator(result.best_checkpoint)
    assert type(model) is type(build_model(cfg.model)) and model.cfg == cfg.model
    from mmhvae.subsets import all_subsets

    names = cfg.model.modalities
    x = {m: torch.rand(32, 32, generator=torch.Generator().manual_seed(i)) for i, m in enumerate(names)}
    for subset in all_subsets(len(names)):  # the reloaded checkpoint synthesizes from every input subset
        inputs = {m: x[m] for m, on in zip(names, subset) if on}
        y = model.synthesize(inputs, temperature=0.0)
        assert set(y) == set(names) and all(v.shape == (32, 32) and torch.isfinite(v).all() for v in y.values())
    again = load_generator(result.best_checkpoint).synthesize({"us": x["us"]}, temperature=0.0)
    assert all(torch.equal(again[m], model.synthesize({"us": x["us"]}, temperature=0.0)[m]) for m in names)
    if cfg.model.method == "mmhvae":
        assert isinstance(model, MMHVAE)


def test_benchmark_compare_writes_all_tables(tiny_cohort, tmp_path, capsys):
    from mmhvae.cli import main

    out = tmp_path / "compare"
    rc = main([
        "benchmark", "compare", "--methods", "mmhvae,no-gan,mmgan", "--cohort", str(tiny_cohort),
        "--budget-steps", "1", "--preset", "tiny", "--out", str(out), "--no-progress",
        "model.modalities=[us,t2,cet1,flair]", "train.val_subjects=1", f"data.cache_dir={tiny_cohort.parent / 'cache'}",
    ])
    assert rc == 0
    text = (out / "comparison.md").read_text()
    for section in ("## Table 1", "## Table 4 - GAN loss", "## Compute"):
        assert section in text
    assert "## Table 2" not in text and "## Table 3" not in text  # no depth / fusion variants requested
    assert "| mmgan | ● | ○ | ○ | ○ |" in text and "| PoE + GAN (mmhvae) |" in text
    assert all((out / "runs" / m / "checkpoints" / "best.safetensors").is_file() for m in ("mmhvae", "no-gan", "mmgan"))
    capsys.readouterr()


def test_benchmark_compare_trains_in_parallel_and_shares_identical_configs(tiny_cohort, tmp_path, capsys):
    """--jobs 2 trains in worker processes; L5 and L7 are the same model on the tiny preset (one run, one score set)."""
    from mmhvae.cli import main
    from mmhvae.compare import duplicate_methods, method_configs

    cfgs = method_configs(preset("tiny"), ["L5", "L7", "L1"])
    assert duplicate_methods(cfgs) == {"L7": "L5"}
    out = tmp_path / "compare"
    rc = main([
        "benchmark", "compare", "--methods", "L5,L7,L1", "--cohort", str(tiny_cohort),
        "--budget-steps", "1", "--preset", "tiny", "--out", str(out), "--no-progress", "--no-compute",
        "--jobs", "2", "--threads", "1",
        "model.modalities=[us,t2,cet1,flair]", "train.val_subjects=1", f"data.cache_dir={tiny_cohort.parent / 'cache'}",
    ])
    assert rc == 0
    assert (out / "runs" / "L5" / "checkpoints" / "best.safetensors").is_file()
    assert (out / "runs" / "L1" / "checkpoints" / "best.safetensors").is_file()
    assert not (out / "runs" / "L7").exists()
    text = (out / "comparison.md").read_text()
    assert "same model as L5" in text
    table2 = text.split("## Table 2")[1]
    l5 = next(line for line in table2.splitlines() if line.startswith("| L5"))
    l7 = next(line for line in table2.splitlines() if line.startswith("| L7"))
    assert l5.split("|")[2:] == l7.split("|")[2:]  # identical scores, shared
    assert "## Training curves" in text and (out / "training_curves.png").stat().st_size > 1000
    curves = text.split("## Training curves")[1]
    assert "| L1 |" in curves and "| L7 |" in curves
    assert "| L1 | **" in curves  # one validation (step 1): the evaluated checkpoint is marked
    assert "## Summary - every method" in text
    # A rerun trains nothing and reuses the scores (they are newer than every checkpoint).
    scores = (out / "eval" / "metrics.csv").stat().st_mtime_ns
    assert main([
        "benchmark", "compare", "--methods", "L5,L7,L1", "--cohort", str(tiny_cohort),
        "--budget-steps", "1", "--preset", "tiny", "--out", str(out), "--no-progress", "--no-compute",
        "model.modalities=[us,t2,cet1,flair]", "train.val_subjects=1", f"data.cache_dir={tiny_cohort.parent / 'cache'}",
    ]) == 0
    assert (out / "eval" / "metrics.csv").stat().st_mtime_ns == scores
    assert "reusing" in capsys.readouterr().out
    assert (out / "comparison.md").read_text() == text
    capsys.readouterr()


# --------------------------------------------------------------------------------------------------
# MVAE and MoPoE: their own objectives (issue 17)
# --------------------------------------------------------------------------------------------------

from mmhvae.models.baselines.mopoe import MoPoEVAE, subset_mixture  # noqa: E402
from mmhvae.nn.gaussian import DiagonalGaussian, product_of_experts  # noqa: E402
from mmhvae.train.losses import reconstruction_loss  # noqa: E402
from mmhvae.train.objectives import MixtureDraws, MixtureOfSubsetsELBO, SubsampledELBO, build_objective  # noqa: E402
from mmhvae.train.trainer import selection_rule  # noqa: E402


def _encoder_grads(model) -> list[float]:
    return [sum(float(p.grad.abs().sum()) for p in enc.parameters() if p.grad is not None) for enc in model.encoders]


def test_mvae_objective_is_the_subsampled_elbo_sum():
    cfg = apply_method(preset("small"), "mvae")  # M = 4
    obj = build_objective(cfg.train, None, 4)
    assert isinstance(obj, SubsampledELBO)
    available = torch.ones(5, 4, dtype=torch.bool)
    terms = obj.terms(available, torch.Generator().manual_seed(0))
    sizes = sorted(int(t.observed[0].sum()) for t in terms)
    assert sizes[:4] == [1, 1, 1, 1] and sizes[-1] == 4 and len(terms) == 1 + 4 + 1 and 1 < sizes[4] < 4
    singles = [t for t in terms if int(t.observed[0].sum()) == 1]
    assert {int(t.observed[0].nonzero()) for t in singles} == {0, 1, 2, 3}
    for t in terms:  # each ELBO scores what it encodes, summed (weight 1), not averaged
        assert torch.equal(t.scored, t.observed) and t.weight == 1.0
    # Incomplete samples: a term keeps the rows that have one of its modalities, observing only those.
    available = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)
    for t in obj.terms(available, torch.Generator().manual_seed(0)):
        rows = torch.arange(2) if t.rows is None else t.rows
        assert t.observed.any(1).all() and not (t.observed & ~available[rows]).any()
    flair = [t for t in obj.terms(available, torch.Generator()) if t.name == "3"]
    assert flair == []  # no sample has modality 3: its unimodal ELBO is left out


def test_mvae_unimodal_elbos_train_every_encoder_without_the_joint_term():
    torch.manual_seed(0)
    cfg = apply_method(preset("tiny"), "mvae")
    model = build_model(cfg.model)
    x = _batch(cfg.model, B=4)
    available = torch.ones(4, 3, dtype=torch.bool)
    terms = SubsampledELBO(3, k=1).terms(available, torch.Generator().manual_seed(0))
    unimodal = [t for t in terms if int(t.observed[0].sum()) == 1]
    for t in unimodal:
        model.zero_grad(set_to_none=True)
        j = int(t.observed[0].nonzero())
        out = model(x, t.observed, 1.0, available)
        loss = reconstruction_loss(out.reconstructions, x, t.scored) + 1e-3 * out.kl_total.mean()
        loss.backward()
        grads = _encoder_grads(model)
        assert grads[j] > 0 and all(g == 0 for k, g in enumerate(grads) if k != j)
        head_grads = [sum(float(p.grad.abs().sum()) for p in h.parameters() if p.grad is not None) for h in model.heads]
        assert head_grads[j] > 0 and all(g == 0 for k, g in enumerate(head_grads) if k != j)  # own modality only


def test_trainer_runs_the_method_objective(tmp_path):
    from mmhvae.train.batches import ArraySliceDataset
    from mmhvae.train.trainer import Trainer

    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 32, 32, generator=g)
    available = torch.ones(8, 3, dtype=torch.bool)
    for method, kind in [("mmhvae", MixtureDraws), ("mvae", SubsampledELBO), ("mopoe", MixtureOfSubsetsELBO)]:
        cfg = apply_method(preset("tiny"), method)
        trainer = Trainer(cfg, tmp_path / method, ArraySliceDataset(x, available), None, progress=False)
        assert isinstance(trainer.objective, kind)
        seen = []
        forward = trainer.ddp_model.forward

        def spy(images, observed, *a, **k):  # one r' per call, or the list of a step's r' in one call
            seen.extend(o.clone() for o in (observed if isinstance(observed, (list, tuple)) else [observed]))
            return forward(images, observed, *a, **k)

        trainer.ddp_model.forward = spy
        logs = trainer.training_step(trainer.batches.batch(0), 0)
        assert math.isfinite(logs["loss"])
        if method == "mvae":
            assert sorted(int(o[0].sum()) for o in seen) == [1, 1, 1, 2, 3]
        if method == "mopoe":  # the model sees every available input and draws its own component
            assert all(torch.equal(o, available[: o.shape[0]]) for o in seen)


def _experts(B=3, M=3, D=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return DiagonalGaussian(torch.randn(B, M, D, generator=g), torch.randn(B, M, D, generator=g) * 0.5)


def test_mopoe_posterior_is_the_mixture_of_subset_products():
    experts = _experts()
    prior = DiagonalGaussian.standard(torch.zeros(3, 5))
    observed = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=torch.bool)
    q = subset_mixture(prior, experts, observed, sample=False)
    subsets = all_subsets(3)
    for b in range(3):
        inside = [k for k, s in enumerate(subsets) if all(o or not x for o, x in zip(observed[b].tolist(), s))]
        assert torch.allclose(q.weights[b, inside], torch.full((len(inside),), 1 / len(inside)))
        assert float(q.weights[b].sum()) == pytest.approx(1.0)
        for k in inside:  # each component is the PoE (with the prior expert) of its subset
            poe = product_of_experts(prior, experts, torch.tensor(subsets[k])[None].expand(3, 3))
            assert torch.allclose(q.components.mu[b, k], poe.mu[b]) and torch.allclose(q.components.logvar[b, k], poe.logvar[b])
        # Its KL is the subset average of the components' KLs.
        kls = torch.stack([DiagonalGaussian(q.components.mu[b, k], q.components.logvar[b, k]).kl(
            DiagonalGaussian(prior.mu[b], prior.logvar[b])) for k in inside])
        assert torch.allclose(q.kl(prior)[b], kls.mean(0), atol=1e-6)
    # Evaluated: the component of every given input, i.e. PoE(S).
    full = product_of_experts(prior, experts, observed)
    assert torch.allclose(q.mu, full.mu) and torch.allclose(q.logvar, full.logvar)


def test_mopoe_sampling_picks_one_subset_product_per_sample():
    experts = _experts(B=400, M=3)
    prior = DiagonalGaussian.standard(torch.zeros(400, 5))
    observed = torch.tensor([[1, 1, 0]] * 400, dtype=torch.bool)
    q = subset_mixture(prior, experts, observed, sample=True, generator=torch.Generator().manual_seed(0))
    names = [subset_name(all_subsets(3)[k], ["a", "b", "c"]) for k in q.selected.tolist()]
    counts = {n: names.count(n) for n in set(names)}
    assert set(counts) == {"a", "b", "a+b"} and min(counts.values()) > 90  # uniform over P({a, b})
    z = q.sample(0.0)
    for b in (0, 1, 2):  # the sample's mean is its selected component's PoE
        assert torch.equal(z[b], q.components.mu[b, q.selected[b]])


def test_mopoe_model_trains_on_the_mixture_and_synthesizes_from_the_subset_product():
    torch.manual_seed(0)
    cfg = apply_method(preset("tiny"), "mopoe")
    model = build_model(cfg.model)
    assert isinstance(model, MoPoEVAE)
    x = _batch(cfg.model, B=3)
    observed = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.bool)
    poe = MMHVAE(cfg.model)
    poe.load_state_dict(model.state_dict())
    model.eval(), poe.eval()
    with torch.no_grad():  # evaluated, MoPoE conditions on PoE(S), exactly the PoE network's output
        assert torch.allclose(model(x, observed, 0.0).reconstructions, poe(x, observed, 0.0).reconstructions)
    model.train()
    out = model(x, observed, 1.0, observed)
    q = out.posteriors[0]
    assert torch.allclose(out.kl[0], q.kl(DiagonalGaussian.standard(q.mu)).sum(1))
    single = q.components.kl(DiagonalGaussian(torch.zeros(3, 1, cfg.model.top_latent_dim),
                                              torch.zeros(3, 1, cfg.model.top_latent_dim))).sum(2)
    assert torch.allclose(out.kl[0][2], single[2, 1])  # one input: its only subset
    assert torch.allclose(out.kl[0][0], (single[0] * q.weights[0]).sum())  # subset average, not the sampled one
    hierarchical = apply_method(preset("tiny"), "mmhvae").model  # MoPoE here has one latent group
    hierarchical.method = "mopoe"
    with pytest.raises(ConfigError, match="mopoe"):
        build_model(hierarchical)


@pytest.mark.parametrize("preset_name", ["paper", "small", "tiny"])
def test_mvae_and_mopoe_have_no_gan_and_select_over_the_whole_run(preset_name):
    for method in ("mvae", "mopoe"):
        cfg = apply_method(preset(preset_name), method)
        assert cfg.train.use_gan is False
        assert selection_rule(cfg.train) == "best"
    assert selection_rule(apply_method(preset(preset_name), "mmhvae").train) == "final-phase"  # GAN in the last 20%
    assert selection_rule(apply_method(preset(preset_name), "no-gan").train) == "best"
    assert selection_rule(apply_method(preset(preset_name), "mmgan").train) == "best"  # GAN from step 0
    explicit = apply_method(preset(preset_name), "mvae")
    explicit.train.selection = "last"
    assert selection_rule(explicit.train) == "last"
    asks = apply_method(preset(preset_name), "mvae")
    asks.train.use_gan = True  # a user who asks for a GAN phase gets it, and the GAN-window rule
    assert selection_rule(asks.train) == "final-phase"


def test_comparison_workers_end_with_a_killed_parent(tmp_path):
    """The training workers of ``--jobs N`` get SIGTERM when the comparison's process is killed (Linux),
    instead of training on unseen and holding their run folders' locks against the rerun."""
    import os
    import signal
    import subprocess
    import sys
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    script = (
        "import multiprocessing as mp, os, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from mmhvae.compare import _end_with_parent\n"
        "if __name__ == '__main__':\n"
        "    pool = ProcessPoolExecutor(1, mp_context=mp.get_context('spawn'), initializer=_end_with_parent,\n"
        "                               initargs=(os.getpid(),))\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    pool.submit(time.sleep, 120)\n"
        "    time.sleep(120)\n")
    path = tmp_path / "parent.py"
    path.write_text(script)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    parent = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    worker = int(parent.stdout.readline())

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        return state not in ("Z", "X")  # a zombie has ended; only its parent's reaping is left

    assert alive(worker)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 20
    while alive(worker) and time.time() < deadline:
        time.sleep(0.1)
    if alive(worker):
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the worker outlived its killed parent")

"""Baselines and ablations: every method builds, runs, synthesizes, round-trips, trains; presets say what the docs say."""

from __future__ import annotations

import copy
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
    assert cfg.model.transformer_blocks == [0, 2] and cfg.model.art_blocks == 4


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
    assert mvae.model.num_levels == 1 and mvae.train.subset_policy == "weights"
    w = mvae.train.subset_weights
    assert w["us"] == w["us+t2+cet1+flair"] > w["us+t2"] > 0 and len(w) == 15
    mopoe = apply_method(paper, "mopoe")
    assert mopoe.model.num_levels == 1 and mopoe.train.subset_policy == "uniform"
    mhvae = apply_method(paper, "mhvae")
    assert mhvae.train.complete_only and mhvae.model.num_levels == 7 and mhvae.train.subset_policy == "uniform"
    assert apply_method(paper, "concat-zeros").model.fusion == "concat"
    assert apply_method(paper, "average").model.fusion == "average"
    assert apply_method(paper, "no-gan").train.use_gan is False
    mmgan = apply_method(paper, "mmgan")
    assert mmgan.model.method == "mmgan" and mmgan.model.channels == [64, 128, 256, 512, 512, 512]
    assert mmgan.train.reconstruction == "l1" and mmgan.train.gan.start_fraction == 0.0
    assert mmgan.train.gan.weight == pytest.approx(0.1 / 0.9) and mmgan.train.gan.channels == 64
    resvit = apply_method(paper, "resvit")
    m = resvit.model
    assert (m.method, m.channels, m.art_blocks, m.transformer_blocks) == ("resvit", [64, 128, 256], 9, [0, 5])
    assert (m.transformer_dim, m.transformer_layers, m.transformer_heads) == (768, 12, 12)
    assert resvit.train.gan.weight == pytest.approx(0.01) and resvit.train.optimizer == "adam"
    small = preset("small")
    b = 2 * small.model.channels[0]  # reduced presets: base width twice the preset's first stage
    assert apply_method(small, "mmgan").model.channels == [b * 2**s for s in range(len(small.model.channels))]
    assert apply_method(small, "resvit").model.channels == [b, 2 * b, 4 * b]


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

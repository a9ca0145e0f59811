"""U-HVED / U-HeMIS: model, masks, losses, metrics, checkpoints (synthetic tensors, tiny preset)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from mmhvae.config import ConfigError
from mmhvae.models.uhved import UHVED, UHVEDConfig, sliding_window_predict, uhved_preset
from mmhvae.subsets import all_subsets
from mmhvae.checkpoint import load_uhved as load_checkpoint
from mmhvae.checkpoint import save_generator
from mmhvae.train.uhved import (
    Case,
    PatchBatch,
    PatchSampler,
    UHVEDTrainer,
    labels_to_classes,
    region_dice,
    soft_dice_loss,
    uhved_loss,
)


def tiny(method: str = "uhved") -> UHVEDConfig:
    cfg = uhved_preset("uhved-tiny")
    cfg.model.method = method
    return cfg.validate()


def make_model(method: str = "uhved", seed: int = 0) -> UHVED:
    torch.manual_seed(seed)
    return UHVED.from_config(tiny(method))


def every_subset_batch(m: int = 3, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    subsets = all_subsets(m)
    torch.manual_seed(1)
    return torch.randn(len(subsets), m, size, size, size), torch.tensor(subsets, dtype=torch.bool)


def synthetic_case(name: str, shape=(20, 20, 20), available=(True, True, True), labelled=True, seed=0) -> Case:
    """A blob 'tumour' visible with modality-specific contrast."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    centre = np.array(shape)[:, None, None, None] / 2 + rng.integers(-2, 3, size=(3, 1, 1, 1))
    r = np.sqrt(((grid - centre) ** 2).sum(0))
    seg = np.where(r < 3, 3, np.where(r < 5, 1, np.where(r < 7, 2, 0))).astype(np.int64)
    contrast = np.array([[0.2, 0.8, 0.5, 0.9], [0.3, 0.4, 0.6, 1.0], [0.25, 0.5, 0.9, 0.7]], dtype=np.float32)
    images = np.stack([contrast[j][seg] for j in range(3)]) + 0.02 * rng.standard_normal((3, *shape)).astype(np.float32)
    avail = np.array(available)
    images[~avail] = 0.0
    return Case(name=name, images=images.astype(np.float32), available=avail, seg=seg if labelled else None,
                brain=np.ones(shape, bool), affine=np.eye(4))


# --------------------------------------------------------------------------------------------------
# Model: shapes and masks
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["uhved", "uhemis"])
def test_shapes_for_every_input_subset(method):
    model = make_model(method)
    images, observed = every_subset_batch()
    out = model(images, observed)
    b = images.shape[0]
    assert out.seg_logits.shape == (b, 4, 16, 16, 16)
    if method == "uhved":
        assert out.images.shape == images.shape
        assert out.kl.shape == (b,) and torch.isfinite(out.kl).all() and (out.kl >= 0).all()
    else:
        assert out.images is None and out.kl is None
    assert torch.isfinite(out.seg_logits).all()


@pytest.mark.parametrize("method", ["uhved", "uhemis"])
def test_unobserved_slots_are_never_read(method):
    """Garbage (NaN) in an unobserved slot changes nothing: masks, not values, say what is missing."""
    model = make_model(method)
    images, observed = every_subset_batch()
    garbage = images.clone()
    garbage[~observed] = float("nan")
    a = model(images, observed, temperature=0.0)
    b = model(garbage, observed, temperature=0.0)
    torch.testing.assert_close(a.seg_logits, b.seg_logits)
    if method == "uhved":
        torch.testing.assert_close(a.images, b.images)


def test_absent_modality_encoder_gets_zero_gradient():
    model = make_model()
    images, _ = every_subset_batch()
    observed = torch.tensor([[False, True, True], [False, True, False], [False, False, True]])
    out = model(images[:3], observed)
    (out.seg_logits.square().mean() + out.images.square().mean() + out.kl.mean()).backward()
    for p in list(model.encoders["t2"].parameters()) + list(model.heads["t2"].parameters()):
        assert p.grad is None or torch.count_nonzero(p.grad) == 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders["cet1"].parameters())


def test_each_sample_is_independent_of_the_batch():
    """Per-sample subsets and instance norm: a sample's output does not depend on its batch mates."""
    model = make_model()
    images, observed = every_subset_batch()
    full = model(images, observed, temperature=0.0)
    alone = model(images[4:5], observed[4:5], temperature=0.0)
    torch.testing.assert_close(full.seg_logits[4:5], alone.seg_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(full.images[4:5], alone.images, atol=1e-5, rtol=1e-4)


def test_more_modalities_tighten_the_posterior():
    """PoE with the N(0, I) prior: adding an expert can only reduce the KL-free variance, and the
    full-subset posterior is at least as concentrated as each single-modality one (seed eq. 4)."""
    from mmhvae.nn.gaussian import DiagonalGaussian, product_of_experts

    torch.manual_seed(0)
    experts = DiagonalGaussian(torch.randn(2, 3, 4, 2, 2, 2), torch.randn(2, 3, 4, 2, 2, 2))
    prior = DiagonalGaussian.standard(experts.mu[:, 0])
    one = product_of_experts(prior, experts, torch.tensor([[True, False, False]] * 2))
    all_ = product_of_experts(prior, experts, torch.ones(2, 3, dtype=torch.bool))
    assert (all_.logvar <= one.logvar + 1e-6).all() and (one.logvar <= 1e-6).all()


def test_input_errors_are_clear():
    model = make_model()
    images, observed = every_subset_batch()
    observed[2] = False
    with pytest.raises(ValueError, match="empty input subset for sample"):
        model(images, observed)
    with pytest.raises(ValueError, match="M=3"):
        model(images[:, :2], observed[:, :2])
    with pytest.raises(ValueError, match="divisible by 4"):
        model(images[..., :10], torch.ones(7, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown modality"):
        model.stack_inputs({"t1": torch.zeros(1, 16, 16, 16)})
    with pytest.raises(ValueError, match="empty input subset"):
        model.stack_inputs({})
    stacked, obs = model.stack_inputs({"flair": torch.ones(2, 16, 16, 16)})
    assert stacked.shape == (2, 3, 16, 16, 16) and obs.tolist() == [[False, False, True]] * 2


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


def test_config_yaml_round_trip_and_overrides(tmp_path):
    import yaml

    for name in ("uhved-tiny", "uhved-cpu", "uhved-paper"):
        cfg = uhved_preset(name)
        again = UHVEDConfig.from_dict(yaml.safe_load(cfg.to_yaml()))
        assert again == cfg
    path = tmp_path / "c.yaml"
    path.write_text(uhved_preset("uhved-tiny").to_yaml())
    cfg = UHVEDConfig.load(path).with_overrides(["model.method=uhemis", "train.patch_size=[32,32,16]"])
    assert cfg.model.method == "uhemis" and cfg.train.patch_size == [32, 32, 16]
    with pytest.raises(ConfigError, match="divisible"):
        cfg.with_overrides(["train.patch_size=[30,32,32]"])
    with pytest.raises(ConfigError, match="unknown key"):
        cfg.with_overrides(["model.widths=[1]"])
    with pytest.raises(ConfigError, match="method"):
        cfg.with_overrides(["model.method=hemis2"])
    with pytest.raises(ConfigError, match="regions"):
        cfg.with_overrides(["eval.regions={whole: [7]}"])
    with pytest.raises(ConfigError, match="unknown U-HVED preset"):
        uhved_preset("huge")
    for mmhvae_name in ("paper", "small", "tiny", "real-cpu"):  # the other family's presets are refused
        with pytest.raises(ConfigError, match="an MMHVAE preset, not a U-HVED one; choose one of uhved-tiny"):
            uhved_preset(mmhvae_name)


# --------------------------------------------------------------------------------------------------
# Losses and metrics
# --------------------------------------------------------------------------------------------------


def test_region_dice_matches_monai():
    from monai.metrics import DiceMetric

    rng = np.random.default_rng(0)
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    for trial in range(6):
        truth = rng.integers(0, 4, size=(12, 10, 8))
        pred = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, 4, size=truth.shape))
        if trial == 5:  # empty region in both -> 1, as MONAI with ignore_empty=False
            truth[truth == 3], pred[pred == 3] = 0, 0
        for values in ([1, 2, 3], [1, 3], [3]):
            ours = region_dice(pred, truth, values)
            p = torch.from_numpy(np.isin(pred, values))[None, None].float()
            t = torch.from_numpy(np.isin(truth, values))[None, None].float()
            ref = float(metric(p, t)[0, 0])
            assert ours == pytest.approx(ref, abs=1e-6)


def test_soft_dice_loss_matches_monai():
    from monai.losses import DiceLoss

    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, 6, 6)
    target = torch.randint(0, 4, (2, 6, 6, 6))
    ref = DiceLoss(softmax=True, to_onehot_y=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)(logits, target[:, None])
    assert float(soft_dice_loss(logits, target)) == pytest.approx(float(ref), abs=1e-6)


def test_loss_masks_missing_labels_and_missing_images():
    model = make_model()
    cfg = tiny().train
    images, observed = every_subset_batch()
    images, observed = images[:3], torch.ones(3, 3, dtype=torch.bool)
    out = model(images, observed, temperature=0.0)
    seg = torch.randint(0, 4, (3, 16, 16, 16))
    available = torch.tensor([[True, True, False], [True, True, True], [True, False, True]])
    has_seg = torch.tensor([True, False, True])
    base = uhved_loss(out, PatchBatch(images, available, seg, has_seg), cfg)
    # Whatever lies where a label or an image is missing does not change the loss.
    seg2, images2 = seg.clone(), images.clone()
    seg2[1] = 3
    images2[~available] = 1e3
    other = uhved_loss(out, PatchBatch(images2, available, seg2, has_seg), cfg)
    for k in base:
        assert float(base[k].detach()) == pytest.approx(float(other[k].detach()), rel=1e-6)
    unlabelled = uhved_loss(out, PatchBatch(images, available, seg, torch.zeros(3, dtype=torch.bool)), cfg)
    assert float(unlabelled["dice"]) == 0.0 and float(unlabelled["ce"]) == 0.0
    assert float(unlabelled["mse"].detach()) > 0


def test_labels_to_classes():
    seg = np.array([0, 4, 2, 1, 4])
    assert labels_to_classes(seg, [0, 1, 2, 4]).tolist() == [0, 3, 2, 1, 3]
    with pytest.raises(ValueError, match=r"label value\(s\) \[4\]"):
        labels_to_classes(seg, [0, 1, 2, 3], "subject X")


# --------------------------------------------------------------------------------------------------
# Patches and training
# --------------------------------------------------------------------------------------------------


def test_patch_sampler_pads_and_centres_on_tumour():
    cases = [synthetic_case("a", shape=(12, 20, 20)), synthetic_case("b", available=(False, True, False), labelled=False)]
    sampler = PatchSampler(cases, [16, 16, 16], tumour_fraction=1.0, flip=False, seed=0)
    batch = sampler.sample(8)
    assert batch.images.shape == (8, 3, 16, 16, 16) and batch.seg.shape == (8, 16, 16, 16)
    for i in range(8):
        if batch.has_seg[i]:
            assert (batch.seg[i] > 0).any()
            assert batch.available[i].all()
        else:
            assert batch.available[i].tolist() == [False, True, False] and (batch.seg[i] == 0).all()
    with pytest.raises(ValueError, match="U-HeMIS needs labels"):
        PatchSampler(cases[1:], [16, 16, 16], labelled_only=True)


def test_training_steps_reduce_loss_on_a_fixed_batch(tmp_path):
    cfg = tiny()
    cfg.train.subset_policy = "size-uniform"
    cases = [synthetic_case("a", seed=0), synthetic_case("b", available=(True, False, True), seed=1)]
    trainer = UHVEDTrainer(cfg, cases, tmp_path / "run")
    batch = PatchSampler(cases, [16, 16, 16], flip=False, seed=3).sample(2)
    full = torch.ones(2, 3, dtype=torch.bool) & batch.available

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(uhved_loss(trainer.model(batch.images, full, temperature=0.0), batch, cfg.train)["loss"])

    cfg.train.schedule, cfg.train.warmup_steps, cfg.train.lr = "constant", 0, 3e-3
    before = fixed_loss()
    for step in range(30):
        terms = trainer.step(step, batch)
        assert np.isfinite(terms["loss"])
    assert fixed_loss() < 0.8 * before


def test_subsets_are_drawn_among_available_modalities(tmp_path):
    cfg = tiny()
    cases = [synthetic_case("a", available=(False, True, True))]
    trainer = UHVEDTrainer(cfg, cases, tmp_path / "run")
    available = torch.tensor([[False, True, True]] * 200)
    drawn = trainer.policy.sample_masks(available, torch.Generator().manual_seed(0))
    assert not (drawn & ~available).any() and drawn.any(dim=1).all()
    sizes = drawn.sum(1).float()
    assert 0.4 < (sizes == 1).float().mean() < 0.6  # size-uniform: P(|r'| = 1) = 1/2 with 2 available


# --------------------------------------------------------------------------------------------------
# Inference and checkpoints
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["uhved", "uhemis"])
def test_sliding_window_output_geometry_equals_input(method):
    model = make_model(method)
    cfg = tiny(method)
    images = torch.randn(2, 3, 21, 18, 13)
    observed = torch.tensor([[True, False, True], [False, True, False]])
    probs, decoded = sliding_window_predict(model, images, observed, cfg.eval)
    assert probs.shape == (2, 4, 21, 18, 13)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 21, 18, 13))
    if method == "uhved":
        assert decoded.shape == (2, 3, 21, 18, 13)
    else:
        assert decoded is None
    assert model.training  # restored


def test_sampled_inference_is_reproducible_and_averages_draws():
    model = make_model()
    cfg = tiny().with_overrides(["eval.temperature=1.0", "eval.samples=3", "eval.seed=5"])
    images = torch.randn(1, 3, 16, 16, 16)
    observed = torch.tensor([[True, True, False]])
    torch.manual_seed(0)
    a = sliding_window_predict(model, images, observed, cfg.eval)
    state = torch.random.get_rng_state()
    b = sliding_window_predict(model, images, observed, cfg.eval)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    mean = sliding_window_predict(model, images, observed, tiny().with_overrides(["eval.temperature=0"]).eval)
    assert not torch.allclose(a[0], mean[0])


def test_checkpoint_round_trip_and_foreign_files(tmp_path):
    model = make_model()
    cfg = tiny()
    path = tmp_path / "run" / "checkpoints" / "last.safetensors"
    save_generator(path, model, cfg, step=7)
    loaded, cfg2, step = load_checkpoint(tmp_path / "run")
    assert step == 7 and cfg2 == cfg
    images, observed = every_subset_batch()
    model.eval()
    a, b = model(images, observed, temperature=0.0), loaded(images, observed, temperature=0.0)
    torch.testing.assert_close(a.seg_logits, b.seg_logits)
    torch.testing.assert_close(a.images, b.images)

    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"), metadata={"format": "mmhvae"})
    with pytest.raises(ValueError, match="not a U-HVED checkpoint"):
        load_checkpoint(tmp_path / "foreign.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(ValueError, match="not a readable safetensors checkpoint"):
        load_checkpoint(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing")


def test_fit_checkpoints_and_resumes(tmp_path):
    cfg = tiny()
    cfg.train.steps, cfg.train.checkpoint_every = 2, 1
    cases = [synthetic_case("a"), synthetic_case("b", available=(False, False, True), seed=2)]
    UHVEDTrainer(cfg, cases, tmp_path / "run").fit(progress=False, log=lambda s: None)
    _, _, step = load_checkpoint(tmp_path / "run")
    assert step == 2
    cfg.train.steps = 3
    trainer = UHVEDTrainer(cfg, cases, tmp_path / "run", resume=True)
    assert trainer.start_step == 2 and len(trainer.optimizer.state) > 0
    trainer.fit(progress=False, log=lambda s: None)
    assert load_checkpoint(tmp_path / "run")[2] == 3
    with open(tmp_path / "run" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows if r["key"] == "loss"] == [1, 2, 3]
    assert {r["key"] for r in rows} >= {"loss", "dice", "ce", "mse", "kl", "lr"}
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "checkpoints" / "last_state.pt").is_file()


def test_resume_continues_bit_identically(tmp_path):
    """N steps straight = N/2 steps, a checkpoint and a fresh process-like trainer for the other N/2:
    the same weights bit for bit (global, sampler and subset RNGs, optimizer and step restored)."""
    cfg = tiny()
    cfg.train.steps, cfg.train.checkpoint_every, cfg.train.log_every = 4, 2, 1
    cfg.train.warmup_steps, cfg.train.kl_warmup_fraction = 1, 0.5
    cases = [synthetic_case("a"), synthetic_case("b", available=(True, False, True), seed=2, labelled=False)]
    full = UHVEDTrainer(cfg, cases, tmp_path / "full")
    full.fit(progress=False, log=lambda s: None)
    part = UHVEDTrainer(cfg, cases, tmp_path / "part")
    for step in range(2):  # two steps, a checkpoint, then the trainer is thrown away (as a crash would)
        part.step(step)
    part.save(2)
    torch.manual_seed(123)  # whatever the process did meanwhile does not matter
    resumed = UHVEDTrainer(cfg, cases, tmp_path / "part", resume=True)
    assert resumed.start_step == 2
    resumed.fit(progress=False, log=lambda s: None)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    straight, again = load_checkpoint(tmp_path / "full")[0], load_checkpoint(tmp_path / "part")[0]
    for (k, a), b in zip(straight.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


def test_learning_rate_schedules_and_kl_warmup():
    from mmhvae.train.uhved import kl_warmup, learning_rate

    cfg = tiny().train
    cfg.steps, cfg.warmup_steps, cfg.lr, cfg.lr_min = 100, 10, 1e-3, 1e-5
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)
    assert learning_rate(cfg, 10) == pytest.approx(1e-3)
    assert learning_rate(cfg, 100) == pytest.approx(1e-5)
    lrs = [learning_rate(cfg, s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone decay, never a step-wise cut
    cfg.schedule = "poly"
    assert learning_rate(cfg, 55) < 1e-3 and learning_rate(cfg, 100) == pytest.approx(1e-5)
    cfg.kl_warmup_fraction = 0.5
    assert [kl_warmup(cfg, s) for s in (0, 25, 50, 99)] == [0.0, 0.5, 1.0, 1.0]
    cfg.kl_warmup_fraction = 0.0
    assert kl_warmup(cfg, 0) == 1.0

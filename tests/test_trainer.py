"""Algorithm 1 as a trainer: losses, GAN with memory, checkpoints, exact resume, divergence guard."""

from __future__ import annotations

import copy

import pytest
import torch

from mmhvae.config import preset
from mmhvae.train.batches import ArraySliceDataset, StepBatches
from mmhvae.train.gan import RealImageMemory, real_images_for
from mmhvae.train.losses import reconstruction_loss
from mmhvae.train.trainer import Trainer, TrainingDiverged


def _dataset(n=12, seed=0, missing_third=True):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    base = torch.stack([((xx - 0.3 * torch.rand(1, generator=g)) ** 2 + yy**2 < 0.4).float() for _ in range(n)])
    images = torch.stack([base, 1 - 0.5 * base, base * 0.7], dim=1)
    available = torch.ones(n, 3, dtype=torch.bool)
    if missing_third:
        available[:, 2] = False  # no subject has the third modality in this cohort
        available[::3, 1] = False
    return ArraySliceDataset(images, available)


def _cfg(**train):
    cfg = preset("tiny")
    cfg.train.steps = 4
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def test_reconstruction_loss_scores_only_available_modalities():
    x = torch.zeros(2, 3, 4, 4)
    recon = torch.ones(2, 3, 4, 4)
    avail = torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    x[0, 1] = float("nan")  # a missing slot must never leak
    assert reconstruction_loss(recon, x, avail).item() == pytest.approx((1 + 3) / 2)
    assert reconstruction_loss(recon, x.nan_to_num(), avail, "l1").item() == pytest.approx(2.0)


def test_step_batches_are_a_function_of_the_step_and_split_across_ranks():
    ds = _dataset(10)
    a = StepBatches(ds, 4, seed=3)
    assert a.indices(7) == StepBatches(ds, 4, seed=3).indices(7)
    r0, r1 = StepBatches(ds, 4, 3, rank=0, world_size=2), StepBatches(ds, 4, 3, rank=1, world_size=2)
    assert sorted(r0.indices(5) + r1.indices(5)) == sorted(a.indices(5))
    seen = [i for s in range(5) for i in a.indices(s)]  # 20 draws = 2 epochs: every index twice
    assert sorted(seen) == sorted(list(range(10)) * 2)


def test_memory_ring_buffer_and_topping_up_real_images():
    mem = RealImageMemory(3, 4)
    mem.add(torch.arange(5).float()[:, None, None].expand(5, 4, 4))
    assert len(mem) == 3 and set(mem.buffer[:, 0, 0].tolist()) == {2.0, 3.0, 4.0}
    images = torch.zeros(4, 2, 4, 4)
    avail = torch.tensor([[1, 0], [0, 0], [0, 0], [0, 0]], dtype=torch.bool)
    real = real_images_for(1, images, avail, mem, 4)
    assert real.shape == (4, 4, 4) and (real[:, 0, 0] >= 2).all()  # all four from memory
    real0 = real_images_for(0, images, avail, mem, 4)
    assert real0.shape == (4, 4, 4)  # one from the batch, topped up with three from memory


def test_training_reduces_the_loss_and_writes_a_resumable_run(tmp_path):
    cfg = _cfg(steps=30, batch_size=6, lr=3e-3, use_gan=False, checkpoint_every=10, validate_every=10)
    trainer = Trainer(cfg, tmp_path / "run", _dataset(), _dataset(6, seed=1), progress=False)
    first = trainer.training_step(trainer.batches.batch(0), 0)["img"]
    trainer.step = 1
    result = trainer.fit()
    last = trainer.history[-1]
    assert (tmp_path / "run" / "config.yaml").exists()
    assert result.best_checkpoint.exists() and result.last_checkpoint.exists()
    assert (tmp_path / "run" / "metrics.csv").read_text().count("val_psnr") == 3
    logs = trainer.training_step(trainer.batches.batch(30), 30)
    assert logs["img"] < 0.5 * first
    assert last["val_psnr"] > trainer.history[0]["val_psnr"] - 1.0


def test_gan_uses_the_memory_for_a_modality_missing_from_every_batch(tmp_path):
    cfg = _cfg(use_gan=True)
    cfg.train.gan.start_fraction = 0.0
    trainer = Trainer(cfg, tmp_path / "run", _dataset(), None, progress=False)
    batch = trainer.batches.batch(0)
    assert not batch["available"][:, 2].any()
    d2 = trainer.discriminators.critics[2]
    before = copy.deepcopy(d2.state_dict())
    trainer.training_step(batch, 0)  # memory for modality 2 is still empty: its critic must not move
    assert all(torch.equal(before[k], v) for k, v in d2.state_dict().items())
    trainer.memories[2].add(torch.rand(5, 32, 32))
    trainer.training_step(batch, 1)  # now real images of modality 2 come from the memory
    assert any(not torch.equal(before[k], v) for k, v in d2.state_dict().items())


@pytest.mark.parametrize("loss", ["hinge", "wasserstein"])
def test_other_gan_losses_run(tmp_path, loss):
    cfg = _cfg(use_gan=True)
    cfg.train.gan.start_fraction = 0.0
    cfg.train.gan.loss = loss
    trainer = Trainer(cfg, tmp_path / "run", _dataset(missing_third=False), None, progress=False)
    logs = trainer.training_step(trainer.batches.batch(0), 0)
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())


def test_gan_weight_schedule_and_kl_warmup(tmp_path):
    cfg = _cfg(steps=100, kl_warmup_fraction=0.5)
    cfg.train.gan.start_fraction = 0.8
    t = Trainer(cfg, tmp_path / "r", _dataset(), None, progress=False)
    assert t.lambda_gan(79) == 0.0 and t.lambda_gan(80) == cfg.train.gan.weight
    assert t.lambda_kl(25) == pytest.approx(cfg.train.kl_weight / 2) and t.lambda_kl(60) == cfg.train.kl_weight
    cfg.train.use_gan = False
    assert t.lambda_gan(99) == 0.0


def test_resume_continues_exactly(tmp_path):
    cfg = _cfg(steps=6, batch_size=4, checkpoint_every=3, validate_every=100)
    cfg.train.gan.start_fraction = 0.3
    full = Trainer(cfg, tmp_path / "full", _dataset(), None, progress=False)
    full.fit()
    part_cfg = copy.deepcopy(cfg)
    part = Trainer(part_cfg, tmp_path / "part", _dataset(), None, progress=False)
    part.cfg.train.steps = 6
    # run 3 steps, checkpoint, then throw the trainer away (as a crash would)
    for s in range(3):
        part.training_step(part.batches.batch(s), s)
        part.step = s + 1
    part.save()
    resumed = Trainer(cfg, tmp_path / "part", _dataset(), None, progress=False)
    assert resumed.resume() and resumed.step == 3
    resumed.fit()
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_training_time_sums_over_resumed_sessions(tmp_path):
    """The training time of a run killed after a checkpoint is not lost: it lives in the training
    state, the resumed session adds its own, and the model card reports the sum."""
    from mmhvae.train.model_card import write_model_card

    cfg = _cfg(steps=3, batch_size=4, checkpoint_every=3, validate_every=100)
    first = Trainer(copy.deepcopy(cfg), tmp_path / "run", _dataset(), None, progress=False)
    first.fit()  # then the process dies: nothing but the checkpoint survives
    spent = first.train_seconds
    assert spent > 0
    cfg.train.steps = 6
    resumed = Trainer(cfg, tmp_path / "run", _dataset(), None, progress=False)
    assert resumed.resume() and resumed.train_seconds == pytest.approx(spent)
    result = resumed.fit()
    assert result.train_seconds == resumed.train_seconds > spent
    card = write_model_card(cfg, tmp_path / "run", train_seconds=result.train_seconds,
                            execution=resumed.plan.describe())
    assert f"Training time: {result.train_seconds:.0f} s" in card.read_text()
    # "auto" precision is decided by timing on the machine: the card says what the run actually used
    assert f"precision {cfg.train.amp} (ran as: {resumed.plan.describe()})" in card.read_text()


def test_resuming_a_run_whose_network_differs_is_refused_naming_the_file(tmp_path):
    """A run interrupted under an earlier version (here: image heads with their old output GroupNorm)."""
    from mmhvae.checkpoint import CheckpointError

    cfg = _cfg(steps=4, batch_size=4, checkpoint_every=2, validate_every=100)
    old_cfg = copy.deepcopy(cfg)
    old_cfg.model.head_output_norm = True
    old = Trainer(old_cfg, tmp_path / "run", _dataset(), None, progress=False)
    old.training_step(old.batches.batch(0), 0)
    old.step = 1
    old.save()
    state_path = tmp_path / "run" / "checkpoints" / "last_state.pt"
    state = torch.load(state_path, weights_only=True)
    state["config_yaml"] = cfg.to_yaml()  # the run's config as the new version reads it: the key is absent
    torch.save(state, state_path)
    resumed = Trainer(cfg, tmp_path / "run", _dataset(), None, progress=False)
    with pytest.raises(CheckpointError, match="last_state.pt: weights do not fit"):
        resumed.resume()


def test_nan_guard_stops_with_a_clear_message(tmp_path):
    ds = _dataset()
    ds.images[0, 0, 0, 0] = float("nan")
    cfg = _cfg(batch_size=12)
    t = Trainer(cfg, tmp_path / "r", ds, None, progress=False)
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 0"):
        t.training_step(t.batches.batch(0), 0)


def test_validation_psnr_uses_a_fixed_range_and_skips_empty_slices(tmp_path):
    """An almost-empty slice must not drag the model-selection score to a huge negative PSNR."""
    from mmhvae.models.mmhvae import MMHVAEOutput

    cfg = _cfg()
    val = _dataset(6, seed=1, missing_third=False)
    val.images[0, 0] = 0.0  # an empty slice of modality 0: not scored
    val.images[1, 0] = 0.0
    val.images[1, 0, 0, 0] = 1e-3  # a near-empty one: scored against the modality's range, not its own peak
    trainer = Trainer(cfg, tmp_path / "run", _dataset(), val, progress=False)

    class OffByOneHundredth(torch.nn.Module):  # every modality exactly, plus 0.01: MSE 1e-4 everywhere
        def forward(self, images, observed, temperature=0.0):
            return MMHVAEOutput(reconstructions=images + 0.01, kl=[], latents=[])

    trainer.model = OffByOneHundredth()
    # Ranges 1.0, 1.0 and 0.7: PSNR 40, 40 and 36.9 dB. A per-slice peak would score the near-empty
    # slice at -20 dB and the empty one at -80 dB.
    score = trainer.validate()
    assert score is not None and 36.0 < score < 40.01


class _MeanAbsDistance(torch.nn.Module):
    """A stand-in for LPIPS with a closed form: the mean |x - y| of two images mapped to [-1, 1]."""

    def forward(self, x, y):
        assert x.shape == y.shape and x.shape[1] == 1 and x.min() >= -1 and x.max() <= 1
        return (x - y).abs().flatten(1).mean(1)


def test_validation_lpips_scores_the_same_outputs_and_reaches_the_run_log(tmp_path, monkeypatch):
    """train.validate_lpips: every scored (slice, target) pair through the perceptual metric on the
    evaluator's [0, range] -> [-1, 1] mapping, logged as val_lpips; model selection stays on PSNR."""
    import csv

    import mmhvae.eval.lpips as lpips_module
    from mmhvae.models.mmhvae import MMHVAEOutput

    monkeypatch.setattr(lpips_module, "load_lpips", lambda **kw: _MeanAbsDistance())
    cfg = _cfg(steps=2, validate_every=1, checkpoint_every=100, validate_lpips=True)
    val = _dataset(6, seed=1, missing_third=False)
    trainer = Trainer(cfg, tmp_path / "run", _dataset(), val, progress=False)

    class OffByOneHundredth(torch.nn.Module):
        def forward(self, images, observed, temperature=0.0):
            return MMHVAEOutput(reconstructions=images + 0.01, kl=[], latents=[])

    real_model = trainer.model
    trainer.model = OffByOneHundredth()
    trainer.validate()
    # Every slice is scored for every target (the output ignores the subset): the closed form is the
    # mean over (slice, target) of |clip(2 (t + 0.01) / range - 1) - (2 t / range - 1)|, ranges 1, 1, 0.7.
    t = val.images
    span = t.flatten(2).amax(2).amax(0)[None, :, None, None]
    expected = ((2 * (t + 0.01) / span - 1).clamp(-1, 1) - (2 * t / span - 1)).abs().flatten(2).mean(2).mean()
    assert trainer.val_lpips == pytest.approx(float(expected), rel=1e-5)
    assert 0 < trainer.val_lpips < 0.0286  # < 0.02 / 0.7: the clip at +1 eats the peak voxels' error
    trainer.model = real_model
    trainer.fit()
    with open(tmp_path / "run" / "metrics.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["key"] in ("val_psnr", "val_lpips")]
    assert [(r["step"], r["key"]) for r in rows] == [("1", "val_psnr"), ("1", "val_lpips"),
                                                      ("2", "val_psnr"), ("2", "val_lpips")]
    assert all(0 <= float(r["value"]) <= 2 for r in rows if r["key"] == "val_lpips")
    assert "val_lpips" in trainer.history[-1]


def test_validation_lpips_off_by_default_and_without_weights(tmp_path, monkeypatch):
    import mmhvae.eval.lpips as lpips_module

    assert _cfg().train.validate_lpips is False and preset("real-cpu").train.validate_lpips is True
    monkeypatch.setattr(lpips_module, "load_lpips", lambda **kw: None)  # weights not to be had
    trainer = Trainer(_cfg(validate_lpips=True), tmp_path / "run", _dataset(), _dataset(6, seed=1), progress=False)
    assert trainer.validate() is not None and trainer.val_lpips is None
    # Images below AlexNet's 32² minimum: a warning at the start, PSNR only, never an error mid-run.
    monkeypatch.setattr(lpips_module, "load_lpips", lambda **kw: _MeanAbsDistance())
    cfg = _cfg(validate_lpips=True)
    cfg.model.image_size = 16
    small = ArraySliceDataset(_dataset(6, seed=1).images[..., :16, :16].contiguous(), torch.ones(6, 3, dtype=torch.bool))
    with pytest.warns(RuntimeWarning, match="at least 32"):
        trainer = Trainer(cfg, tmp_path / "run16", small, small, progress=False)
    assert trainer.validate() is not None and trainer.val_lpips is None


@pytest.mark.parametrize("selection", ["final-phase", "best", "last"])
def test_model_selection_window(selection, tmp_path):
    """With the GAN on from step 5 of 8, "final-phase" only keeps models trained with it."""
    cfg = _cfg(steps=8, batch_size=4, validate_every=2, checkpoint_every=100, use_gan=True, selection=selection)
    cfg.train.gan.start_fraction = 0.5  # GAN from step index 4: models after 5+ steps
    trainer = Trainer(cfg, tmp_path / "run", _dataset(), _dataset(6, seed=1), progress=False)
    scores = iter([30.0, 29.0, 20.0, 21.0])  # validation at steps 2, 4, 6, 8: PSNR drops with the GAN
    trainer.validate = lambda: next(scores)
    trainer.fit()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "run" / "checkpoints" / "best.safetensors"), "pt") as f:
        meta = f.metadata()
    best_step = int(meta["step"])
    if selection == "final-phase":
        assert trainer.selection_start == 4 and best_step == 8  # 21 > 20 inside the window; 30 (no GAN) refused
    elif selection == "best":
        assert best_step == 2
    else:
        assert best_step == 8


def test_selection_on_validation_lpips(tmp_path, monkeypatch):
    """train.select_metric=lpips: best.safetensors is the model of lowest validation LPIPS, where PSNR
    would pick another; the model card names the metric. Without validate_lpips, or without the LPIPS
    weights, the run is refused before it trains."""
    import mmhvae.eval.lpips as lpips_module
    from mmhvae.config import ConfigError
    from mmhvae.train.model_card import write_model_card
    from safetensors import safe_open

    asked = []
    monkeypatch.setattr(lpips_module, "load_lpips", lambda **kw: asked.append(kw) or _MeanAbsDistance())
    cfg = _cfg(steps=8, batch_size=4, validate_every=2, checkpoint_every=100, validate_lpips=True,
               select_metric="lpips", selection="best")
    trainer = Trainer(cfg, tmp_path / "run", _dataset(), _dataset(6, seed=1), progress=False)
    assert asked and asked[0].get("allow_download", True)  # a fresh machine fetches the weights, as evaluation does
    scores = iter([(30.0, 0.20), (29.0, 0.10), (31.0, 0.15), (20.0, 0.12)])  # (PSNR, LPIPS) at 2, 4, 6, 8

    def fake_validate():
        psnr, trainer.val_lpips = next(scores)
        return psnr

    trainer.validate = fake_validate
    trainer.fit()
    with safe_open(str(tmp_path / "run" / "checkpoints" / "best.safetensors"), "pt") as f:
        assert int(f.metadata()["step"]) == 4  # PSNR would have picked step 6
    assert trainer.best_step == 4 and trainer.best_score == pytest.approx(-0.10)
    card = write_model_card(cfg, tmp_path / "run", best_step=trainer.best_step, best_score=trainer.best_score)
    assert "step 4, selected on validation LPIPS: 10.0 %" in card.read_text()

    off = _cfg(select_metric="lpips")
    with pytest.raises(ConfigError, match="validate_lpips"):
        off.validate()
    monkeypatch.setattr(lpips_module, "load_lpips", lambda **kw: None)
    with pytest.raises(ConfigError, match="no validation LPIPS"):
        Trainer(cfg, tmp_path / "run2", _dataset(), _dataset(6, seed=1), progress=False)
    bad = _cfg()
    bad.train.select_metric = "ssim"
    with pytest.raises(ConfigError, match="select_metric"):
        bad.validate()


def test_unknown_selection_is_refused():
    from mmhvae.config import ConfigError

    cfg = preset("tiny")
    cfg.train.selection = "median"
    with pytest.raises(ConfigError, match="train.selection"):
        cfg.validate()


def test_a_run_folder_is_trained_by_one_process_at_a_time(tmp_path):
    """While one trainer holds RUN (here: the lock taken by hand), another training of RUN is refused
    with the holder's pid, before it reads data or writes anything; once the holder ends, it trains."""
    import os

    from mmhvae.train.run_lock import RunInUseError, RunLock
    from mmhvae.train.trainer import train

    cfg = _cfg(steps=1)
    run = tmp_path / "run"
    holder = RunLock(run).acquire()
    with pytest.raises(RunInUseError, match=f"being trained by another process \\(pid {os.getpid()}\\)"):
        train(cfg, run)
    assert sorted(p.name for p in run.iterdir()) == [".train.lock"]  # nothing else written
    holder.release()
    RunLock(run).acquire().release()  # free again once the holder let go

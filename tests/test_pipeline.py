"""End to end as a user runs it: built-in cohort -> train -> synthesize -> evaluate, plus resume and DDP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mmhvae.cli import main

TINY = ["train.steps=6", "train.checkpoint_every=3", "train.validate_every=3", "train.batch_size=4",
        "data.balance_patterns=true"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from mmhvae.data.phantom import make_cohort

    return make_cohort(tmp_path_factory.mktemp("cohort"), subjects=8, seed=0, shape=(32, 32, 12), workers=1)


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "--config", "tiny", "--cohort", str(cohort), "--out", str(run), "--no-progress", *TINY]) == 0
    return run


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_train_writes_config_checkpoints_and_logs(trained):
    from mmhvae.config import ExperimentConfig

    cfg = ExperimentConfig.load(trained / "config.yaml")
    assert cfg.train.steps == 6 and cfg.model.modalities == ["us", "t2", "cet1"]
    for name in ("best.safetensors", "last.safetensors", "last_state.pt"):
        assert (trained / "checkpoints" / name).is_file()
    assert "val_psnr" in (trained / "metrics.csv").read_text()
    assert any((trained / "tensorboard").iterdir())


def test_synthesize_cli_keeps_geometry_and_writes_uncertainty(trained, cohort, tmp_path):
    subj = cohort.parent / "phantom004"
    t2 = subj / "phantom004-t2.nii.gz"
    out = tmp_path / "synth"
    rc = main(["synthesize", "--checkpoint", str(trained), "--input", f"t2={t2}", "--out", str(out),
               "--temperature", "0.7", "--samples", "3"])
    assert rc == 0
    ref = nib.load(t2)
    for name in ("us", "t2", "cet1", "us_std"):
        img = nib.load(out / f"{name}.nii.gz")
        assert img.shape == ref.shape and np.allclose(img.affine, ref.affine)
        assert img.get_data_dtype() == np.float32 and np.isfinite(img.get_fdata()).all()
    assert nib.load(out / "us_std.nii.gz").get_fdata().max() > 0  # samples differ at tau > 0


def test_synthesize_compile_falls_back_to_eager_when_compilation_fails(trained, cohort, tmp_path, compile_raises,
                                                                       capsys):
    t2 = cohort.parent / "phantom004" / "phantom004-t2.nii.gz"
    assert main(["synthesize", "--checkpoint", str(trained), "--input", f"t2={t2}", "--out", str(tmp_path / "eager"),
                 "--temperature", "0"]) == 0
    compile_raises("backend compiler failed", from_module="torch._dynamo.exc")
    capsys.readouterr()
    assert main(["synthesize", "--checkpoint", str(trained), "--input", f"t2={t2}", "--out",
                 str(tmp_path / "compiled"), "--temperature", "0", "--compile"]) == 0
    assert "torch.compile failed" in capsys.readouterr().err  # told, then run eagerly
    for name in ("us", "cet1"):
        assert np.array_equal(nib.load(tmp_path / "eager" / f"{name}.nii.gz").get_fdata(),
                              nib.load(tmp_path / "compiled" / f"{name}.nii.gz").get_fdata())


def test_synthesize_in_bf16_stays_close_to_float32(trained, cohort, tmp_path):
    t2 = cohort.parent / "phantom004" / "phantom004-t2.nii.gz"
    for amp in ("fp32", "bf16"):
        assert main(["synthesize", "--checkpoint", str(trained), "--input", f"t2={t2}", "--out", str(tmp_path / amp),
                     "--temperature", "0", "--amp", amp, "--targets", "cet1"]) == 0
    exact = nib.load(tmp_path / "fp32" / "cet1.nii.gz").get_fdata()
    rounded = nib.load(tmp_path / "bf16" / "cet1.nii.gz")
    assert rounded.get_data_dtype() == np.float32 and np.isfinite(rounded.get_fdata()).all()
    spread = np.abs(exact).max()
    assert 0 < np.abs(rounded.get_fdata() - exact).max() < 0.1 * spread  # bf16 rounding, not another result


def test_synthesize_volume_is_deterministic_at_temperature_zero(trained, cohort):
    from mmhvae.infer import load_model, synthesize_volume

    model = load_model(trained)
    inputs = {"us": cohort.parent / "phantom004" / "phantom004-us.nii.gz"}
    a = synthesize_volume(model, inputs, temperature=0.0)["cet1"].get_fdata()
    b = synthesize_volume(model, inputs, temperature=0.0)["cet1"].get_fdata()
    assert np.array_equal(a, b)


def test_synthesize_refuses_bad_inputs_with_clear_messages(trained, cohort, tmp_path, capsys):
    subj = cohort.parent / "phantom004"
    other = tmp_path / "shifted.nii.gz"
    img = nib.load(subj / "phantom004-t2.nii.gz")
    aff = img.affine.copy()
    aff[0, 3] += 5
    nib.save(nib.Nifti1Image(img.get_fdata().astype(np.float32), aff), other)
    rc = main(["synthesize", "--checkpoint", str(trained), "--input", f"us={subj / 'phantom004-us.nii.gz'}",
               "--input", f"t2={other}", "--out", str(tmp_path / "o")])
    assert rc == 1 and "different affines" in capsys.readouterr().err
    rc = main(["synthesize", "--checkpoint", str(trained), "--input", f"pet={other}", "--out", str(tmp_path / "o")])
    assert rc == 1 and "unknown modality" in capsys.readouterr().err
    bad = tmp_path / "nan.nii.gz"
    data = img.get_fdata().astype(np.float32)
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), bad)
    rc = main(["synthesize", "--checkpoint", str(trained), "--input", f"t2={bad}", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "nan.nii.gz" in err


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path, trained):
    from mmhvae.checkpoint import CheckpointError, load_generator

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_generator(bad)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "something-else"})
    with pytest.raises(CheckpointError, match="not an mmhvae generator checkpoint"):
        load_generator(foreign)
    state = tmp_path / "last_state.pt"
    state.write_bytes(b"\x00garbage")
    from mmhvae.checkpoint import load_state

    with pytest.raises(CheckpointError, match="corrupt or foreign"):
        load_state(state)


def test_evaluate_cli_covers_every_subset_and_target(trained, cohort, tmp_path):
    from mmhvae.eval.tables import read_csv

    out = tmp_path / "report"
    rc = main(["evaluate", "--checkpoint", f"ours={trained}", "--checkpoint", f"again={trained}",
               "--cohort", str(cohort), "--split", "test", "--out", str(out), "--no-lpips"])
    assert rc == 0
    rows = read_csv(out / "metrics.csv")
    subsets = {r["subset"] for r in rows}
    assert len(subsets) == 7  # the test subject has us, t2, cet1: 2^3 - 1 subsets
    assert {r["target"] for r in rows} == {"us", "t2", "cet1"}
    assert {r["method"] for r in rows} == {"ours", "again"}
    table = (out / "table.md").read_text()
    assert "●" in table and "○" in table and "Average" in table
    assert list(out.glob("grid_*.png")) and list(out.glob("temperature_*.png")) and list(out.glob("latent_pca_*.png"))


def test_evaluate_warns_when_the_model_was_trained_with_masks_and_the_cohort_has_none(trained, cohort, tmp_path):
    import csv

    rows = list(csv.DictReader(cohort.open()))
    assert "mask" in rows[0]  # the built-in cohort has brain masks, so the model trained with them
    unmasked = tmp_path / "manifest.csv"
    with unmasked.open("w", newline="") as f:
        fields = [k for k in rows[0] if k != "mask"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: str((cohort.parent / row[k]).resolve()) if row[k].endswith(".nii.gz") else row[k]
                             for k in fields})
    from mmhvae.eval.runner import evaluate_checkpoints

    with pytest.warns(UserWarning, match="trained with brain masks"):
        evaluate_checkpoints({"ours": trained}, unmasked, "test", tmp_path / "report", max_subjects=1,
                             figures=False, progress=False)


def test_training_a_run_folder_another_process_trains_is_refused(cohort, tmp_path):
    """Two trainings of one run folder (the command started twice, or orphaned workers of a killed
    comparison) would interleave metrics and overwrite checkpoints: the second is refused, naming the
    folder and the holder's pid, with no traceback; the lock dies with its holder."""
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mmhvae.train.run_lock import RunLock; "
         f"RunLock({str(run)!r}).acquire(); print('locked', flush=True); time.sleep(120)"],
        env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = ["--config", "tiny", "--cohort", str(cohort), "--no-progress", "--out", str(run), "--resume",
                "train.steps=2", "train.validate_every=100", "train.batch_size=4"]
        res = subprocess.run([sys.executable, "-m", "mmhvae.cli", "train", *args], env=_env(),
                             capture_output=True, text=True)
        assert res.returncode != 0
        assert f"being trained by another process (pid {holder.pid})" in res.stderr
        assert "Traceback" not in res.stderr
    finally:
        holder.kill()
        holder.wait()
    res = subprocess.run([sys.executable, "-m", "mmhvae.cli", "train", *args], env=_env(), capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    assert (run / "checkpoints" / "last.safetensors").is_file()


def test_killed_training_resumes_to_the_same_weights(cohort, tmp_path):
    from safetensors.torch import load_file

    args = ["--config", "tiny", "--cohort", str(cohort), "--no-progress", "train.steps=40",
            "train.checkpoint_every=5", "train.validate_every=100", "train.batch_size=4", "train.seed=3"]
    cmd = [sys.executable, "-m", "mmhvae.cli", "train"]
    full, part = tmp_path / "full", tmp_path / "part"
    subprocess.run(cmd + ["--out", str(full)] + args, check=True, env=_env(), capture_output=True)
    proc = subprocess.Popen(cmd + ["--out", str(part)] + args, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = part / "checkpoints" / "last_state.pt"
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(state, weights_only=True)["step"]
    assert killed_at < 40, "training finished before it could be interrupted"
    res = subprocess.run(cmd + ["--out", str(part), "--resume"] + args, env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert f"resumed from step {killed_at}" in res.stdout
    a = load_file(str(full / "checkpoints" / "last.safetensors"))
    b = load_file(str(part / "checkpoints" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_torchrun_ddp_with_gloo_on_two_processes(cohort, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "mmhvae.cli", "train", "--config", "tiny", "--cohort", str(cohort), "--out", str(run),
           "--no-progress", *TINY]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (run / "checkpoints" / "last.safetensors").is_file()
    assert res.stdout.count("best checkpoint") == 1  # only rank 0 reports and writes


def test_demo_command_runs_end_to_end_at_toy_size(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--subjects", "8", "--shape", "32", "32", "12", "--steps", "2",
               "eval.lpips=false", "train.validate_every=1"])
    assert rc == 0
    for name in ("table.md", "metrics.csv", "baseline.md"):
        assert (out / "report" / name).is_file()
    assert list((out / "report").glob("grid_*.png"))
    text = capsys.readouterr().out
    assert "mean-image PSNR" in text and "demo finished" in text
    from mmhvae.commands.demo import find_real_cases
    from mmhvae.pretrained import builtin_path

    if builtin_path(required=False) is not None:  # the converged model beside the short run, same subjects
        assert "pretrained PSNR" in (out / "report" / "baseline.md").read_text()
        if find_real_cases(None) is not None:  # ../shared/data/real beside the clone: synthesis of a real case
            pngs = list((out / "real").glob("*_from_t2.png"))
            assert len(pngs) == 1
            assert {p.name for p in pngs[0].with_suffix("").parent.glob("*/*.nii.gz")} >= {"cet1.nii.gz", "flair.nii.gz"}

"""Issue 15 points 6-7: numbers and weights are checked; one error layer prints one line, not a traceback.

Everything runs through ``mmhvae.cli.main`` as a user would; the checkpoints are real (untrained)
tiny generators.
"""

from __future__ import annotations

import errno

import nibabel as nib
import numpy as np
import pytest
import torch

from mmhvae.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from mmhvae.config import preset
    from mmhvae.models import build_model
    from mmhvae.checkpoint import save_generator

    config = preset("tiny")  # us, t2, cet1 at 32 x 32
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_generator(path, build_model(config.model), config, step=0)
    return path


@pytest.fixture()
def volume(tmp_path):
    rng = np.random.default_rng(0)
    data = np.zeros((32, 32, 4), np.float32)
    data[6:26, 6:26] = rng.uniform(50, 100, (20, 20, 4))
    path = tmp_path / "in" / "t2.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0])), path)
    return path


def _one_error_line(err: str, *needles: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1, err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


# --------------------------------------------------------------------------------------------------
# The hierarchy
# --------------------------------------------------------------------------------------------------


def test_project_errors_share_one_base_and_keep_their_old_import_paths():
    from mmhvae import errors
    from mmhvae.cli import UserError
    from mmhvae.config import ConfigError
    from mmhvae.data.cohort import CohortError
    from mmhvae.data.harmonize import HarmonizationError
    from mmhvae.data.nifti import NiftiError
    from mmhvae.downstream.nnunet_export import NnunetDatasetError
    from mmhvae.checkpoint import CheckpointError
    from mmhvae.train.trainer import TrainingDiverged

    assert CohortError is errors.CohortError and NiftiError is errors.NiftiError
    assert ConfigError is errors.ConfigError and CheckpointError is errors.CheckpointError
    assert UserError is errors.UserError
    for cls in (CohortError, NiftiError, HarmonizationError, NnunetDatasetError):
        assert issubclass(cls, errors.InputDataError)
    for cls in (errors.InputDataError, CheckpointError, ConfigError, UserError, errors.OutputError,
                errors.EnvironmentSetupError, TrainingDiverged):
        assert issubclass(cls, errors.MmhvaeError)
    # Code written against the earlier contract (ValueError) still catches them.
    for cls in (CohortError, NiftiError, CheckpointError, ConfigError, UserError, errors.OutputError):
        assert issubclass(cls, ValueError)


# --------------------------------------------------------------------------------------------------
# Numbers: refused at the command line or in the config, one line
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option, value", [
    ("--temperature", "nan"), ("--temperature", "inf"), ("--temperature", "-0.5"),
    ("--samples", "0"), ("--batch-size", "0"),
])
def test_synthesize_refuses_bad_numbers_before_any_work(option, value, checkpoint, volume, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["synthesize", "--checkpoint", str(checkpoint), "--input", f"t2={volume}",
              "--out", str(tmp_path / "out"), option, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override, message", [
    ("train.steps=0", "train.steps must be >= 1"),
    ("train.draws=0", "train.draws must be >= 1"),
    ("train.batch_size=0", "train.batch_size must be >= 1"),
    ("train.checkpoint_every=0", "train.checkpoint_every must be >= 1"),
    ("train.amp=fp16", "train.amp must be one of auto, bf16, fp32"),
    ("eval.temperature=.nan", "eval.temperature must be a finite number >= 0"),
])
def test_train_refuses_bad_numbers_in_the_config(override, message, tmp_path, capsys):
    rc = main(["train", "--config", "tiny", "--out", str(tmp_path / "run"), "--no-progress", override])
    assert rc == 1
    _one_error_line(capsys.readouterr().err, message)
    assert not (tmp_path / "run").exists()


def test_uhved_train_refuses_zero_steps(tmp_path, capsys):
    rc = main(["train", "--method", "uhved", "--config", "uhved-tiny", "--cohort", str(tmp_path),
               "--out", str(tmp_path / "run"), "train.steps=0"])
    assert rc == 1
    _one_error_line(capsys.readouterr().err, "train.steps must be >= 1")


@pytest.mark.parametrize("args, message", [
    (["--method", "uhved", "--config", "small"], "'small': an MMHVAE preset, not a U-HVED one; choose one of uhved-tiny"),
    (["--method", "uhemis", "--config", "tiny"], "'tiny': an MMHVAE preset, not a U-HVED one; choose one of uhved-tiny"),
    (["--config", "uhved-tiny"], "--config uhved-tiny is a U-HVED preset: add --method uhved"),
])
def test_train_refuses_a_preset_of_the_other_family(args, message, tmp_path, capsys):
    rc = main(["train", *args, "--cohort", str(tmp_path), "--out", str(tmp_path / "run")])
    assert rc == 1
    _one_error_line(capsys.readouterr().err, message)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------------
# Weights: non-finite, ill-fitting, corrupt, foreign
# --------------------------------------------------------------------------------------------------


def _synthesize(checkpoint, volume, out):
    return main(["synthesize", "--checkpoint", str(checkpoint), "--input", f"t2={volume}", "--out", str(out)])


def test_checkpoint_with_nan_weights_is_refused_naming_the_file(tmp_path, volume, capsys):
    from mmhvae.config import preset
    from mmhvae.models import build_model
    from mmhvae.checkpoint import save_generator

    config = preset("tiny")
    model = build_model(config.model)
    with torch.no_grad():
        next(p for p in model.parameters() if p.ndim > 1).view(-1)[0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_generator(path, model, config, step=3)
    assert _synthesize(path, volume, tmp_path / "out") == 1
    _one_error_line(capsys.readouterr().err, "nan.safetensors", "NaN or Inf")
    assert not (tmp_path / "out").exists()


def test_checkpoint_whose_weights_do_not_fit_its_config_is_refused(tmp_path, volume, capsys):
    import dataclasses

    from mmhvae.config import preset
    from mmhvae.models import build_model
    from mmhvae.checkpoint import save_generator

    config = preset("tiny")
    wider = build_model(dataclasses.replace(config.model, channels=[16, 16, 16]))
    path = tmp_path / "mismatch.safetensors"
    save_generator(path, wider, config, step=1)  # weights of another width, the tiny config embedded
    assert _synthesize(path, volume, tmp_path / "out") == 1
    _one_error_line(capsys.readouterr().err, "mismatch.safetensors", "do not fit", "shape")


def test_corrupt_and_foreign_files_are_refused_without_torch_advice(tmp_path, volume, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"definitely not a checkpoint")
    assert _synthesize(bad, volume, tmp_path / "out") == 1
    _one_error_line(capsys.readouterr().err, "bad.safetensors")

    # A pickle holding a foreign object: torch's weights_only error suggests weights_only=False.
    from mmhvae.checkpoint import CheckpointError, load_state

    state = tmp_path / "last_state.pt"
    torch.save({"step": 1, "model": {}, "payload": argparse_namespace()}, state)
    with pytest.raises(CheckpointError) as caught:
        load_state(state)
    assert "last_state.pt" in str(caught.value) and "weights_only" not in str(caught.value)


def argparse_namespace():
    import argparse

    return argparse.Namespace(a=1)  # not on torch's weights_only allow-list


# --------------------------------------------------------------------------------------------------
# Environment and operating-system errors become one line; bugs keep their traceback
# --------------------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_one_line(checkpoint, volume, tmp_path, capsys):
    rc = main(["synthesize", "--checkpoint", str(checkpoint), "--input", f"t2={volume}",
               "--out", str(tmp_path / "out"), "--device", "cuda"])
    assert rc == 1
    _one_error_line(capsys.readouterr().err, "cuda", "--device cpu")
    rc = main(["train", "--config", "tiny", "--cohort", str(tmp_path), "--out", str(tmp_path / "run"),
               "train.device=cuda"])
    assert rc == 1
    _one_error_line(capsys.readouterr().err, "--device cpu")


@pytest.mark.parametrize("exc, needles", [
    (PermissionError(errno.EACCES, "Permission denied", "/data/cohort.csv"), ["/data/cohort.csv", "permissions"]),
    (FileExistsError(errno.EEXIST, "File exists", "/out/t2.nii.gz"), ["/out/t2.nii.gz", "--overwrite"]),
    (OSError(errno.ENOSPC, "No space left on device", "/out/us.nii.gz"), ["/out/us.nii.gz", "disk is full"]),
])
def test_operating_system_errors_are_one_line(exc, needles, monkeypatch, tmp_path, capsys):
    import mmhvae.data.cohort as cohort

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(cohort.Cohort, "load", classmethod(lambda cls, *a, **k: fail()))
    rc = main(["cohort", "summary", str(tmp_path)])
    assert rc == 1
    _one_error_line(capsys.readouterr().err, "mmhvae cohort summary: error:", *needles)


def test_a_real_bug_keeps_its_traceback_and_debug_shows_user_errors(monkeypatch, tmp_path, capsys):
    import mmhvae.data.cohort as cohort
    from mmhvae.errors import CohortError

    def bug(cls, *args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cohort.Cohort, "load", classmethod(bug))
    with pytest.raises(ZeroDivisionError):
        main(["cohort", "summary", str(tmp_path)])

    def user(cls, *args, **kwargs):
        raise CohortError("bad cohort")

    monkeypatch.setattr(cohort.Cohort, "load", classmethod(user))
    assert main(["cohort", "summary", str(tmp_path)]) == 1
    with pytest.raises(CohortError):
        main(["--debug", "cohort", "summary", str(tmp_path)])


def test_multi_line_messages_are_printed_on_one_line(monkeypatch, tmp_path, capsys):
    import mmhvae.data.cohort as cohort
    from mmhvae.errors import CohortError

    def user(cls, *args, **kwargs):
        raise CohortError("first part\nsecond part")

    monkeypatch.setattr(cohort.Cohort, "load", classmethod(user))
    assert main(["cohort", "summary", str(tmp_path)]) == 1
    line = _one_error_line(capsys.readouterr().err, "first part", "second part")
    assert line.count("\n") == 0

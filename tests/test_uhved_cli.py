"""``mmhvae uhved train / predict / evaluate`` end to end on a tiny built-in cohort and a real crop."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from mmhvae.cli import main
from mmhvae.models.uhved import UHVED, uhved_preset
from mmhvae.checkpoint import save_generator


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from mmhvae.data.phantom import make_cohort

    out = tmp_path_factory.mktemp("uhved_cohort")
    return make_cohort(out, subjects=4, seed=3, shape=(24, 24, 16), missingness="complete", workers=1)


@pytest.fixture(scope="module")
def run_dir(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("uhved_run")
    rc = main(["uhved", "train", "--cohort", str(cohort), "--out", str(out), "--config", "uhved-tiny",
               "--split", "all", "--no-progress", "train.steps=2"])
    assert rc == 0
    return out


def test_train_writes_a_reproducible_run_folder(run_dir):
    # The shared run folder: config.yaml, checkpoints/ (generator + weights-only training state), metrics.csv.
    for name in ("config.yaml", "checkpoints/last.safetensors", "checkpoints/last_state.pt", "metrics.csv"):
        assert (run_dir / name).is_file(), name
    assert "data:" in (run_dir / "config.yaml").read_text()


def test_predict_keeps_the_input_geometry(run_dir, cohort, tmp_path):
    root = cohort.parent
    name = "phantom000"
    t2 = nib.load(root / name / f"{name}-t2.nii.gz")
    # An odd-sized crop with a shifted affine: the outputs must follow it exactly.
    crop_t2, crop_fl = (nib.load(root / name / f"{name}-{m}.nii.gz").slicer[1:22, 2:21, 1:14] for m in ("t2", "flair"))
    nib.save(crop_t2, tmp_path / "t2.nii.gz")
    nib.save(crop_fl, tmp_path / "flair.nii.gz")
    out = tmp_path / "pred"
    rc = main(["uhved", "predict", "--checkpoint", str(run_dir), "--input", f"t2={tmp_path / 't2.nii.gz'}",
               "--input", f"flair={tmp_path / 'flair.nii.gz'}", "--out", str(out)])
    assert rc == 0
    for m in ("seg", "t2", "cet1", "flair"):
        img = nib.load(out / f"{m}.nii.gz")
        assert img.shape == crop_t2.shape == (21, 19, 13)
        np.testing.assert_allclose(img.affine, crop_t2.affine, atol=1e-5)
        assert not np.allclose(img.affine, t2.affine)
    assert set(json.loads((out / "harmonization.json").read_text())) == {"t2", "flair", "inputs"}
    seg = np.asarray(nib.load(out / "seg.nii.gz").dataobj)
    assert seg.dtype == np.uint8 and set(np.unique(seg)) <= {0, 1, 2, 3}


def test_predict_refuses_bad_inputs(run_dir, cohort, tmp_path, capsys):
    t2 = cohort.parent / "phantom000" / "phantom000-t2.nii.gz"
    assert main(["uhved", "predict", "--checkpoint", str(run_dir), "--input", f"t1={t2}", "--out", str(tmp_path)]) == 1
    assert "unknown modality 't1'" in capsys.readouterr().err
    assert main(["uhved", "predict", "--checkpoint", str(run_dir), "--input", f"t2={tmp_path / 'none.nii.gz'}", "--out", str(tmp_path)]) == 1
    assert "file not found" in capsys.readouterr().err
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(foreign))
    assert main(["uhved", "predict", "--checkpoint", str(foreign), "--input", f"t2={t2}", "--out", str(tmp_path)]) == 1
    assert "not a U-HVED checkpoint" in capsys.readouterr().err


def test_evaluate_writes_the_subset_tables(run_dir, cohort, tmp_path):
    out = tmp_path / "eval"
    rc = main(["uhved", "evaluate", "--checkpoint", str(run_dir), "--cohort", str(cohort), "--split", "all",
               "--out", str(out), "eval.window=[24,24,16]"])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "dice_table.csv")))
    assert len(rows) == 7  # 2^3 - 1 input subsets
    assert {r["subset"] for r in rows} >= {"t2", "cet1+flair", "t2+cet1+flair"}
    assert all(0.0 <= float(r["dice_whole_mean"]) <= 100.0 for r in rows)
    md = (out / "dice_table.md").read_text()
    assert "| ● | ○ | ○ |" in md and "Means" in md
    comp = list(csv.DictReader(open(out / "completion_table.csv")))
    assert len(comp) == 9  # each subset x each modality it misses: 3*2 + 3*1
    assert all(np.isfinite(float(r["psnr_mean"])) for r in comp)


def test_real_case_crop_inference(real_data_dir, tmp_path):
    """A crop of a real BraTS-space case (TCGA names: t2, t1c, fla) through predict."""
    case = real_data_dir / "TCGA-DU-7294"
    if not case.is_dir():
        pytest.skip(f"{case} not found")
    crop = (slice(70, 150), slice(80, 160), slice(50, 98))
    paths = {}
    for suffix, modality in (("t2", "t2"), ("t1c", "cet1"), ("fla", "flair")):
        img = nib.load(case / f"TCGA-DU-7294-{suffix}.nii.gz").slicer[crop]
        paths[modality] = tmp_path / f"{modality}.nii.gz"
        nib.save(img, paths[modality])
    ref = nib.load(paths["t2"])
    cfg = uhved_preset("uhved-tiny")
    torch.manual_seed(0)
    save_generator(tmp_path / "run" / "checkpoints" / "last.safetensors", UHVED.from_config(cfg), cfg, step=0)
    out = tmp_path / "pred"
    args = ["uhved", "predict", "--checkpoint", str(tmp_path / "run"), "--out", str(out), "eval.window=[32,32,32]"]
    for m in ("t2", "flair"):
        args += ["--input", f"{m}={paths[m]}"]
    assert main(args) == 0
    for m in ("seg", "cet1"):
        img = nib.load(out / f"{m}.nii.gz")
        assert img.shape == ref.shape == (80, 80, 48)
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
    assert np.isfinite(np.asarray(nib.load(out / "cet1.nii.gz").dataobj)).all()


def test_train_method_uhved_resume_is_bit_identical(cohort, tmp_path, monkeypatch):
    """``mmhvae train --method uhved ... --resume`` after a crash gives the weights of an uninterrupted run."""
    from safetensors.torch import load_file

    from mmhvae.train.uhved import UHVEDTrainer

    def args(out):
        return ["train", "--method", "uhved", "--config", "uhved-tiny", "--cohort", str(cohort), "--out", str(out),
                "--no-progress", "train.steps=4", "train.checkpoint_every=2"]

    assert main(args(tmp_path / "full")) == 0
    original = UHVEDTrainer.step

    def crash_at_step_3(self, step, batch=None):
        if step == 3:
            raise KeyboardInterrupt
        return original(self, step, batch)

    monkeypatch.setattr(UHVEDTrainer, "step", crash_at_step_3)
    assert main(args(tmp_path / "part")) == 130  # killed after the checkpoint of step 2
    monkeypatch.setattr(UHVEDTrainer, "step", original)
    assert main([*args(tmp_path / "part"), "--resume"]) == 0
    full = load_file(str(tmp_path / "full" / "checkpoints" / "last.safetensors"))
    resumed = load_file(str(tmp_path / "part" / "checkpoints" / "last.safetensors"))
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)

"""The downstream verbs end to end through ``mmhvae.cli.main``, with a real (untrained) tiny checkpoint.

The model is freshly initialised, not trained: these tests check the wiring (loading, synthesis,
files, tables, errors), not the quality of what it synthesizes.
"""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from mmhvae.cli import main


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run torch single-threaded here, restoring the session's setting afterwards.

    On shared, busy cores torch's intra-op threads wait on each other: a forward pass of the tiny
    model took 10-20x longer with 2 threads than with 1 on the development machine.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    phantom = pytest.importorskip("mmhvae.data.phantom", reason="the built-in phantom is not available yet")
    # Six complete subjects: four train, one val, one test.
    return phantom.make_cohort(tmp_path_factory.mktemp("cohort"), subjects=6, seed=2, shape=(32, 32, 16),
                               missingness="complete", workers=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    pytest.importorskip("mmhvae.infer", reason="mmhvae.infer (load_model) is not available yet")
    from mmhvae.config import preset
    from mmhvae.models import build_model
    from mmhvae.checkpoint import save_generator

    config = preset("tiny")  # modalities us, t2, cet1 at 32 x 32
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_generator(path, build_model(config.model), config, step=0)
    return path


def test_parser_defaults_match_the_library_settings():
    from mmhvae.commands.downstream import REGISTRATION_DEFAULTS, SEGMENTATION_DEFAULTS, SEGMENTATION_TARGETS
    from mmhvae.downstream.registration import RigidSettings
    from mmhvae.downstream.segmentation import TARGETS, SegmentationSettings

    rigid = dataclasses.asdict(RigidSettings())
    assert {k: rigid[k] for k in REGISTRATION_DEFAULTS} == REGISTRATION_DEFAULTS
    seg = dataclasses.asdict(SegmentationSettings())
    assert {k: seg[k] for k in SEGMENTATION_DEFAULTS} == SEGMENTATION_DEFAULTS
    assert sorted(TARGETS) == list(SEGMENTATION_TARGETS)


def test_export_nnunet_cli(cohort, checkpoint, tmp_path, capsys):
    from mmhvae.downstream.nnunet_export import validate_nnunet_dataset

    out = tmp_path / "Dataset510_Tiny"
    assert main(["export-nnunet", "--checkpoint", str(checkpoint), "--cohort", str(cohort), "--out", str(out)]) == 0
    dataset = validate_nnunet_dataset(out)
    assert dataset.channels == ["us", "t2", "cet1"]  # the model's modalities; the cohort's FLAIR is not a channel
    out = tmp_path / "Dataset511_SynthUS"
    assert main(["export-nnunet", "--checkpoint", str(checkpoint), "--cohort", str(cohort), "--out", str(out),
                 "--synthetic-only", "us", "--labels", "whole"]) == 0
    assert validate_nnunet_dataset(out).labels == {"background": 0, "tumour": 1}
    capsys.readouterr()
    assert main(["export-nnunet", "--cohort", str(cohort), "--out", str(tmp_path / "phantoms")]) == 1
    assert "DatasetXXX_Name" in capsys.readouterr().err


def test_register_cli_direct_and_via_synthesis(cohort, checkpoint, tmp_path, capsys):
    folder = cohort.parent / "phantom000"
    us, t2 = folder / "phantom000-us.nii.gz", folder / "phantom000-t2.nii.gz"
    assert main(["register", "--fixed", str(us), "--moving", str(t2), "--out", str(tmp_path / "direct"),
                 "--threads", "1"]) == 0
    assert main(["register", "--fixed", str(us), "--moving", str(t2), "--out", str(tmp_path / "synth"),
                 "--via-synthesis", str(checkpoint), "--synth-modality", "t2", "--threads", "1"]) == 0
    for run in ("direct", "synth"):
        transform = sitk.ReadTransform(str(tmp_path / run / "transform.tfm"))
        assert len(transform.GetParameters()) == 6
        registered = sitk.ReadImage(str(tmp_path / run / "moving_registered.nii.gz"))
        assert registered.GetSize() == sitk.ReadImage(str(us)).GetSize()
    assert (tmp_path / "synth" / "synthetic_t2.nii.gz").is_file()
    capsys.readouterr()
    assert main(["register", "--fixed", str(tmp_path / "nope.nii.gz"), "--moving", str(t2), "--out", str(tmp_path)]) == 1
    assert "nope.nii.gz: image file not found" in capsys.readouterr().err
    assert main(["register", "--fixed", str(us), "--moving", str(t2), "--out", str(tmp_path / "x"),
                 "--via-synthesis", str(checkpoint), "--synth-modality", "flair"]) == 1
    assert "'flair' is not a modality" in capsys.readouterr().err


def test_benchmark_registration_cli(cohort, checkpoint, tmp_path):
    out = tmp_path / "reg"
    assert main(["benchmark", "registration", "--cohort", str(cohort), "--checkpoint", str(checkpoint),
                 "--split", "test", "--modalities", "t2", "--ranges", "0-4", "--out", str(out), "--threads", "1",
                 "--upper-bound"]) == 0
    with open(out / "registration_tre.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["method"] for r in rows} == {"before", "direct", "synthesis", "upper-bound"}
    assert all(np.isfinite(float(r["tre_mean"])) for r in rows)
    assert "| Synthetic MR (from iUS) |" in (out / "registration_table.md").read_text()


def test_benchmark_segmentation_cli(cohort, checkpoint, tmp_path):
    out = tmp_path / "seg"
    assert main(["benchmark", "segmentation", "--cohort", str(cohort), "--checkpoint", str(checkpoint),
                 "--out", str(out), "--steps", "2", "--unet-batch-size", "4", "--max-subjects", "2",
                 "--sector-control"]) == 0
    table = (out / "segmentation_table.md").read_text()
    assert "Trained on synthetic iUS" in table and "ASSD (mm)" in table
    with open(out / "segmentation_scores.csv") as fh:
        assert {r["condition"] for r in csv.DictReader(fh)} == {"synthetic", "acquired", "sector"}
    assert "Sector shape only" in table

"""Issue 15 point 8: cohorts and resume are strict.

Folder cohorts warn (``--strict``: refuse) about files that match no modality and empty subject
folders; a manifest row with extra cells is refused; ``mmhvae cohort check`` reads every file and
reports every problem at once; ``--resume`` refuses settings that differ from the run's; after any
number of resumes ``metrics.csv`` has one row per step and key, and no temporary file survives.
"""

from __future__ import annotations

import csv
from collections import Counter

import nibabel as nib
import numpy as np
import pytest

from mmhvae.cli import main

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def _volume(path, seed=0, shape=(16, 16, 4), affine=AFFINE, nan=False):
    rng = np.random.default_rng(seed)
    data = rng.uniform(10, 100, shape).astype(np.float32)
    if nan:
        data[1, 1, 1] = np.nan
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.fixture()
def messy_folder(tmp_path):
    """sub1 has an ADC and a typo'd T2 next to its US/T2; sub2 a file without the subject prefix; sub3 is empty."""
    root = tmp_path / "cohort"
    for suffix in ("us", "t2", "adc", "t2_"):
        _volume(root / "sub1" / f"sub1-{suffix}.nii.gz")
    _volume(root / "sub2" / "sub2-us.nii.gz")
    _volume(root / "sub2" / "scan.nii.gz")
    (root / "sub3").mkdir()
    return root


STRAYS = ("sub1-adc.nii.gz", "sub1-t2_.nii.gz", "scan.nii.gz", "sub3")


def test_folder_cohort_warns_about_files_matching_no_modality(messy_folder):
    from mmhvae.data.cohort import Cohort, CohortError, CohortWarning

    with pytest.warns(CohortWarning) as caught:
        cohort = Cohort.load(messy_folder, modalities=["us", "t2"])
    text = " ".join(str(w.message) for w in caught)
    for stray in STRAYS:
        assert stray in text
    assert [s.name for s in cohort.subjects] == ["sub1", "sub2"]
    with pytest.raises(CohortError) as refused:
        Cohort.load(messy_folder, modalities=["us", "t2"], strict=True)
    for stray in STRAYS:
        assert stray in str(refused.value)


def test_cli_warns_and_strict_refuses(messy_folder, tmp_path, capsys):
    assert main(["cohort", "summary", str(messy_folder), "--modalities", "us", "t2"]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if line.startswith("mmhvae: warning:")]
    for stray in STRAYS:
        assert any(stray in line for line in warned), stray
    assert main(["cohort", "summary", str(messy_folder), "--modalities", "us", "t2", "--strict"]) == 1
    assert "--strict" in capsys.readouterr().err
    run = tmp_path / "run"
    rc = main(["train", "--config", "tiny", "--cohort", str(messy_folder), "--out", str(run), "--strict",
               "model.modalities=[us,t2]", "train.subset_groups={}"])
    assert rc == 1 and not run.exists()  # refused before any training
    assert "sub1-adc.nii.gz" in capsys.readouterr().err


def test_manifest_row_with_an_extra_cell_is_refused(tmp_path, capsys):
    _volume(tmp_path / "a.nii.gz")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("subject,t2\ns1,a.nii.gz,b.nii.gz\n")
    assert main(["cohort", "summary", str(manifest)]) == 1
    err = capsys.readouterr().err
    assert "line 2" in err and "header has 2 columns" in err
    manifest.write_text("subject,t2\ns1,a.nii.gz,\n")  # an empty trailing cell (spreadsheet export) is fine
    assert main(["cohort", "summary", str(manifest)]) == 0


def test_cohort_check_reports_every_problem_at_once(messy_folder, capsys):
    root = messy_folder
    good = _volume(root / "sub4" / "sub4-t2.nii.gz", seed=4)
    raw = good.read_bytes()
    _volume(root / "sub4" / "sub4-us.nii.gz", seed=5)
    (root / "sub4" / "sub4-t2.nii.gz").write_bytes(raw[: len(raw) // 2])  # truncated
    _volume(root / "sub5" / "sub5-us.nii.gz", nan=True)
    _volume(root / "sub6" / "sub6-us.nii.gz")
    _volume(root / "sub6" / "sub6-t2.nii.gz", shape=(16, 16, 5))
    _volume(root / "sub7" / "sub7-us.nii.gz")
    shifted = AFFINE.copy()
    shifted[0, 3] = 3.0
    _volume(root / "sub7" / "sub7-t2.nii.gz", affine=shifted)

    # The summary only lists the files; it cannot see what is inside them.
    assert main(["cohort", "summary", str(root), "--modalities", "us", "t2"]) == 0
    capsys.readouterr()
    _volume(root / "sub8" / "sub8-flair.nii.gz")  # only a modality not asked for: the summary refuses this
    assert main(["cohort", "check", str(root), "--modalities", "us", "t2"]) == 1
    out = capsys.readouterr().out
    expected = [*STRAYS, "sub4-t2.nii.gz: voxel data unreadable", "sub5-us.nii.gz: 1 non-finite",
                "sub6-t2.nii.gz has shape (16, 16, 5)", "'sub7'", "subject 'sub8' has no image"]
    lines = out.splitlines()
    for needle in expected:
        assert any(needle in line for line in lines), needle
    assert any("sub7" in line and "affine that differs" in line for line in lines)
    assert f"{len(expected)} problem(s)" in out


def test_cohort_check_collects_manifest_problems_and_passes_a_clean_cohort(tmp_path, capsys):
    _volume(tmp_path / "a.nii.gz")
    _volume(tmp_path / "b.nii.gz")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("subject,t2\ns1,a.nii.gz\ns2,missing.nii.gz\ns3,b.nii.gz,extra\ns4,b.nii.gz\n")
    assert main(["cohort", "check", str(manifest)]) == 1
    out = capsys.readouterr().out
    assert "line 3" in out and "missing.nii.gz" in out and "line 4" in out and "2 problem(s)" in out
    manifest.write_text("subject,t2\ns1,a.nii.gz\ns2,b.nii.gz\n")
    assert main(["cohort", "check", str(manifest)]) == 0
    assert "no problem found" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------------

TINY = ["train.steps=4", "train.checkpoint_every=2", "train.validate_every=2", "train.log_every=1",
        "train.batch_size=2"]


@pytest.fixture(scope="module")
def phantom_cohort(tmp_path_factory):
    from mmhvae.data.phantom import make_cohort

    return make_cohort(tmp_path_factory.mktemp("phantom"), subjects=6, seed=0, shape=(32, 32, 8),
                       missingness="complete", workers=1)


def _metric_rows(run):
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    return Counter((int(r[0]), r[1]) for r in rows)


def test_resume_refuses_other_settings_and_says_which(phantom_cohort, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "--config", "tiny", "--cohort", str(phantom_cohort), "--out", str(run), "--no-progress"]
    assert main([*base, *TINY]) == 0
    saved = (run / "config.yaml").read_text()
    other = tmp_path / "other.csv"
    other.write_text(phantom_cohort.read_text())
    refusals = [
        (["train", "--resume", "--out", str(run), "--cohort", str(other)], ["data.cohort", "--cohort"]),
        (["train", "--resume", "--out", str(run), "--config", "small"], ["model.", "--config small"]),
        (["train", "--resume", "--out", str(run), "--method", "mvae"], ["--method mvae"]),
        (["train", "--resume", "--out", str(run), "data.harmonization=none"], ["data.harmonization"]),
    ]
    for args, needles in refusals:
        capsys.readouterr()
        assert main([*args, "--no-progress"]) == 1, args
        err = capsys.readouterr().err
        assert "Traceback" not in err
        for needle in needles:
            assert needle in err, (needle, err)
    assert (run / "config.yaml").read_text() == saved
    # Extending the run is a change a resume may make.
    assert main(["train", "--resume", "--out", str(run), "--no-progress", "train.steps=6"]) == 0
    assert "resuming with train.steps = 6" in capsys.readouterr().out
    counts = _metric_rows(run)
    assert {s for s, _ in counts} == set(range(1, 7)) and set(counts.values()) == {1}


def test_metrics_have_one_row_per_step_and_no_temporary_file_survives_a_kill(phantom_cohort, tmp_path,
                                                                           monkeypatch, capsys):
    from mmhvae.train.trainer import Trainer

    run = tmp_path / "run"
    args = ["train", "--config", "tiny", "--cohort", str(phantom_cohort), "--out", str(run), "--no-progress",
            *TINY, "train.steps=6"]
    original = Trainer.training_step
    killed = {"done": False}

    def killed_after_logging(self, batch, step):
        if step == 3 and not killed["done"]:  # steps 1-3 logged, last checkpoint at step 2
            killed["done"] = True
            raise KeyboardInterrupt
        return original(self, batch, step)

    monkeypatch.setattr(Trainer, "training_step", killed_after_logging)
    assert main(args) == 130
    assert max(s for s, _ in _metric_rows(run)) == 3
    # What a SIGKILL during an atomic save leaves behind.
    stale = [run / "checkpoints" / ".last_state.pt.k1ll3d.tmp", run / ".metrics.csv.k1ll3d.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    assert main([*args, "--resume"]) == 0
    assert "resumed from step 2" in capsys.readouterr().out
    counts = _metric_rows(run)
    assert {s for s, _ in counts} == set(range(1, 7))
    assert set(counts.values()) == {1}, [k for k, v in counts.items() if v > 1]
    assert not any(p.exists() for p in stale)
    assert not [p for p in run.rglob("*.tmp")]
    # A second resume of the finished run adds nothing.
    assert main([*args, "--resume"]) == 0
    assert _metric_rows(run) == counts



def test_uhved_resume_is_strict_and_logs_each_step_once(tmp_path, monkeypatch, capsys):
    from mmhvae.data.phantom import make_cohort
    from mmhvae.train.uhved import UHVEDTrainer

    cohort = make_cohort(tmp_path / "cohort", subjects=3, seed=3, shape=(24, 24, 16), missingness="complete",
                         workers=1)
    run = tmp_path / "run"
    args = ["uhved", "train", "--cohort", str(cohort), "--out", str(run), "--config", "uhved-tiny", "--split", "all",
            "--no-progress", "train.steps=5", "train.checkpoint_every=2", "train.log_every=1"]
    original = UHVEDTrainer.step
    killed = {"done": False}

    def killed_after_logging(self, step, batch=None):
        if step == 3 and not killed["done"]:  # steps 1-3 logged, last checkpoint at step 2
            killed["done"] = True
            raise KeyboardInterrupt
        return original(self, step, batch)

    monkeypatch.setattr(UHVEDTrainer, "step", killed_after_logging)
    assert main(args) == 130
    other = tmp_path / "other.csv"
    other.write_text(cohort.read_text())
    capsys.readouterr()
    assert main([*args[:3], str(other), *args[4:], "--resume"]) == 1
    err = capsys.readouterr().err
    assert "data.cohort" in err and "--cohort" in err
    assert main([*args, "--resume"]) == 0
    counts = _metric_rows(run)  # the shared run logger: metrics.csv, each (step, key) once
    assert {s for s, _ in counts} == {1, 2, 3, 4, 5}
    assert set(counts.values()) == {1}, [k for k, v in counts.items() if v > 1]

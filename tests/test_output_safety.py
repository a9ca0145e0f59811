"""Issue 15 point 5: outputs are safe.

synthesize never writes over an input, needs --overwrite for an existing output, checks its output
folder before any work and writes all-or-nothing; export-nnunet, make-cohort and evaluate follow the
same rule. Run through ``mmhvae.cli.main`` with a real (untrained) tiny checkpoint.
"""

from __future__ import annotations

import errno
import hashlib

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


def _volume(path, seed=0):
    rng = np.random.default_rng(seed)
    data = np.zeros((32, 32, 4), np.float32)
    data[6:26, 6:26] = rng.uniform(50, 100, (20, 20, 4))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0])), path)
    return path


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if ".partial-" in p.name]


def _synthesize(checkpoint, inputs, out, *extra):
    args = ["synthesize", "--checkpoint", str(checkpoint), "--out", str(out), *extra]
    for name, path in inputs.items():
        args += ["--input", f"{name}={path}"]
    return main(args)


# --------------------------------------------------------------------------------------------------
# synthesize
# --------------------------------------------------------------------------------------------------


def test_synthesize_never_overwrites_an_input(checkpoint, tmp_path, capsys):
    case = tmp_path / "case"
    t2 = _volume(case / "t2.nii.gz")
    before = _digest(t2)
    for extra in ([], ["--overwrite"]):
        assert _synthesize(checkpoint, {"t2": t2}, case, *extra) == 1
        err = capsys.readouterr().err
        assert str(t2) in err and "input" in err and "Traceback" not in err
        assert _digest(t2) == before
        assert sorted(p.name for p in case.iterdir()) == ["t2.nii.gz"]  # nothing else written either


def test_masks_are_inputs_too_and_are_used(checkpoint, tmp_path, capsys):
    t2 = _volume(tmp_path / "in" / "t2.nii.gz")
    mask = tmp_path / "masks" / "cet1.nii.gz"  # a mask whose name is that of an output
    mask.parent.mkdir()
    nib.save(nib.Nifti1Image(np.ones((32, 32, 4), np.uint8), np.diag([1.0, 1.0, 2.0, 1.0])), mask)
    assert _synthesize(checkpoint, {"t2": t2}, mask.parent, "--mask", str(mask), "--overwrite") == 1
    assert str(mask) in capsys.readouterr().err
    out = tmp_path / "out"
    assert _synthesize(checkpoint, {"t2": t2}, out, "--mask", str(mask)) == 0
    assert (out / "t2.nii.gz").is_file()


def test_an_existing_output_needs_overwrite(checkpoint, tmp_path, capsys):
    t2 = _volume(tmp_path / "in" / "t2.nii.gz")
    out = tmp_path / "out"
    assert _synthesize(checkpoint, {"t2": t2}, out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cet1.nii.gz", "t2.nii.gz", "us.nii.gz"]
    (out / "us.nii.gz").write_bytes(b"the user's file")
    assert _synthesize(checkpoint, {"t2": t2}, out) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert (out / "us.nii.gz").read_bytes() == b"the user's file"
    assert _synthesize(checkpoint, {"t2": t2}, out, "--overwrite") == 0
    assert nib.load(out / "us.nii.gz").shape == (32, 32, 4)
    assert not _leftovers(tmp_path)


def test_synthesize_outputs_are_all_or_nothing(checkpoint, tmp_path, monkeypatch, capsys):
    import mmhvae.data.nifti as nifti

    t2 = _volume(tmp_path / "in" / "t2.nii.gz")
    real_write = nifti.write_volume
    calls = []

    def disk_full_on_second(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(nifti, "write_volume", disk_full_on_second)
    out = tmp_path / "out"
    assert _synthesize(checkpoint, {"t2": t2}, out) == 1
    err = capsys.readouterr().err
    assert "disk is full" in err and "Traceback" not in err
    assert len(calls) == 2 and not out.exists()  # the first output, written, never appeared
    assert not _leftovers(tmp_path)


def test_output_location_is_checked_before_any_work(checkpoint, tmp_path, monkeypatch, capsys):
    import mmhvae.infer as infer

    t2 = _volume(tmp_path / "in" / "t2.nii.gz")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(infer, "load_model", no_work)
    for out in (blocker, blocker / "sub"):  # a file, and a folder under a file (ENOTDIR)
        assert _synthesize(checkpoint, {"t2": t2}, out) == 1
        err = capsys.readouterr().err
        assert str(blocker) in err and "Traceback" not in err


def test_output_folder_api_moves_files_in_only_on_success(tmp_path):
    from mmhvae.errors import OutputError
    from mmhvae.outputs import OutputFolder

    target = tmp_path / "target"
    with pytest.raises(RuntimeError):
        with OutputFolder(target) as out:
            (out.staging / "a.txt").write_text("a")
            raise RuntimeError("failed half-way")
    assert not target.exists() and not _leftovers(tmp_path)
    with OutputFolder(target) as out:
        (out.staging / "a.txt").write_text("a")
        (out.staging / "b.txt").write_text("b")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "b.txt"]
    with pytest.raises(OutputError, match="already exists"):
        with OutputFolder(target) as out:
            out.expect(["a.txt"])
    # A staging folder left by a killed process (its pid is gone) is cleaned up on the next write.
    stale = tmp_path / ".target.partial-999999999-dead"
    stale.mkdir()
    with OutputFolder(target, overwrite=True) as out:
        (out.staging / "a.txt").write_text("new")
    assert not stale.exists() and (target / "a.txt").read_text() == "new"


# --------------------------------------------------------------------------------------------------
# make-cohort, export-nnunet, evaluate
# --------------------------------------------------------------------------------------------------


def test_make_cohort_refuses_a_folder_with_a_manifest_or_nifti_files(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "manifest.csv").write_text("subject,t2\nme,me.nii.gz\n")
    assert main(["make-cohort", str(mine), "--subjects", "2", "--shape", "16", "16", "8", "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "manifest.csv" in err and "--overwrite" in err
    assert (mine / "manifest.csv").read_text() == "subject,t2\nme,me.nii.gz\n"
    scans = tmp_path / "scans"
    _volume(scans / "sub1" / "sub1-t2.nii.gz")
    assert main(["make-cohort", str(scans), "--subjects", "2", "--shape", "16", "16", "8", "--workers", "1"]) == 1
    assert "NIfTI" in capsys.readouterr().err


def test_make_cohort_is_all_or_nothing(tmp_path, monkeypatch, capsys):
    import mmhvae.data.phantom as phantom

    def fails_half_way(out, **kwargs):
        _volume(out / "phantom000" / "phantom000-t2.nii.gz")
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "phantom001"))

    monkeypatch.setattr(phantom, "make_cohort", fails_half_way)
    out = tmp_path / "cohort"
    assert main(["make-cohort", str(out), "--subjects", "2", "--workers", "1"]) == 1
    assert "disk is full" in capsys.readouterr().err
    assert not out.exists() and not _leftovers(tmp_path)


@pytest.fixture(scope="module")
def complete_cohort(tmp_path_factory):
    """Four complete subjects with segmentations, written directly (independent of the phantom)."""
    root = tmp_path_factory.mktemp("cohort")
    rows = ["subject,us,t2,cet1,seg,split"]
    for i, split in enumerate(["train", "train", "val", "test"]):
        name = f"s{i}"
        for j, m in enumerate(("us", "t2", "cet1")):
            _volume(root / name / f"{name}-{m}.nii.gz", seed=10 * i + j)
        seg = np.zeros((32, 32, 4), np.uint8)
        seg[12:20, 12:20, 1:3] = 2
        nib.save(nib.Nifti1Image(seg, np.diag([1.0, 1.0, 2.0, 1.0])), root / name / f"{name}-seg.nii.gz")
        rows.append(f"{name},{name}/{name}-us.nii.gz,{name}/{name}-t2.nii.gz,{name}/{name}-cet1.nii.gz,"
                    f"{name}/{name}-seg.nii.gz,{split}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def test_export_nnunet_is_all_or_nothing_and_needs_overwrite(complete_cohort, tmp_path, monkeypatch, capsys):
    import mmhvae.data.nifti as nifti

    out = tmp_path / "Dataset501_Safe"
    args = ["export-nnunet", "--cohort", str(complete_cohort), "--out", str(out), "--channels", "us,t2"]
    real = nifti.write_labels
    calls = []

    def fail_second_label(path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(nifti, "write_labels", fail_second_label)
    assert main(args) == 1
    assert "disk is full" in capsys.readouterr().err
    assert not out.exists() and not _leftovers(tmp_path)
    monkeypatch.setattr(nifti, "write_labels", real)

    assert main(args) == 0
    assert (out / "dataset.json").is_file()
    first = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main(args) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == first  # replaced, not merged
    assert not _leftovers(tmp_path)


def test_evaluation_report_is_all_or_nothing_and_needs_overwrite(checkpoint, complete_cohort, tmp_path,
                                                                monkeypatch, capsys):
    import mmhvae.eval.runner as runner

    out = tmp_path / "report"

    def crash_after_one_file(checkpoints, cohort, split, out_dir, *a, **k):
        (out_dir / "metrics.csv").write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(out_dir / "summary.csv"))

    monkeypatch.setattr(runner, "evaluate_checkpoints", crash_after_one_file)
    args = ["evaluate", "--checkpoint", str(checkpoint), "--cohort", str(complete_cohort), "--out", str(out),
            "--no-lpips", "--no-figures"]
    assert main(args) == 1
    assert "disk is full" in capsys.readouterr().err
    assert not out.exists() and not _leftovers(tmp_path)

    out.mkdir()
    (out / "table.md").write_text("an earlier report")
    calls = []
    monkeypatch.setattr(runner, "evaluate_checkpoints", lambda *a, **k: calls.append(a))
    assert main(args) == 1
    assert "already exists" in capsys.readouterr().err and not calls  # refused before any work
    assert (out / "table.md").read_text() == "an earlier report"


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root can write into read-only folders")
def test_unwritable_output_folder_is_refused_before_any_work(checkpoint, tmp_path, monkeypatch, capsys):
    import mmhvae.infer as infer

    t2 = _volume(tmp_path / "in" / "t2.nii.gz")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    monkeypatch.setattr(infer, "load_model", lambda *a, **k: pytest.fail("model loaded before the check"))
    try:
        assert _synthesize(checkpoint, {"t2": t2}, locked / "out") == 1
    finally:
        locked.chmod(0o700)
    err = capsys.readouterr().err
    assert "locked" in err and "Permission denied" in err and "Traceback" not in err

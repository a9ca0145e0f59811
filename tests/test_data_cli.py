"""`mmhvae make-cohort` and `mmhvae cohort summary|montage`."""

from __future__ import annotations

import pytest
from PIL import Image

from mmhvae.cli import main


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "cohort"
    assert main(["make-cohort", str(out), "--subjects", "3", "--seed", "2", "--shape", "24", "24", "12",
                 "--missingness", "complete", "--workers", "1"]) == 0
    return out


def test_make_cohort_and_summary(cohort_dir, capsys):
    assert (cohort_dir / "manifest.csv").is_file()
    assert main(["cohort", "summary", str(cohort_dir)]) == 0
    out = capsys.readouterr().out
    assert "3 subjects" in out and "3 us, 3 t2, 3 cet1, 3 flair, 3 complete" in out
    manifest = str(cohort_dir / "manifest.csv")
    assert main(["cohort", "summary", manifest, "--modalities", "us", "t2", "cet1", "flair"]) == 0


def test_montage_png(cohort_dir, tmp_path, capsys):
    png = tmp_path / "montage.png"
    argv = ["cohort", "montage", str(cohort_dir), "--subject", "phantom000", "--out", str(png), "--columns", "3"]
    assert main(argv) == 0
    with Image.open(png) as image:
        width, height = image.size
    assert width > 100 and height > 4 * 100  # 4 modalities + labels, 3 columns


def test_user_errors_are_reported_without_traceback(cohort_dir, tmp_path, capsys):
    assert main(["cohort", "summary", str(tmp_path / "absent")]) == 1
    assert "cohort not found" in capsys.readouterr().err
    assert main(["cohort", "summary", str(cohort_dir), "--alias", "t2w"]) == 1
    assert "expected SUFFIX=NAME" in capsys.readouterr().err
    assert main(["cohort", "montage", str(cohort_dir), "--subject", "nobody", "--out", str(tmp_path / "x.png")]) == 1
    assert "no subject named 'nobody'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["make-cohort", str(tmp_path / "c"), "--missingness", "sometimes"])


@pytest.mark.real
def test_real_summary_with_aliases_and_montage(real_data_dir, cohort_dir, tmp_path, capsys):
    argv = ["cohort", "summary", str(real_data_dir), "--modalities", "t2", "flair", "--alias", "t1=t1native"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 t2, 2 flair, 2 complete" in out and "ignored" in out
    png = tmp_path / "side_by_side.png"
    assert main(["cohort", "montage", str(cohort_dir), "--subject", "phantom001", "--out", str(png),
                 "--real", str(real_data_dir / "TCGA-DU-7294")]) == 0
    assert png.stat().st_size > 10_000

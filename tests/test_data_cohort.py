"""Cohort manifests, the folder convention, and validation errors that name subject, file and problem."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from mmhvae.data.cohort import Cohort, CohortError, Subject, hashed_split, load_subject

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def _nii(path, shape=(8, 8, 4), affine=AFFINE, value=None, seed=0):
    data = np.random.default_rng(seed).uniform(1, 100, shape).astype(np.float32) if value is None else value
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), path)
    return path


def _csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(r) for r in rows]) + "\n")
    return path


@pytest.fixture
def small(tmp_path):
    """Two subjects: a complete one (t2, cet1, seg) and one with cet1 only; relative paths."""
    for name in ("s1", "s2"):
        _nii(tmp_path / name / "cet1.nii.gz")
    _nii(tmp_path / "s1" / "t2.nii.gz")
    _nii(tmp_path / "s1" / "seg.nii.gz", value=np.ones((8, 8, 4)))
    csv = _csv(
        tmp_path / "cohort.csv",
        ["subject", "T2", "cet1", "seg", "split"],
        [
            ["s1", "s1/t2.nii.gz", "s1/cet1.nii.gz", "s1/seg.nii.gz", "train"],
            ["s2", "", "s2/cet1.nii.gz", "", "Validation"],
        ],
    )
    return tmp_path, csv


def test_csv_manifest(small):
    root, csv = small
    cohort = Cohort.load(csv)
    assert cohort.modalities == ["t2", "cet1"]  # names lower-cased, canonical order
    s1, s2 = cohort.subjects
    assert s1.paths == {"t2": root / "s1/t2.nii.gz", "cet1": root / "s1/cet1.nii.gz"}
    assert s1.seg == root / "s1/seg.nii.gz" and s2.seg is None
    assert (s1.split, s2.split) == ("train", "val")
    assert cohort.patterns() == {(True, True): 1, (False, True): 1}
    assert [s.name for s in cohort.select("val")] == ["s2"]
    summary = cohort.summary()
    assert "1 t2, 2 cet1, 1 complete" in summary and "t2+cet1" in summary
    # Requested modalities fix the order and may include one nobody has.
    cohort = Cohort.load(csv, modalities=["us", "cet1", "t2"])
    assert cohort.modalities == ["us", "cet1", "t2"]
    assert cohort.subjects[0].available(cohort.modalities) == (False, True, True)
    volumes = load_subject(cohort.subjects[0])
    assert volumes.images["t2"].shape == (8, 8, 4) and volumes.seg.dtype == np.int16
    np.testing.assert_allclose(volumes.affine, AFFINE)


def test_folder_convention_and_aliases(tmp_path):
    for name in ("caseA", "caseB"):
        _nii(tmp_path / name / f"{name}-t1c.nii.gz")
        _nii(tmp_path / name / f"{name}-t2w.nii.gz")
    _nii(tmp_path / "caseA" / "caseA-seg.nii.gz", value=np.zeros((8, 8, 4)))
    _nii(tmp_path / "caseB" / "caseB-extra.nii.gz")
    cohort = Cohort.load(tmp_path, modalities=["t2", "cet1"])  # default BraTS aliases
    assert [s.name for s in cohort.subjects] == ["caseA", "caseB"]
    assert set(cohort.subjects[0].paths) == {"t2", "cet1"} and cohort.subjects[0].seg is not None
    assert cohort.ignored == ["extra"] and "ignored" in cohort.summary()
    assert all(s.split == hashed_split(s.name) for s in cohort.subjects)
    raw = Cohort.load(tmp_path, aliases={})
    assert set(raw.modalities) == {"t1c", "t2w", "extra"}
    single = Cohort.load(tmp_path / "caseA", aliases={"t1c": "cet1", "t2w": "t2"})
    assert [s.name for s in single.subjects] == ["caseA"]


def test_hashed_split_is_stable_and_roughly_70_15_15():
    splits = [hashed_split(f"subject{i}") for i in range(2000)]
    assert splits == [hashed_split(f"subject{i}") for i in range(2000)]
    fractions = [splits.count(s) / 2000 for s in ("train", "val", "test")]
    assert abs(fractions[0] - 0.70) < 0.04 and abs(fractions[1] - 0.15) < 0.03


def test_real_cases_load(real_data_dir):
    cohort = Cohort.load(real_data_dir)
    assert {s.name for s in cohort.subjects} == {"BraTS-GLI-00001-000", "TCGA-DU-7294"}
    assert set(cohort.modalities) == {"t1", "cet1", "t2", "flair"}
    assert cohort.patterns() == {(True, True, True, True): 2}
    tcga = cohort.subject("TCGA-DU-7294")
    assert tcga.seg is not None and tcga.paths["flair"].name.endswith("-fla.nii.gz")


# --- validation errors ----------------------------------------------------------------------------


def test_missing_file_names_subject_and_path(small):
    root, _ = small
    csv = _csv(root / "bad.csv", ["subject", "t2"], [["s9", "s9/t2.nii.gz"]])
    with pytest.raises(CohortError, match=r"line 2: subject 's9', t2: file not found: .*s9/t2\.nii\.gz"):
        Cohort.load(csv)
    # A file deleted after loading the cohort: caught when the subject is read.
    cohort = Cohort.load(root / "cohort.csv")
    (root / "s2" / "cet1.nii.gz").unlink()
    with pytest.raises(CohortError, match=r"subject 's2', cet1: .*cet1\.nii\.gz: file not found"):
        load_subject(cohort.subjects[1])


def test_corrupt_nifti(small):
    root, csv = small
    (root / "s1" / "t2.nii.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(CohortError, match=r"subject 's1', t2: .*t2\.nii\.gz: not a readable NIfTI"):
        load_subject(Cohort.load(csv).subjects[0])


def test_shape_mismatch(small):
    root, csv = small
    _nii(root / "s1" / "t2.nii.gz", shape=(8, 8, 5))
    with pytest.raises(CohortError, match=r"subject 's1': cet1 image .*cet1\.nii\.gz has shape \(8, 8, 4\) but t2"):
        load_subject(Cohort.load(csv).subjects[0])


def test_affine_mismatch(small):
    root, csv = small
    shifted = AFFINE.copy()
    shifted[0, 3] = 0.5
    _nii(root / "s1" / "cet1.nii.gz", affine=shifted)
    expected = r"subject 's1': cet1 image .*cet1\.nii\.gz has an affine that differs .* by up to 0\.5"
    with pytest.raises(CohortError, match=expected):
        load_subject(Cohort.load(csv).subjects[0])
    # Within the tolerance: accepted.
    shifted[0, 3] = 1e-5
    _nii(root / "s1" / "cet1.nii.gz", affine=shifted)
    load_subject(Cohort.load(csv).subjects[0])


def test_segmentation_on_another_grid(small):
    root, csv = small
    _nii(root / "s1" / "seg.nii.gz", shape=(8, 8, 3), value=np.zeros((8, 8, 3)))
    with pytest.raises(CohortError, match=r"subject 's1': seg image .*seg\.nii\.gz has shape"):
        load_subject(Cohort.load(csv).subjects[0])


def test_nan_voxels(small):
    root, csv = small
    data = np.ones((8, 8, 4), np.float32)
    data[2, 2, 2] = np.nan
    _nii(root / "s2" / "cet1.nii.gz", value=data)
    with pytest.raises(CohortError, match=r"subject 's2', cet1: .*cet1\.nii\.gz: 1 non-finite voxels"):
        load_subject(Cohort.load(csv).subjects[1])


def test_4d_image(small):
    root, csv = small
    _nii(root / "s1" / "t2.nii.gz", shape=(8, 8, 4, 2))
    with pytest.raises(CohortError, match=r"subject 's1', t2: .*t2\.nii\.gz: image is 4D"):
        load_subject(Cohort.load(csv).subjects[0])


def test_unknown_modality(small):
    root, _ = small
    csv = _csv(root / "odd.csv", ["subject", "t2", "pd"], [["s1", "s1/t2.nii.gz", "s1/cet1.nii.gz"]])
    expected = r"odd\.csv: unknown modality column 'pd'.*expected modalities \['t2', 'cet1'\]"
    with pytest.raises(CohortError, match=expected):
        Cohort.load(csv, modalities=["t2", "cet1"])
    subject = Subject("s1", {"pd": root / "s1" / "t2.nii.gz"})
    with pytest.raises(CohortError, match=r"subject 's1': unknown modality \['pd'\]"):
        load_subject(subject, modalities=["t2", "cet1"])


def test_known_but_unused_modalities_are_ignored(small):
    """A model without T2 can train on a cohort that has T2; subjects with only T2 are skipped."""
    root, csv = small
    cohort = Cohort.load(csv, modalities=["cet1"])
    assert cohort.ignored == ["t2"] and [set(s.paths) for s in cohort.subjects] == [{"cet1"}, {"cet1"}]
    rows = [["s1", "s1/t2.nii.gz", ""], ["s2", "", "s2/cet1.nii.gz"]]
    only_t2 = _csv(root / "only_t2.csv", ["subject", "t2", "cet1"], rows)
    cohort = Cohort.load(only_t2, modalities=["cet1"])
    assert [s.name for s in cohort.subjects] == ["s2"] and cohort.skipped == ["s1"]
    assert "skipped 1 subjects" in cohort.summary()


def test_subject_without_modality(small):
    root, _ = small
    csv = _csv(root / "empty.csv", ["subject", "t2", "cet1", "seg"], [["s1", "", "", "s1/seg.nii.gz"]])
    with pytest.raises(CohortError, match=r"line 2: subject 's1' has no modality image"):
        Cohort.load(csv)
    with pytest.raises(CohortError, match=r"subject 'ghost': no modality image"):
        load_subject(Subject("ghost", {}))
    (root / "lonely").mkdir()
    _nii(root / "lonely" / "lonely-seg.nii.gz", value=np.zeros((8, 8, 4)))
    with pytest.raises(CohortError, match=r"subject 'lonely' has no image of the modalities"):
        Cohort.load(root / "lonely")


def test_manifest_format_errors(tmp_path):
    with pytest.raises(CohortError, match="cohort not found"):
        Cohort.load(tmp_path / "absent.csv")
    with pytest.raises(CohortError, match="no 'subject' column"):
        Cohort.load(_csv(tmp_path / "a.csv", ["name", "t2"], [["x", ""]]))
    _nii(tmp_path / "x.nii.gz")
    with pytest.raises(CohortError, match="appears twice"):
        Cohort.load(_csv(tmp_path / "b.csv", ["subject", "t2"], [["x", "x.nii.gz"], ["x", "x.nii.gz"]]))
    with pytest.raises(CohortError, match="split 'holdout' is not one of"):
        Cohort.load(_csv(tmp_path / "c.csv", ["subject", "t2", "split"], [["x", "x.nii.gz", "holdout"]]))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CohortError, match="no manifest.csv and no files named"):
        Cohort.load(tmp_path / "empty_dir")

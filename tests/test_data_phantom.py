"""The built-in cohort: determinism, missingness, splits, and plausible contrasts."""

from __future__ import annotations

import numpy as np
import pytest

from mmhvae.data import phantom
from mmhvae.data.cohort import Cohort, load_subject

SHAPE = (32, 32, 16)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_identical_files_different_seed_different(tmp_path):
    a = phantom.make_cohort(tmp_path / "a", subjects=3, seed=5, shape=SHAPE, workers=1).parent
    b = phantom.make_cohort(tmp_path / "b", subjects=3, seed=5, shape=SHAPE, workers=2).parent
    c = phantom.make_cohort(tmp_path / "c", subjects=3, seed=6, shape=SHAPE, workers=1).parent
    files_a, files_b, files_c = _files(a), _files(b), _files(c)
    assert files_a == files_b  # byte-identical, whatever the number of worker processes
    common = set(files_a) & set(files_c)
    images = [k for k in common if k.name.endswith(("-us.nii.gz", "-cet1.nii.gz"))]
    assert images and all(files_a[k] != files_c[k] for k in images)


def test_cohort_layout_loads_and_validates(tmp_path):
    manifest = phantom.make_cohort(tmp_path, subjects=4, seed=0, shape=SHAPE, missingness="complete", workers=1)
    cohort = Cohort.load(tmp_path)  # the folder's manifest.csv
    assert cohort.source == manifest and cohort.modalities == ["us", "t2", "cet1", "flair"]
    assert cohort.patterns() == {(True, True, True, True): 4}
    volumes = load_subject(cohort.subjects[0])
    assert volumes.shape == SHAPE and volumes.brain_mask is not None and volumes.brain_mask.any()
    assert set(np.unique(volumes.seg)) <= {0, 1, 2, 3} and (volumes.seg > 0).any()
    np.testing.assert_allclose(np.diag(volumes.affine)[:3], phantom.default_spacing(SHAPE))
    us = volumes.images["us"]
    assert 0.005 < (us > 0).mean() < 0.5 and us.max() <= 255  # a sector, zero outside
    # MR is skull-stripped: nothing outside the brain mask.
    assert not volumes.images["t2"][~volumes.brain_mask].any()


def test_remind_missingness_on_100_subjects():
    avail = phantom.availability(100, seed=0, missingness="remind")
    fractions = dict(zip(phantom.MODALITIES, avail.mean(axis=0)))
    for modality in phantom.MODALITIES:
        assert fractions[modality] == pytest.approx(phantom.REMIND[modality], abs=0.02), modality
    assert avail.all(axis=1).mean() == pytest.approx(0.13, abs=0.02)
    assert avail.any(axis=1).all()
    for seed in range(5):  # any seed: exact counts
        avail = phantom.availability(100, seed=seed, missingness="remind")
        assert avail.sum(axis=0).tolist() == [100, 63, 94, 20] and avail.all(axis=1).sum() == 13
    splits = phantom.assign_splits(avail, seed=0)
    assert [splits.count(s) for s in ("train", "val", "test")] == [70, 15, 15]
    # Stratified: the subjects with FLAIR are spread over the splits.
    flair_splits = {s for s, row in zip(splits, avail) if row[3]}
    assert flair_splits == {"train", "val", "test"}
    with pytest.raises(ValueError, match="missingness"):
        phantom.availability(10, 0, "random")


def test_remind_manifest_matches_availability(tmp_path):
    manifest = phantom.make_cohort(tmp_path, subjects=8, seed=3, shape=(16, 16, 8), workers=1)
    cohort = Cohort.load(manifest)
    expected = phantom.availability(8, 3, "remind")
    assert [s.available(cohort.modalities) for s in cohort.subjects] == [tuple(r) for r in expected]


def test_contrasts_follow_tissue_physics():
    subject = phantom.generate_subject(0, seed=0, shape=(64, 64, 32))
    tissues = subject.tissues

    def median(modality, tissue):
        # Ultrasound: inside its sector; MR: inside the brain mask (skull-stripped).
        inside = subject.images["us"] > 0 if modality == "us" else subject.brain_mask
        return float(np.median(subject.images[modality][(tissues == tissue) & inside]))

    t = phantom
    assert median("t2", t.CSF) > median("t2", t.GM) > median("t2", t.WM)  # T2w: CSF bright
    assert median("cet1", t.ENHANCING) > median("cet1", t.WM) > median("cet1", t.CSF)  # rim enhances
    assert median("flair", t.OEDEMA) > median("flair", t.WM) > 3 * median("flair", t.CSF)  # CSF nulled
    assert median("us", t.ENHANCING) > median("us", t.WM) > median("us", t.CSF)
    # Subjects differ (smooth deformation, tumour placement) but share the anatomy.
    other = phantom.generate_subject(1, seed=0, shape=(64, 64, 32), modalities=["t2"])
    overlap = ((tissues == t.WM) & (other.tissues == t.WM)).sum() / (tissues == t.WM).sum()
    assert 0.5 < overlap < 0.98
    assert not np.array_equal(subject.seg > 0, other.seg > 0)

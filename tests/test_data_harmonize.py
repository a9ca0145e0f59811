"""Intensity harmonization: WM-median targets, inversion, rules, and agreement on the two real cases."""

from __future__ import annotations

import numpy as np
import pytest

from mmhvae.config import DataConfig
from mmhvae.data.harmonize import (
    HarmonizationError,
    estimate_wm_mask,
    harmonize,
    harmonize_subject,
    invert_harmonization,
)
from mmhvae.data.phantom import WM, generate_subject


@pytest.fixture(scope="module")
def phantom():
    return generate_subject(3, seed=0, shape=(64, 64, 32))


def test_wm_median_hits_the_target_and_inverts():
    rng = np.random.default_rng(0)
    volume = rng.uniform(50, 400, (10, 10, 10)).astype(np.float32)
    wm = np.zeros(volume.shape, bool)
    wm[2:6] = True
    cfg = DataConfig()
    out, params = harmonize(volume, "t2", cfg, wm_mask=wm)
    assert params.method == "wm-median" and out.dtype == np.float32
    assert out.min() == pytest.approx(0.0, abs=1e-6)
    assert np.median(out[wm]) == pytest.approx(1 / 7, rel=1e-5)
    np.testing.assert_allclose(invert_harmonization(out, params), volume, rtol=1e-5)


def test_percentile_minmax_and_none():
    volume = np.linspace(0, 1000, 1000, dtype=np.float32).reshape(10, 10, 10)
    out, params = harmonize(volume, "cet1", DataConfig(harmonization="percentile", percentiles=[0.0, 100.0]))
    assert params.method == "percentile" and out.max() == pytest.approx(1.0)
    out, params = harmonize(volume * 3 + 7, "us", DataConfig())  # ultrasound: always min-max
    assert params.method == "minmax" and (out.min(), out.max()) == (0.0, pytest.approx(1.0))
    out, params = harmonize(volume, "t2", DataConfig(harmonization="none"))
    np.testing.assert_array_equal(out, volume)


def test_rules_and_targets_are_required():
    volume = np.random.default_rng(0).uniform(1, 2, (6, 6, 6)).astype(np.float32)
    with pytest.raises(HarmonizationError, match=r"no white-matter rule for modality 'pd'.*wm_cluster_rule\.pd"):
        harmonize(volume, "pd", DataConfig(wm_targets={"pd": 0.2}))
    with pytest.raises(HarmonizationError, match=r"no white-matter target for modality 'pd'"):
        harmonize(volume, "pd", DataConfig())
    with pytest.raises(HarmonizationError, match="no brain voxels"):
        harmonize(np.zeros((4, 4, 4)), "t2", DataConfig())


@pytest.mark.parametrize("modality", ["t2", "cet1"])
def test_clustering_finds_phantom_white_matter(phantom, modality):
    """Each contrast's rule (darkest / brightest class) recovers the phantom's true white matter."""
    truth = phantom.tissues == WM
    wm = estimate_wm_mask(phantom.images[modality], modality, DataConfig(), phantom.brain_mask)
    dice = 2 * (wm & truth).sum() / (wm.sum() + truth.sum())
    assert dice > 0.8


def test_subject_harmonization_borrows_the_t2_mask_for_flair(phantom):
    from mmhvae.data.cohort import SubjectVolumes

    volumes = SubjectVolumes("p", dict(phantom.images), phantom.affine, None, brain_mask=phantom.brain_mask)
    images, params = harmonize_subject(volumes, DataConfig())
    truth = phantom.tissues == WM
    for modality, target in (("t2", 1 / 7), ("cet1", 1 / 5), ("flair", 1 / 3)):
        assert np.median(images[modality][truth]) == pytest.approx(target, rel=0.05)
    assert params["us"].method == "minmax"


# --- the two real cases ---------------------------------------------------------------------------


def _reference_wm(volumes) -> np.ndarray:
    """Reference white matter by another algorithm than the one under test: 3-class multi-Otsu
    thresholds (scikit-image) on native T1 and on T2; WM = brightest T1 class and darkest T2 class."""
    from skimage.filters import threshold_multiotsu

    t1, t2 = volumes.images["t1"], np.maximum(volumes.images["t2"], 0)
    brain = t1 > 0
    t1_thresholds = threshold_multiotsu(t1[brain], classes=3)
    t2_thresholds = threshold_multiotsu(t2[brain], classes=3)
    return brain & (t1 > t1_thresholds[1]) & (t2 < t2_thresholds[0])


@pytest.mark.real
def test_real_cases_agree_after_wm_median_harmonization(real_data_dir):
    """Two scanners, two intensity scales (BraTS 2023 and TCGA): after harmonization their white
    matter has the same median within 5% in T2, FLAIR and ceT1 (paper §4.4.1)."""
    from mmhvae.data.cohort import Cohort, load_subject

    cohort = Cohort.load(real_data_dir)
    cfg = DataConfig()
    medians = {}  # modality -> [(raw median, harmonized median) per case] in the reference WM
    for subject in cohort.subjects:
        volumes = load_subject(subject)
        reference = _reference_wm(volumes)
        images, params = harmonize_subject(volumes, cfg)
        assert all(p.method == "wm-median" for p in params.values())
        for modality in ("t2", "flair", "cet1"):
            raw = float(np.median(volumes.images[modality][reference]))
            medians.setdefault(modality, []).append((raw, float(np.median(images[modality][reference]))))
    for modality, ((raw_a, a), (raw_b, b)) in medians.items():
        disagreement = abs(a - b) / ((a + b) / 2)
        assert disagreement < 0.05, (modality, a, b)
        assert disagreement < abs(raw_a - raw_b) / ((raw_a + raw_b) / 2), (modality, raw_a, raw_b)
        target = cfg.wm_targets[modality]
        assert abs(a / target - 1) < 0.1 and abs(b / target - 1) < 0.1, (modality, a, b)


@pytest.mark.parametrize("agree", [True, False])
def test_disagreeing_white_matter_masks_are_reported(agree):
    """When T1 and T2 call different tissues white matter (e.g. scalp fat in an image without a brain
    mask), the subject is named in a warning instead of being harmonized silently."""
    import warnings

    from mmhvae.data.cohort import SubjectVolumes
    from mmhvae.data.harmonize import HarmonizationWarning

    rng = np.random.default_rng(0)
    labels = np.zeros((24, 24, 12), dtype=int)
    labels[2:22, 2:22, 1:11] = 1
    labels[4:20, 4:20, 1:11] = 2
    labels[7:17, 7:17, 1:11] = 3  # three classes of similar size
    t1_levels = {1: 100.0, 2: 200.0, 3: 300.0}  # WM (brightest) = label 3
    t2_levels = {1: 300.0, 2: 200.0, 3: 100.0} if agree else {1: 200.0, 2: 100.0, 3: 300.0}
    images = {}
    for name, levels in (("t1", t1_levels), ("t2", t2_levels)):
        vol = np.zeros(labels.shape, dtype=np.float32)
        for k, value in levels.items():
            vol[labels == k] = value
        images[name] = vol + rng.normal(0, 3, vol.shape).astype(np.float32) * (labels > 0)
    volumes = SubjectVolumes("case", images, np.eye(4), None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        harmonize_subject(volumes, DataConfig())
    reported = [w for w in caught if issubclass(w.category, HarmonizationWarning)]
    assert bool(reported) is (not agree)
    if reported:
        assert "'case'" in str(reported[0].message) and "brain mask" in str(reported[0].message)

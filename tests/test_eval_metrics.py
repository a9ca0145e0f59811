"""PSNR / SSIM against scikit-image and MONAI, foreground selection, and the metric accumulator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import PSNRMetric, SSIMMetric
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mmhvae.eval.metrics import (
    MetricAccumulator,
    background_value,
    foreground_slices,
    psnr,
    resolve_data_range,
    score_volume,
    ssim2d_slices,
    ssim3d,
)


def _pair(seed: int = 0, shape=(12, 40, 48)) -> tuple[np.ndarray, np.ndarray]:
    """A blob-like ground truth with empty first/last slices, and a noisy prediction."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    target = np.clip(1.0 - (zz**2 + yy**2 + xx**2), 0, None) * 3.0
    target[[0, -1]] = 0.0
    pred = np.clip(target + rng.normal(0, 0.1, shape), 0, None)
    return pred, target


@pytest.fixture(scope="module")
def real_slab(real_data_dir):
    nib = pytest.importorskip("nibabel")
    path = real_data_dir / "TCGA-DU-7294" / "TCGA-DU-7294-t2.nii.gz"
    if not path.exists():
        pytest.skip(f"{path} not found")
    vol = np.asarray(nib.load(path).dataobj, dtype=np.float64)
    target = vol[40:200, 40:200, 60:76]  # 16 axial slices through the brain, cropped for speed
    rng = np.random.default_rng(1)
    pred = np.where(target != 0, target + rng.normal(0, 0.05 * target.max(), target.shape), 0.0)
    return pred, target


# --- PSNR ------------------------------------------------------------------------------------------


def test_psnr_matches_skimage_and_monai_on_random_data():
    pred, target = _pair()
    rng = target.max() - target.min()
    ours = psnr(pred, target)
    assert ours == pytest.approx(peak_signal_noise_ratio(target, pred, data_range=rng), rel=1e-10)
    monai = PSNRMetric(max_val=rng)(torch.from_numpy(pred)[None, None], torch.from_numpy(target)[None, None]).item()
    assert ours == pytest.approx(monai, rel=1e-5)


def test_psnr_on_real_slices(real_slab):
    pred, target = real_slab
    rng = float(target.max() - target.min())
    assert psnr(pred, target) == pytest.approx(peak_signal_noise_ratio(target, pred, data_range=rng), rel=1e-10)
    # a fixed range is used as given
    assert psnr(pred, target, data_range=1000.0) == pytest.approx(peak_signal_noise_ratio(target, pred, data_range=1000.0), rel=1e-10)


def test_psnr_mask_and_edge_cases():
    pred, target = _pair()
    mask = target > 1.0
    expected = 10 * math.log10((target.max() - target.min()) ** 2 / np.mean((pred[mask] - target[mask]) ** 2))
    assert psnr(pred, target, mask=mask) == pytest.approx(expected)
    assert psnr(target, target) == math.inf
    with pytest.raises(ValueError, match="differs from ground-truth shape"):
        psnr(pred[:-1], target)
    with pytest.raises(ValueError, match="constant"):
        psnr(pred, np.zeros_like(target))
    with pytest.raises(ValueError, match="positive"):
        psnr(pred, target, data_range=-1.0)
    with pytest.raises(ValueError, match="NaN"):
        psnr(np.full_like(target, np.nan), target)


def test_data_range_zero_means_automatic():
    _, target = _pair()
    assert resolve_data_range(target, 0) == resolve_data_range(target, None) == pytest.approx(target.max() - target.min())


# --- SSIM ------------------------------------------------------------------------------------------


def test_ssim2d_is_the_mean_of_per_slice_skimage_ssim_over_foreground_slices():
    pred, target = _pair()
    rng = target.max() - target.min()
    expected = np.mean([structural_similarity(pred[i], target[i], data_range=rng) for i in range(1, target.shape[0] - 1)])
    assert ssim2d_slices(pred, target, axis=0) == pytest.approx(expected, rel=1e-12)
    # along another axis (the ball touches neither x = -1 nor x = 1, so the two end slices are empty)
    scored = [i for i in range(target.shape[2]) if target[:, :, i].any()]
    assert len(scored) == target.shape[2] - 2
    expected_x = np.mean([structural_similarity(pred[:, :, i], target[:, :, i], data_range=rng) for i in scored])
    assert ssim2d_slices(pred, target, axis=2) == pytest.approx(expected_x, rel=1e-12)


def test_ssim2d_is_not_the_channel_axis_quirk():
    pred, target = _pair()
    pred[[0, -1]] = 0.0  # a method that leaves the empty slices empty
    rng = target.max() - target.min()
    quirk = structural_similarity(pred, target, data_range=rng, channel_axis=0)  # what the official code did
    # channel_axis=0 is the mean 2D SSIM over *every* slice along axis 0 (whatever axis 0 is) ...
    everything = ssim2d_slices(pred, target, axis=0, slice_mask=np.ones(target.shape[0], bool))
    assert everything == pytest.approx(quirk, rel=1e-12)
    # ... so empty slices, each a perfect 1.0, inflate it; we score foreground slices only
    assert ssim2d_slices(pred, target, axis=0) < quirk - 0.01


def test_ssim2d_matches_monai_with_the_same_estimator(real_slab):
    pred, target = real_slab
    rng = float(target.max() - target.min())
    # MONAI: uniform 7x7 window, population covariance, mean over the valid (unpadded) region,
    # which is what skimage computes with use_sample_covariance=False (it crops the padded border).
    ours = ssim2d_slices(pred, target, rng, axis=2, slice_mask=np.ones(target.shape[2], bool), ssim_kwargs={"use_sample_covariance": False})
    slices = lambda v: torch.from_numpy(np.moveaxis(v, 2, 0)[:, None].copy())  # noqa: E731
    metric = SSIMMetric(spatial_dims=2, data_range=rng, kernel_type="uniform", win_size=7)
    monai = metric(slices(pred), slices(target)).mean().item()
    assert ours == pytest.approx(monai, abs=1e-5)


def test_ssim3d_matches_skimage_on_the_foreground_slab():
    pred, target = _pair()
    rng = target.max() - target.min()
    expected = structural_similarity(pred[1:-1], target[1:-1], data_range=rng)
    assert ssim3d(pred, target, axis=0) == pytest.approx(expected, rel=1e-12)
    thin = np.zeros_like(target)
    thin[5:7] = target[5:7]  # 2 foreground slices: the slab is widened to the 7-slice window
    window = slice(3, 10)  # 2 slices added before, 3 after
    assert ssim3d(pred, thin, axis=0) == pytest.approx(structural_similarity(pred[window], thin[window], data_range=rng), rel=1e-12)


def test_ssim_with_a_mask_averages_the_map_inside_the_mask():
    pred, target = _pair()
    rng = target.max() - target.min()
    mask = target > 1.5
    expected = []
    for i in range(target.shape[0]):
        if mask[i].any():
            _, smap = structural_similarity(pred[i], target[i], data_range=rng, full=True)
            expected.append(smap[mask[i]].mean())
    assert ssim2d_slices(pred, target, axis=0, foreground=mask) == pytest.approx(np.mean(expected), rel=1e-12)


# --- foreground ----------------------------------------------------------------------------------


def test_foreground_ignores_negative_undershoots_of_a_zero_background():
    _, target = _pair()
    target[5, 3, 3] = -0.2  # interpolation undershoot: the minimum is no longer the background
    assert background_value(target) == 0.0
    assert foreground_slices(target, 0).tolist() == [False] + [True] * 10 + [False]
    mask = np.zeros(target.shape, bool)
    mask[4:6] = True
    assert np.flatnonzero(foreground_slices(target, 0, mask)).tolist() == [4, 5]


def test_foreground_slices_on_real_data(real_slab):
    _, target = real_slab
    assert foreground_slices(target, 2).all()
    padded = np.concatenate([np.zeros(target.shape[:2] + (3,)), target], axis=2)
    assert foreground_slices(padded, 2).tolist() == [False] * 3 + [True] * target.shape[2]


def test_score_volume_scores_only_foreground_slices():
    pred, target = _pair()
    scores = score_volume(pred, target, axis=0, lpips_model=None)
    assert set(scores) == {"psnr", "ssim", "ssim3d", "lpips"} and scores["lpips"] is None
    inner = slice(1, -1)
    rng = target.max() - target.min()
    assert scores["psnr"] == pytest.approx(peak_signal_noise_ratio(target[inner], pred[inner], data_range=rng))
    assert scores["ssim"] == pytest.approx(ssim2d_slices(pred, target, axis=0))
    assert set(score_volume(pred, target, with_ssim3d=False, with_lpips=False)) == {"psnr", "ssim"}
    with pytest.raises(ValueError, match="no foreground"):
        score_volume(pred, np.zeros_like(target), data_range=1.0)


# --- accumulator -----------------------------------------------------------------------------------


def test_accumulator_summary_duplicates_and_round_trip():
    acc = MetricAccumulator()
    for subject, value in (("a", 20.0), ("b", 22.0), ("c", 27.0)):
        acc.add_scores("ours", "us+t2", "flair", subject, {"psnr": value, "lpips": None})
    acc.add("mvae", "us+t2", "flair", "a", "psnr", 18.0)
    with pytest.raises(ValueError, match="duplicate score"):
        acc.add("ours", "us+t2", "flair", "a", "psnr", 1.0)
    cells = {(r["method"], r["metric"]): r for r in acc.summary()}
    ours = cells[("ours", "psnr")]
    assert ours["mean"] == pytest.approx(23.0) and ours["std"] == pytest.approx(np.std([20, 22, 27])) and ours["n"] == 3
    assert cells[("ours", "lpips")]["mean"] is None and cells[("ours", "lpips")]["n_unavailable"] == 3
    assert cells[("mvae", "psnr")]["std"] == 0.0
    assert acc.values("ours", "flair", "psnr", "us+t2") == {"a": 20.0, "b": 22.0, "c": 27.0}
    assert acc.values("ours", "flair", "psnr") == {("us+t2", "a"): 20.0, ("us+t2", "b"): 22.0, ("us+t2", "c"): 27.0}
    again = MetricAccumulator.from_rows(acc.rows())
    assert again.records == acc.records
    assert acc.methods == ["ours", "mvae"] and acc.metrics == ["psnr", "lpips"]


def test_lpips_of_slices_smaller_than_alexnet_s_minimum_is_scored_after_padding():
    """A small field of view (22 x 27 px) still gets an LPIPS; identical images score 0."""
    from mmhvae.eval.lpips import load_lpips
    from mmhvae.eval.metrics import lpips_slices

    model = load_lpips()
    if model is None:
        pytest.skip("LPIPS weights unavailable")
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 1, (3, 22, 27)).astype(np.float32)
    assert lpips_slices(model, truth, truth) == pytest.approx(0.0, abs=1e-6)
    assert lpips_slices(model, truth[::-1].copy() * 0.5, truth) > 0.01

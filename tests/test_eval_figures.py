"""Figures: valid PNGs of the documented size, and the joint latent PCA."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmhvae.eval.figures import LABEL_PX, TITLE_PX, latent_pca, subset_grid, temperature_sweep


def _image(seed: int, shape=(48, 40)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.sin(xx / (3 + seed)) + np.cos(yy / 5) + 0.1 * rng.normal(size=shape)


def _png(path, width: int, height: int) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (width, height)
        return np.asarray(im.convert("RGB"))


def test_subset_grid(tmp_path):
    inputs = {"us": _image(0), "t2": _image(1), "flair": _image(2)}
    rows = [
        ("us", {"t2": _image(3), "flair": _image(4)}),
        ("t2+flair", {"t2": _image(5), "flair": _image(6)}),
        ("us+t2+flair", {"t2": _image(7)}),  # flair not synthesized for this row: a grey tile
    ]
    truth = {"t2": _image(1), "flair": _image(2)}
    path = subset_grid(inputs, rows, truth, tmp_path / "grid.png", tile_px=64, title="subject s01")
    pixels = _png(path, LABEL_PX + 5 * 64, 2 * TITLE_PX + 4 * 64)
    assert pixels.std() > 10  # not a blank canvas
    with pytest.raises(ValueError, match="outside the input columns"):
        subset_grid(inputs, [("cet1", {})], truth, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="no image was given"):
        subset_grid({"us": _image(0)}, [("t2", {"t2": _image(1)})], truth, tmp_path / "bad.png", modalities=["us", "t2"])


def test_temperature_sweep(tmp_path):
    sweep = {0.7: np.stack([_image(s) for s in range(3)]), 0.0: _image(9), 1.0: [_image(s) for s in range(3, 6)]}
    path = temperature_sweep(sweep, tmp_path / "sweep.png", title="t2 -> us", conditioning={"t2": _image(10)}, ground_truth=_image(11), tile_px=64)
    # columns: 1 input + 3 temperatures + ground truth; rows: 3 samples + std row
    _png(path, LABEL_PX + 5 * 64, 2 * TITLE_PX + 4 * 64)
    single = temperature_sweep({0.5: _image(0)}, tmp_path / "single.png", tile_px=50)
    _png(single, LABEL_PX + 50, TITLE_PX + 50)
    with pytest.raises(ValueError, match=r"\(S, H, W\)"):
        temperature_sweep({0.5: np.zeros((2, 2, 8, 8))}, tmp_path / "bad.png")


def test_latent_pca_maps_is_fitted_jointly(tmp_path):
    rng = np.random.default_rng(0)
    shared = rng.normal(size=(8, 24, 20))
    latents = {"us": shared + 0.01 * rng.normal(size=shared.shape), "t2": shared, "us+t2": shared * 1.0}
    result = latent_pca(latents, tmp_path / "pca.png", labels={"us+t2": "all"}, n_pixels=300, tile_px=96)
    _png(result.path, LABEL_PX + 3 * 96, TITLE_PX + 2 * 96)
    assert result.components.shape == (3, 8) and result.mean.shape == (8,)
    np.testing.assert_allclose(result.components @ result.components.T, np.eye(3), atol=1e-10)
    assert np.all(np.diff(result.explained_variance_ratio) <= 0)
    # one joint basis: identical latents give identical projections whichever subset they came from
    features = shared.reshape(8, -1).T
    np.testing.assert_allclose(result.transform(features), result.transform(latents["us+t2"].reshape(8, -1).T))


def test_latent_pca_features_scatter_and_errors(tmp_path):
    rng = np.random.default_rng(1)
    result = latent_pca({"us": rng.normal(size=(500, 4)), "t2": rng.normal(1.0, 1.0, size=(400, 4))}, tmp_path / "scatter.png", tile_px=80)
    _png(result.path, LABEL_PX + 4 * 80, TITLE_PX + 4 * 80)
    # the subsets differ by a shift along (1, 1, 1, 1): the first component finds it
    assert abs(result.components[0] @ np.full(4, 0.5)) > 0.9
    with pytest.raises(ValueError, match="one C"):
        latent_pca({"us": np.zeros((10, 4)), "t2": np.zeros((10, 5))}, tmp_path / "bad.png")

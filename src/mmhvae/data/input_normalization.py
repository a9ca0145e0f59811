"""What the encoders see: acquired images scaled per image, *without* harmonization (paper §4.4.1).

The paper harmonizes only the targets (what the loss and the evaluator score, see
:mod:`mmhvae.data.harmonize`); the model receives the images as acquired and must output harmonized
ones, so it learns to harmonize. As in the official code, an input is clipped to two percentiles of
its foreground and min-max scaled to [0, 1]; the background maps to 0.

``data.input_normalization``:

* ``volume`` (default): percentiles over the foreground of the whole 3D volume, one scale per volume,
  so neighbouring slices keep their relative brightness;
* ``slice``: percentiles per 2D slice, as the official code does for its 2D images (near-empty edge
  slices get their own, noisier scale);
* ``none``: the acquired values (only sensible when the cohort is already normalized).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from mmhvae.config import DataConfig
from mmhvae.data.foreground import foreground_mask

MODES = ("volume", "slice", "none")


def _scale(values: np.ndarray, image: np.ndarray, percentiles, foreground: np.ndarray) -> np.ndarray:
    if values.size == 0:
        return np.zeros(image.shape, dtype=np.float32)
    lo, hi = (np.float32(v) for v in np.percentile(values, percentiles))
    if not hi > lo:
        return np.where(foreground, np.float32(hi > 0), np.float32(0)).astype(np.float32)
    out = np.clip((image - lo) / (hi - lo), 0.0, 1.0)
    return np.where(foreground, out, np.float32(0)).astype(np.float32)


def normalize_input_volume(
    volume: np.ndarray, cfg: DataConfig, foreground: Optional[np.ndarray] = None
) -> np.ndarray:
    """One acquired volume ``(X, Y, Z)`` -> float32 in [0, 1] (``volume`` mode) or unchanged.

    ``foreground`` (e.g. the brain mask) bounds the percentile statistics and is kept; everything
    outside it becomes 0. Default: the voxels that differ from the volume's constant background.
    In ``slice`` mode the volume is returned as float32 and :func:`normalize_input_slices` scales it
    after slicing.
    """
    volume = np.asarray(volume, dtype=np.float32)
    mode = cfg.input_normalization
    if mode not in MODES:
        raise ValueError(f"data.input_normalization={mode!r}: choose one of {list(MODES)}")
    if mode != "volume":
        return volume
    if foreground is None:
        foreground = foreground_mask(volume)
    return _scale(volume[foreground], volume, cfg.input_percentiles, foreground)


def normalize_input_slices(slices: np.ndarray, cfg: DataConfig, foreground: np.ndarray) -> np.ndarray:
    """``slice`` mode: each slice ``(N, H, W)`` scaled on its own foreground ``(N, H, W)``; else unchanged."""
    slices = np.asarray(slices, dtype=np.float32)
    if cfg.input_normalization != "slice":
        return slices
    out = np.empty_like(slices)
    for k in range(slices.shape[0]):
        out[k] = _scale(slices[k][foreground[k]], slices[k], cfg.input_percentiles, foreground[k])
    return out

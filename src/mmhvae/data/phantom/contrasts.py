"""MR contrasts from tissue properties, with the imperfections of a real scanner.

Per tissue class: proton density, T1 and T2 at 3 T (ms), T1 after gadolinium, and whether the
class is flowing blood (a flow void on spin-echo sequences). Signals follow the sequence equations:
T1-weighted and contrast-enhanced T1 as an inversion-prepared gradient echo (MPRAGE-like: CSF dark,
white matter brightest), T2-weighted spin echo (CSF brightest) and FLAIR (inversion time at the null
of CSF: CSF dark, oedema and lesions bright). Per subject ("site") the sequence timings vary by
about 10%, so tissue ratios differ between subjects, and the scanner gain by a factor ~3, so absolute
scales do; each volume then gets partial-volume blur, a smooth multiplicative bias field, Rician
noise and integer quantization.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from mmhvae.data.phantom.anatomy import TISSUE_NAMES, WM, Anatomy
from mmhvae.data.phantom.fields import grid

MR_MODALITIES = ("t1", "cet1", "t2", "flair")

#                         csf    gm    wm    necr  oedema enh   lesion vessel calcif
_PD = np.array([0.0, 1.00, 0.80, 0.70, 0.95, 0.88, 0.85, 0.82, 0.90, 0.10], np.float32)
_T1 = np.array([1.0, 4000, 1330, 830, 2500, 1600, 1500, 1250, 1650, 500], np.float32)
_T2 = np.array([1.0, 2000, 110, 80, 400, 220, 140, 160, 150, 20], np.float32)
_T1_GADOLINIUM = np.array([1.0, 4000, 1330, 830, 2300, 1500, 400, 1250, 250, 500], np.float32)
_FLOW = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0.15, 1], np.float32)  # spin-echo flow void of vessels
assert len(_PD) == len(TISSUE_NAMES)

# Nominal sequences (ms); "ir" = magnitude inversion recovery, "se" = spin echo.
_SEQUENCES = {
    "t1": dict(kind="ir", tr=2300.0, te=3.0, ti=1100.0),
    "cet1": dict(kind="ir", tr=2300.0, te=3.0, ti=1100.0),
    "t2": dict(kind="se", tr=4000.0, te=100.0, ti=None),
    "flair": dict(kind="ir", tr=9000.0, te=120.0, ti=None),  # ti: at the null of CSF
}
_BASE_GAIN = {"t1": 3000.0, "cet1": 3000.0, "t2": 2500.0, "flair": 3500.0}  # scanner units per unit signal


def signal_table(modality: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """Noise-free signal per tissue class; ``rng`` jitters the sequence timings (site variation)."""
    seq = dict(_SEQUENCES[modality])
    jitter = (lambda lo, hi: 1.0) if rng is None else (lambda lo, hi: float(rng.uniform(lo, hi)))
    tr, te = seq["tr"] * jitter(0.9, 1.1), seq["te"] * jitter(0.85, 1.15)
    t1 = _T1_GADOLINIUM if modality == "cet1" else _T1
    decay = np.exp(-te / _T2)
    if seq["kind"] == "se":
        return (_PD * (1.0 - np.exp(-tr / t1)) * decay * _FLOW).astype(np.float32)
    if modality == "flair":
        # Null point of CSF with a finite TR: 1 - 2 exp(-TI/T1) + exp(-TR/T1) = 0 (a few % off per site).
        ti = _T1[1] * np.log(2.0 / (1.0 + np.exp(-tr / _T1[1]))) * jitter(0.97, 1.03)
        decay = decay * _FLOW
    else:
        ti = seq["ti"] * jitter(0.92, 1.08)
    recovery = np.abs(1.0 - 2.0 * np.exp(-ti / t1) + np.exp(-tr / t1))
    return (_PD * recovery * decay).astype(np.float32)


def bias_field(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Smooth multiplicative bias: exp of a random quadratic polynomial (about ±20% over the head)."""
    x, y, z = [c / np.float32(90.0) for c in grid(shape, spacing)]
    c = rng.normal(0.0, 0.08, 10).astype(np.float32)
    log_bias = c[0] * x + c[1] * y + c[2] * z + c[3] * x * x + c[4] * y * y + c[5] * z * z
    log_bias = log_bias + c[6] * x * y + c[7] * x * z + c[8] * y * z
    return np.exp(log_bias).astype(np.float32)


def mr_image(rng: np.random.Generator, anatomy: Anatomy, modality: str, texture: np.ndarray,
             spacing: Sequence[float]) -> np.ndarray:
    """Scanner-like ``(X, Y, Z)`` float32 volume (integer values), skull-stripped (zero outside the brain)."""
    table = signal_table(modality, rng)
    clean = np.tensordot(table[1:], anatomy.fractions, axes=1).astype(np.float32)
    clean *= texture
    # Point-spread function: partial volume between neighbouring voxels.
    clean = ndi.gaussian_filter(clean, 0.45, truncate=2.0)
    gain = np.float32(_BASE_GAIN[modality] * np.exp(rng.uniform(-0.6, 0.6)))
    clean *= bias_field(rng, anatomy.tissues.shape, spacing) * gain
    # Rician noise: magnitude of a complex signal with Gaussian noise in both channels.
    sigma = np.float32(rng.uniform(0.015, 0.035)) * gain * table[WM]
    real = rng.standard_normal(clean.shape, dtype=np.float32)
    real *= sigma
    real += clean
    imag = rng.standard_normal(clean.shape, dtype=np.float32)
    imag *= sigma
    magnitude = np.sqrt(real * real + imag * imag)
    magnitude *= anatomy.brain
    # Scanners store integers (int16 here).
    return np.rint(np.clip(magnitude, 0.0, 32767.0, out=magnitude), out=magnitude)

"""The built-in cohort: deterministic brain-tumour phantoms with MR and intra-operative ultrasound.

Each subject is drawn from its own random stream ``default_rng([seed, index])``, so a subject does not
depend on how many others are generated, and the same seed gives byte-identical files.

Anatomy (in millimetres, so any grid size shows the same head): nested ellipsoids for scalp, skull,
subarachnoid CSF and brain, a folded grey/white-matter boundary with sulci at the zero crossings of a
smooth random field, lateral ventricles, deep grey nuclei, the interhemispheric fissure, and a
tumour (necrotic core, enhancing rim, infiltrating oedema) with a mass effect. A smooth random
deformation per subject makes the subjects differ.

MR contrasts come from tissue parameters (proton density, T1, T2) through the spin-echo and
inversion-recovery signal equations: T2-weighted (CSF bright), contrast-enhanced T1 (gadolinium
shortens T1 in the enhancing rim; CSF dark) and FLAIR (inversion time nulls CSF; oedema bright).
Each MR volume gets a per-subject scanner gain, a smooth multiplicative bias field, Rician noise and
integer quantization (like scanner output). MR volumes are skull-stripped like BraTS and the
preprocessed ReMIND data (zero outside the brain mask), so a phantom file given to ``mmhvae synthesize``
without its mask is harmonized exactly as in training; the brain mask is also written (manifest column
``mask``). Skull and scalp still exist in the anatomy, where the ultrasound can see them.

The ultrasound simulates a 3D intra-operative sweep through a craniotomy: a probe on the brain
surface above the tumour, a sector (pyramid with a curved bottom) field of view pointing at the
tumour, tissue echogenicity, specular reflections at impedance boundaries facing the beam, depth
attenuation, multiplicative (Rayleigh) speckle, log compression and 8-bit quantization; zero outside
the sector.

Missingness ``remind`` follows the ReMIND cohort (ultrasound 100%, ceT1 94%, T2 63%, FLAIR 20%, about
13% complete) with exact counts; ``complete`` keeps everything. Splits (70/15/15) are stratified by
availability pattern so each split mirrors the cohort.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage as ndi

MODALITIES = ("us", "t2", "cet1", "flair")
FOV_MM = (192.0, 192.0, 160.0)  # default field of view; spacing = FOV / shape

# Tissue labels of the phantom (not the segmentation labels).
AIR, SCALP, SKULL, CSF, GM, WM, NECROSIS, OEDEMA, ENHANCING = range(9)
SEG_OF_TISSUE = {NECROSIS: 1, OEDEMA: 2, ENHANCING: 3}  # BraTS-like: 1 core, 2 oedema, 3 enhancing

# Proton density, T1 (ms), T2 (ms) per tissue; T1 of the enhancing rim after gadolinium.
_PD = np.array([0.0, 0.90, 0.08, 1.00, 0.80, 0.70, 0.95, 0.88, 0.85], dtype=np.float32)
_T1 = np.array([1.0, 350, 500, 4000, 1300, 800, 2500, 1600, 1400], dtype=np.float32)
_T2 = np.array([1.0, 70, 30, 2000, 110, 80, 500, 180, 130], dtype=np.float32)
_T1_GADOLINIUM = 350.0
# Ultrasound: backscatter strength and acoustic impedance (MRayl) per tissue.
_ECHO = np.array([0.0, 0.55, 1.00, 0.02, 0.22, 0.42, 0.10, 0.60, 1.00], dtype=np.float32)
_IMPEDANCE = np.array([0.0004, 1.65, 7.8, 1.51, 1.58, 1.62, 1.55, 1.60, 1.68], dtype=np.float32)

# Sequence parameters (ms): spin echo T2w, spin echo T1w after contrast, FLAIR with CSF nulled.
_SEQUENCES = {
    "t2": dict(tr=4000.0, te=100.0, ti=None),
    "cet1": dict(tr=500.0, te=10.0, ti=None),
    # Null point of CSF (T1 = 4000 ms) with a finite TR: 1 - 2 exp(-TI/T1) + exp(-TR/T1) = 0.
    "flair": dict(tr=9000.0, te=120.0, ti=4000.0 * np.log(2.0 / (1.0 + np.exp(-9000.0 / 4000.0)))),
}
_BASE_GAIN = {"t2": 2500.0, "cet1": 3000.0, "flair": 3500.0}  # scanner units per unit signal

# ReMIND availability (fractions of subjects); ultrasound is always present.
REMIND = {"us": 1.00, "cet1": 0.94, "t2": 0.63, "flair": 0.20, "complete": 0.13}
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)


@dataclass
class PhantomSubject:
    """One generated subject: float32 images ``(X, Y, Z)`` of every modality, uint8 tissue labels,
    uint8 segmentation (0 background, 1 necrotic core, 2 oedema, 3 enhancing) and the bool brain mask."""

    images: dict[str, np.ndarray]
    tissues: np.ndarray
    seg: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray


# --------------------------------------------------------------------------------------------------
# Random smooth fields
# --------------------------------------------------------------------------------------------------


def _smooth_field(
    rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float], scale_mm: float
) -> np.ndarray:
    """Zero-mean, unit-std random field ``shape`` with features about ``scale_mm`` wide.

    White noise on a coarse grid (one node per ``scale_mm``) is interpolated to full resolution with
    Gaussian weights, one axis at a time as matrix products: a few thousand random numbers and three
    small matrix multiplications instead of filtering a full-resolution noise volume.
    """
    field = rng.standard_normal([max(int(np.ceil(n * s / scale_mm)) + 3, 4) for n, s in zip(shape, spacing)])
    field = field.astype(np.float32)
    for axis, (n, s) in enumerate(zip(shape, spacing)):
        weights = _interpolator(n, s, field.shape[axis], scale_mm)
        field = np.moveaxis(np.tensordot(weights, field, axes=([1], [axis])), 0, axis)
    return ((field - field.mean()) / (field.std() + 1e-6)).astype(np.float32)


def _interpolator(n: int, spacing: float, nodes: int, scale_mm: float) -> np.ndarray:
    """``(n, nodes)`` row-normalized Gaussian weights from coarse nodes to voxel centres."""
    voxels = (np.arange(n) - (n - 1) / 2) * spacing
    centres = (np.arange(nodes) - (nodes - 1) / 2) * scale_mm
    weights = np.exp(-0.5 * ((voxels[:, None] - centres[None, :]) / (0.6 * scale_mm)) ** 2)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def _grid(shape: Sequence[int], spacing: Sequence[float]) -> list[np.ndarray]:
    """Broadcastable millimetre coordinates of the voxel centres, origin at the volume centre."""
    axes = []
    for a, (n, s) in enumerate(zip(shape, spacing)):
        coords = ((np.arange(n, dtype=np.float32) - (n - 1) / 2) * s).astype(np.float32)
        view = [1, 1, 1]
        view[a] = n
        axes.append(coords.reshape(view))
    return axes


# --------------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------------


@dataclass
class _Anatomy:
    tissues: np.ndarray  # uint8 (X, Y, Z)
    brain: np.ndarray  # bool
    tumour_centre: np.ndarray  # mm
    tumour_radius: float
    head_centre: np.ndarray  # mm
    brain_axes: np.ndarray  # mm semi-axes of the brain ellipsoid


def _anatomy(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float]) -> _Anatomy:
    x, y, z = _grid(shape, spacing)
    # Per-subject head size and position (mm).
    axes = np.array([66.0, 80.0, 62.0], dtype=np.float32) * rng.uniform(0.92, 1.06, 3).astype(np.float32)
    centre = np.array([rng.normal(0, 2), rng.normal(0, 3), -8.0 + rng.normal(0, 3)], dtype=np.float32)

    # Tumour: centre in one hemisphere, inside the brain; radius of the enhancing shell (mm).
    side = rng.choice([-1.0, 1.0])
    for _ in range(100):
        t_rel = np.array([side * rng.uniform(0.25, 0.6), rng.uniform(-0.6, 0.6), rng.uniform(-0.1, 0.6)])
        if np.sum(t_rel**2) < 0.55:
            break
    t_centre = (centre + t_rel * axes).astype(np.float32)
    t_radius = float(rng.uniform(9.0, 18.0))

    # Smooth deformation (~40 mm features, ~3 mm amplitude) plus the tumour's mass effect, applied to
    # the coordinates at which the anatomy is evaluated.
    dx, dy, dz = x - t_centre[0], y - t_centre[1], z - t_centre[2]
    r2 = dx * dx + dy * dy + dz * dz
    # Voxels near the tumour sample anatomy closer to its centre: tissue is pushed outwards.
    push = np.float32(0.55) * np.exp(-r2 / np.float32(2 * (1.6 * t_radius) ** 2))
    warp = [_smooth_field(rng, shape, spacing, 40.0) * np.float32(3.0) for _ in range(3)]
    u = (x - centre[0] - dx * push + warp[0]) / axes[0]
    v = (y - centre[1] - dy * push + warp[1]) / axes[1]
    w = (z - centre[2] - dz * push + warp[2]) / axes[2]
    rho = np.sqrt(u * u + v * v + w * w)  # ellipsoidal radius: 1 at the brain surface

    tissues = _head_and_cortex(rng, rho, u * axes[0], w, shape, spacing)
    _deep_structures(rng, tissues, u, v, w, u * axes[0])
    # Tumour radius field with an irregular outline.
    rt = np.sqrt(r2) / (t_radius * (1.0 + 0.18 * _smooth_field(rng, shape, spacing, 12.0)))
    _tumour(rng, tissues, rt)
    # Like skull-stripping masks: brain tissue plus the CSF of ventricles and sulci, no outer CSF rim.
    brain_mask = (tissues >= GM) | ((tissues == CSF) & (rho < 0.98))
    return _Anatomy(tissues, brain_mask, t_centre, t_radius, centre, axes)


def _head_and_cortex(rng, rho, x_mm, w, shape, spacing) -> np.ndarray:
    """Scalp, skull, outer CSF and a folded cortex over white matter, as uint8 tissue labels."""
    tissues = np.zeros(tuple(shape), dtype=np.uint8)
    tissues[rho < 1.24] = SCALP
    tissues[rho < 1.15] = SKULL
    tissues[rho < 1.06] = CSF
    # Sulci are V-shaped valleys along the zero crossings of a smooth random field (``depth`` is
    # largest on a crossing and vanishes |fold| > 0.25 away). The pial surface and the grey/white
    # boundary, ~6 mm deeper (thicker than a real cortex, to stay visible at 1.5 mm voxels), both dip
    # into every sulcus, so white matter reaches into each gyrus and CSF fills the sulci.
    fold = _smooth_field(rng, shape, spacing, 11.0)
    depth = np.float32(0.25) * np.maximum(np.float32(1.0) - np.abs(fold) * np.float32(4.0), 0.0)
    folded = rho + depth
    brain = folded < 1.0
    tissues[brain] = GM
    tissues[folded < 0.91] = WM
    # Interhemispheric fissure above the ventricles.
    tissues[brain & (np.abs(x_mm) < 1.2) & (w > 0.25)] = CSF
    return tissues


def _deep_structures(rng, tissues, u, v, w, x_mm) -> None:
    """Deep grey nuclei (thalamus / basal ganglia), lateral ventricles (size varies: atrophy) arching
    over them, and the slit-like third ventricle on the midline; written into ``tissues``."""
    for sx in (-1.0, 1.0):
        nuclei = ((u - sx * 0.20) / 0.15) ** 2 + ((v + 0.05) / 0.20) ** 2 + ((w - 0.05) / 0.16) ** 2
        tissues[nuclei < 1.0] = GM
    vent = np.float32(rng.uniform(0.75, 1.35))
    for sx in (-1.0, 1.0):
        # Arched over the thalamus (bend) and diverging towards the frontal and occipital horns.
        bend = w - 0.25 + 0.35 * v * v
        spread = u - sx * (0.09 + 0.25 * v * v)
        lateral = (spread / (0.10 * vent)) ** 2 + (v / 0.45) ** 2 + (bend / (0.12 * vent)) ** 2
        tissues[lateral < 1.0] = CSF
    third = (np.abs(x_mm) < 1.5 * vent) & (np.abs(v + 0.05) < 0.15) & (np.abs(w - 0.05) < 0.13)
    tissues[third] = CSF


def _tumour(rng, tissues, rt) -> None:
    """Necrotic core, enhancing shell (``rt < 1``) and oedema infiltrating white matter further out
    (grey matter less far), at tumour radius ``rt``; written into ``tissues`` inside the brain."""
    necrotic = np.float32(rng.uniform(0.35, 0.7))
    oedema_reach = np.float32(rng.uniform(1.3, 2.0))
    in_brain = tissues >= GM
    tissues[in_brain & (rt < oedema_reach) & (tissues == WM)] = OEDEMA
    tissues[in_brain & (rt < 0.75 * oedema_reach) & (tissues == GM)] = OEDEMA
    tissues[in_brain & (rt < 1.0)] = ENHANCING
    tissues[in_brain & (rt < necrotic)] = NECROSIS


# --------------------------------------------------------------------------------------------------
# MR
# --------------------------------------------------------------------------------------------------


def _signal_table(modality: str) -> np.ndarray:
    """Noise-free signal per tissue from the spin-echo / inversion-recovery equations."""
    seq = _SEQUENCES[modality]
    t1 = _T1.copy()
    if modality == "cet1":
        t1[ENHANCING] = _T1_GADOLINIUM
    recovery = 1.0 - np.exp(-seq["tr"] / t1)
    if seq["ti"] is not None:  # magnitude inversion recovery
        recovery = np.abs(1.0 - 2.0 * np.exp(-seq["ti"] / t1) + np.exp(-seq["tr"] / t1))
    return (_PD * recovery * np.exp(-seq["te"] / _T2)).astype(np.float32)


def _bias_field(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Smooth multiplicative bias: exp of a random quadratic polynomial (about ±20% over the head)."""
    x, y, z = [c / np.float32(90.0) for c in _grid(shape, spacing)]
    c = rng.normal(0.0, 0.08, 10).astype(np.float32)
    log_bias = c[0] * x + c[1] * y + c[2] * z + c[3] * x * x + c[4] * y * y + c[5] * z * z
    log_bias = log_bias + c[6] * x * y + c[7] * x * z + c[8] * y * z
    return np.exp(log_bias).astype(np.float32)


def _mr(rng: np.random.Generator, anatomy: _Anatomy, modality: str, texture: np.ndarray,
        spacing: Sequence[float]) -> np.ndarray:
    clean = _signal_table(modality)[anatomy.tissues] * texture
    # Partial volume: a small blur (about 0.8 mm) mixes tissues at boundaries.
    clean = ndi.gaussian_filter(clean, [0.8 / s for s in spacing], truncate=2.5)
    gain = np.float32(_BASE_GAIN[modality] * np.exp(rng.uniform(-0.6, 0.6)))
    clean = clean * _bias_field(rng, anatomy.tissues.shape, spacing) * gain
    # Rician noise: magnitude of a complex signal with Gaussian noise in both channels.
    sigma = np.float32(rng.uniform(0.015, 0.035)) * gain * _signal_table(modality)[WM]
    real = rng.standard_normal(clean.shape, dtype=np.float32)
    real *= sigma
    real += clean
    imag = rng.standard_normal(clean.shape, dtype=np.float32)
    imag *= sigma
    magnitude = np.sqrt(real * real + imag * imag)
    # Scanners store integers (int16 here).
    return np.rint(np.clip(magnitude, 0.0, 32767.0, out=magnitude), out=magnitude)


# --------------------------------------------------------------------------------------------------
# Ultrasound
# --------------------------------------------------------------------------------------------------


def _probe(rng: np.random.Generator, anatomy: _Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Probe apex on the brain surface above the tumour and the unit beam axis pointing into it."""
    rel = (anatomy.tumour_centre - anatomy.head_centre) / anatomy.brain_axes
    # Craniotomies favour the upper convexity: tilt the outward direction towards the vertex.
    out = rel / (np.linalg.norm(rel) + 1e-6) + np.array([0.0, 0.0, rng.uniform(0.1, 0.6)]) + rng.normal(0, 0.1, 3)
    out = out / np.linalg.norm(out)
    # Solve |rel + t * out| = 1 in ellipsoid units: where the outward ray leaves the brain.
    b = float(np.dot(rel, out))
    t = -b + np.sqrt(b * b - float(np.dot(rel, rel)) + 1.0)
    apex = anatomy.head_centre + (rel + t * out) * anatomy.brain_axes
    axis = anatomy.tumour_centre - apex
    return apex.astype(np.float32), (axis / np.linalg.norm(axis)).astype(np.float32)


def _ultrasound(rng: np.random.Generator, anatomy: _Anatomy, texture: np.ndarray,
                spacing: Sequence[float]) -> np.ndarray:
    shape = anatomy.tissues.shape
    apex, beam = _probe(rng, anatomy)
    # Orthonormal frame: beam axis, lateral (fan) and elevational (sweep) directions.
    helper = np.array([1.0, 0.0, 0.0] if abs(beam[0]) < 0.9 else [0.0, 1.0, 0.0], dtype=np.float32)
    lateral = np.cross(beam, helper)
    lateral /= np.linalg.norm(lateral)
    elevation = np.cross(beam, lateral)
    max_depth = float(np.linalg.norm(anatomy.tumour_centre - apex)) + anatomy.tumour_radius + rng.uniform(20, 40)
    half_fan, half_sweep = np.tan(np.radians(rng.uniform(35, 45))), np.tan(np.radians(rng.uniform(25, 35)))

    x, y, z = _grid(shape, spacing)
    qx, qy, qz = x - apex[0], y - apex[1], z - apex[2]
    depth = qx * beam[0] + qy * beam[1] + qz * beam[2]
    along = qx * lateral[0] + qy * lateral[1] + qz * lateral[2]
    across = qx * elevation[0] + qy * elevation[1] + qz * elevation[2]
    distance = np.sqrt(qx * qx + qy * qy + qz * qz)
    sector = (depth > 0) & (distance < max_depth)
    sector &= (np.abs(along) < half_fan * depth) & (np.abs(across) < half_sweep * depth)
    if not sector.any():
        return np.zeros(shape, dtype=np.float32)
    # Work inside the sector's bounding box only: it is a fraction of the head.
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(sector))
    tissues = anatomy.tissues[box]
    inside = sector[box]

    echo = _ECHO[tissues] * texture[box]
    # Specular reflection where acoustic impedance changes along the beam direction.
    impedance = ndi.gaussian_filter(_IMPEDANCE[tissues], 0.7)
    gradients = np.gradient(impedance, *spacing)
    radial = [np.broadcast_to(q, shape)[box] for q in (qx, qy, qz)]
    norm = distance[box] + 1e-3
    facing = np.abs(sum(g * r for g, r in zip(gradients, radial))) / norm
    reflection = np.clip(facing * np.float32(2.5), 0.0, 1.5)
    # Depth attenuation, partly compensated by time-gain control (net ~exp(-d / 80 mm)).
    attenuation = np.exp(-np.clip(depth[box], 0, None) / np.float32(rng.uniform(70, 110)))
    # Speckle: Rayleigh magnitude of spatially correlated complex Gaussian noise, averaged over two
    # independent looks as spatial compounding does (mean 1).
    sig = [1.2 / s for s in spacing]  # speckle grains about 1.2 mm
    speckle = np.zeros(tissues.shape, dtype=np.float32)
    for _ in range(2):
        re = ndi.gaussian_filter(rng.standard_normal(tissues.shape, dtype=np.float32), sig)
        im = ndi.gaussian_filter(rng.standard_normal(tissues.shape, dtype=np.float32), sig)
        speckle += np.sqrt(re * re + im * im)
    speckle /= speckle.mean() + 1e-6
    intensity = (echo + reflection) * speckle * attenuation
    # Log compression to display range and 8-bit quantization, like B-mode output.
    bmode = np.log1p(np.float32(8.0) * intensity) / np.float32(np.log1p(8.0 * 2.0))
    out = np.zeros(shape, dtype=np.float32)
    out[box] = np.where(inside, np.rint(np.clip(bmode, 0.0, 1.0) * 255.0), 0.0)
    return out


# --------------------------------------------------------------------------------------------------
# Subjects and cohorts
# --------------------------------------------------------------------------------------------------


def default_spacing(shape: Sequence[int]) -> tuple[float, float, float]:
    """Spacing (mm) that maps ``shape`` onto the default 192 x 192 x 160 mm field of view."""
    return tuple(float(f / n) for f, n in zip(FOV_MM, shape))  # type: ignore[return-value]


def generate_subject(
    index: int, seed: int = 0, shape: Sequence[int] = (128, 128, 64),
    spacing: Optional[Sequence[float]] = None, modalities: Sequence[str] = MODALITIES,
) -> PhantomSubject:
    """Generate subject ``index`` of the cohort with ``seed`` in memory (the listed ``modalities`` only)."""
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in (spacing or default_spacing(shape)))
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise ValueError(f"unknown phantom modality {unknown}; the phantom has {list(MODALITIES)}")
    # One stream for the anatomy and one per modality: skipping a missing modality changes nothing else.
    rng = np.random.default_rng([int(seed), int(index), 0])
    anatomy = _anatomy(rng, shape, spacing)
    # Fine tissue texture shared by all contrasts (microstructure), ±4%.
    texture = 1.0 + np.float32(0.04) * _smooth_field(rng, shape, spacing, 3.0)
    images = {}
    for modality in modalities:
        stream = np.random.default_rng([int(seed), int(index), 1 + MODALITIES.index(modality)])
        if modality == "us":
            images[modality] = _ultrasound(stream, anatomy, texture, spacing)
        else:
            # Skull-stripped: zero outside the brain mask.
            images[modality] = _mr(stream, anatomy, modality, texture, spacing) * anatomy.brain
    seg = np.zeros(shape, dtype=np.uint8)
    for tissue, label in SEG_OF_TISSUE.items():
        seg[anatomy.tissues == tissue] = label
    # RAS affine centred on the volume.
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * s for n, s in zip(shape, spacing)]
    return PhantomSubject(images, anatomy.tissues, seg, anatomy.brain, affine)


def availability(subjects: int, seed: int, missingness: str) -> np.ndarray:
    """Bool ``(subjects, 4)`` availability over :data:`MODALITIES` with exact ReMIND counts.

    The complete subjects are a subset of the FLAIR ones; the other FLAIR subjects lack T2; T2 and
    ceT1 absences are spread over the rest, so the counts of every modality and of complete subjects
    all match their targets (rounded).
    """
    avail = np.ones((subjects, len(MODALITIES)), dtype=bool)
    if missingness == "complete":
        return avail
    if missingness != "remind":
        raise ValueError(f"missingness must be 'remind' or 'complete', got {missingness!r}")
    rng = np.random.default_rng([int(seed), 1_000_003])
    n = subjects
    n_flair = round(REMIND["flair"] * n)
    n_t2 = round(REMIND["t2"] * n)
    n_cet1 = round(REMIND["cet1"] * n)
    n_complete = min(round(REMIND["complete"] * n), n_flair, n_t2, n_cet1)
    order = rng.permutation(n)
    flair, rest = order[:n_flair], order[n_flair:]
    col = {m: i for i, m in enumerate(MODALITIES)}
    avail[:, col["flair"]] = False
    avail[flair, col["flair"]] = True
    avail[flair[n_complete:], col["t2"]] = False  # FLAIR but not complete: no T2
    # Remaining T2 slots go to non-FLAIR subjects; ceT1 absences to non-FLAIR subjects too.
    t2_rest = max(n_t2 - n_complete, 0)
    avail[rest[t2_rest:], col["t2"]] = False
    missing_cet1 = rng.permutation(rest)[: max(n - n_cet1, 0)]
    avail[missing_cet1, col["cet1"]] = False
    return avail


def assign_splits(avail: np.ndarray, seed: int) -> list[str]:
    """70/15/15 train/val/test, stratified by availability pattern, deterministic in ``seed``.

    Subjects are interleaved so that every prefix of the order mirrors the pattern mix, then every
    ~3rd position (30% in all) leaves training, alternately for val and test.
    """
    rng = np.random.default_rng([int(seed), 2_000_003])
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(avail):
        groups.setdefault(tuple(bool(b) for b in row), []).append(i)
    keyed = []
    for members in groups.values():
        members = rng.permutation(members)
        keyed += [((k + rng.uniform()) / len(members), int(i)) for k, i in enumerate(members)]
    order = [i for _, i in sorted(keyed)]
    held_out = SPLIT_FRACTIONS[1] + SPLIT_FRACTIONS[2]
    splits = ["train"] * len(avail)
    taken = 0
    for k, i in enumerate(order):
        if np.floor((k + 1) * held_out + 0.5) > np.floor(k * held_out + 0.5):
            splits[i] = "val" if taken % 2 == 0 else "test"
            taken += 1
    return splits


def _write_subject(job: tuple) -> list[str]:
    """Generate and write one subject; returns its manifest row (paths relative to the cohort)."""
    from mmhvae.data.nifti import write_labels, write_volume

    out, index, seed, shape, spacing, avail, split, name = job
    present = [m for m, a in zip(MODALITIES, avail) if a]
    subject = generate_subject(index, seed, shape, spacing, modalities=present)
    folder = Path(out) / name
    row = [name]
    for modality in MODALITIES:
        if modality in present:
            # Integer-valued like scanner output: int16 MR, 8-bit ultrasound (half the bytes to gzip).
            dtype = np.uint8 if modality == "us" else np.int16
            write_volume(folder / f"{name}-{modality}.nii.gz", subject.images[modality], subject.affine, dtype=dtype)
            row.append(f"{name}/{name}-{modality}.nii.gz")
        else:
            row.append("")
    write_labels(folder / f"{name}-seg.nii.gz", subject.seg, subject.affine)
    write_labels(folder / f"{name}-mask.nii.gz", subject.brain_mask.astype(np.uint8), subject.affine)
    row += [f"{name}/{name}-seg.nii.gz", f"{name}/{name}-mask.nii.gz", split]
    return row


def make_cohort(
    out: str | Path,
    subjects: int = 100,
    seed: int = 0,
    shape: Sequence[int] = (128, 128, 64),
    spacing: Optional[Sequence[float]] = None,
    missingness: str = "remind",
    workers: Optional[int] = None,
) -> Path:
    """Write a built-in cohort under ``out`` and return its manifest ``out/manifest.csv``.

    Layout: ``out/<subject>/<subject>-<modality>.nii.gz`` for the present modalities, plus
    ``-seg`` and ``-mask``; the manifest has columns ``subject, us, t2, cet1, flair, seg, mask, split``.
    ``spacing`` defaults to a 192 x 192 x 160 mm field of view. ``workers`` processes generate
    subjects in parallel (default: the available cores, at most 8); results do not depend on it.
    """
    from mmhvae.atomic import atomic_write_text

    if subjects < 1:
        raise ValueError(f"subjects must be >= 1, got {subjects}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes >= 8, got {shape}")
    spacing = tuple(float(s) for s in (spacing or default_spacing(shape)))
    avail = availability(subjects, seed, missingness)
    splits = assign_splits(avail, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(subjects - 1)))
    names = [f"phantom{i:0{width}d}" for i in range(subjects)]
    jobs = [(str(out), i, seed, shape, spacing, tuple(avail[i]), splits[i], names[i]) for i in range(subjects)]
    if workers is None:
        workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)
    workers = max(1, min(workers, subjects))
    if workers == 1:
        rows = [_write_subject(job) for job in jobs]
    else:
        # fork (as torch's DataLoader does on Linux): workers need numpy/scipy only, and unlike
        # spawn/forkserver it does not re-import a caller's __main__ that lacks a main guard.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            rows = list(pool.map(_write_subject, jobs, chunksize=1))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["subject", *MODALITIES, "seg", "mask", "split"])
    writer.writerows(rows)
    manifest = out / "manifest.csv"
    atomic_write_text(manifest, text.getvalue())
    return manifest


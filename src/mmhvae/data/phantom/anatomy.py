"""Per-subject anatomy: the MNI152 tissue maps deformed, with a tumour, lesions and vessels.

Everything is computed on the output grid (millimetres, origin at the volume centre). Each output
voxel is mapped back into the template by the inverse of a per-subject transform: the tumour's
mass effect, a ventricle-size change, a smooth elastic field of a few millimetres, then a global
affine (size, per-hemisphere width = asymmetry, rotation, shift). Tissue fractions are read there at
low order and pathology is painted over them as fractions too, so partial volume is kept all the
way to the contrasts; ``tissues`` is the dominant class of every brain voxel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from mmhvae.data.phantom.fields import grid, ramp, smooth_field
from mmhvae.data.phantom.template import blurred_template, load_template

# Tissue classes (not the segmentation labels); class k > 0 is channel k - 1 of ``fractions``.
BACKGROUND, CSF, GM, WM, NECROSIS, OEDEMA, ENHANCING, LESION, VESSEL, CALCIFICATION = range(10)
TISSUE_NAMES = ("background", "csf", "gm", "wm", "necrosis", "oedema", "enhancing", "lesion", "vessel",
                "calcification")
# BraTS-like segmentation: 1 necrotic / non-enhancing core, 2 oedema, 3 enhancing.
SEG_OF_TISSUE = {NECROSIS: 1, CALCIFICATION: 1, OEDEMA: 2, ENHANCING: 3}

_SHARPNESS = 2.5  # power on the template's tissue probabilities
_SHARPEN_WEIGHTS = (1.8, 1.0, 1.0)  # CSF, GM, WM
_LESION_PROBABILITY = 0.5  # subjects with a few small MS-like white-matter lesions
_CALCIFICATION_PROBABILITY = 0.35  # tumours with calcifications (strong acoustic shadows)


@dataclass
class Anatomy:
    fractions: np.ndarray  # float32 (C, X, Y, Z), C = len(TISSUE_NAMES) - 1, summing to the brain fraction
    tissues: np.ndarray  # uint8 (X, Y, Z) dominant class, BACKGROUND outside the brain
    brain: np.ndarray  # bool (X, Y, Z)
    tumour_centre: np.ndarray  # mm
    tumour_radius: float  # mm, of the enhancing shell
    brain_centre: np.ndarray  # mm


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return (rz @ ry @ rx).astype(np.float32)


class _Placement:
    """The global affine from template voxels (1 mm) to output millimetres, and its inverse."""

    def __init__(self, rng: np.random.Generator, centre: np.ndarray):
        # MNI152 is larger than most brains (144 x 180 x 155 mm here, brainstem included): shrink it.
        size = rng.uniform(0.86, 1.0)
        self.scale = (size * rng.uniform(0.97, 1.03, 3)).astype(np.float32)
        # Hemispheres of slightly different width (brain asymmetry): x scale for x < 0 and x > 0.
        self.hemisphere = (1.0 + np.array([-1.0, 1.0]) * rng.uniform(-0.04, 0.04)).astype(np.float32)
        self.rotation = _rotation(np.radians(np.clip(rng.normal(0.0, 4.0, 3), -10, 10)))
        self.shift = rng.normal(0.0, 3.0, 3).astype(np.float32)
        self.centre = centre.astype(np.float32)

    def _scale(self, x_sign: np.ndarray) -> np.ndarray:
        sx = np.where(x_sign < 0, self.hemisphere[0], self.hemisphere[1]) * self.scale[0]
        return sx

    def forward(self, points: np.ndarray) -> np.ndarray:
        """Template voxels ``(K, 3)`` -> output mm ``(K, 3)``."""
        rel = (points - self.centre).astype(np.float32)
        scaled = rel * self.scale
        scaled[:, 0] = rel[:, 0] * self._scale(rel[:, 0])
        return scaled @ self.rotation.T + self.shift

    def inverse(self, px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> list[np.ndarray]:
        """Output mm (three arrays) -> template voxel coordinates (three arrays)."""
        p = [px - self.shift[0], py - self.shift[1], pz - self.shift[2]]
        r = self.rotation  # inverse rotation = transpose
        q = [r[0, k] * p[0] + r[1, k] * p[1] + r[2, k] * p[2] for k in range(3)]
        q[0] = q[0] / self._scale(q[0])
        q[1] = q[1] / self.scale[1]
        q[2] = q[2] / self.scale[2]
        return [q[k] + self.centre[k] for k in range(3)]


def _push(p: list[np.ndarray], centre: np.ndarray, amount: float, width_mm: float) -> list[np.ndarray]:
    """Sample closer to ``centre`` near it: tissue there is pushed outwards (``amount`` > 0) or
    pulled in; a Gaussian profile ``width_mm`` wide, so the deformation is smooth and invertible."""
    d = [p[k] - centre[k] for k in range(3)]
    r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    factor = np.float32(amount) * np.exp(r2 * np.float32(-0.5 / width_mm**2))
    return [p[k] - d[k] * factor for k in range(3)]


def make_anatomy(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float]) -> Anatomy:
    template = load_template()
    tissues = blurred_template(tuple(float(s) for s in spacing))
    placement = _Placement(rng, template.centre)
    shape = tuple(shape)
    x, y, z = grid(shape, spacing)
    p = [np.broadcast_to(c, shape).astype(np.float32) for c in (x, y, z)]

    tumour_site = template.tumour_sites[rng.integers(len(template.tumour_sites))]
    tumour_centre = placement.forward(tumour_site[None] + rng.uniform(-2, 2, (1, 3)))[0]
    radius = float(rng.uniform(9.0, 18.0))
    ventricles = placement.forward(template.ventricle_centre[None])[0]
    # Mass effect, applied last to the anatomy, so first when mapping output -> template.
    p = _push(p, tumour_centre, rng.uniform(0.35, 0.6), 1.5 * radius)
    p = _push(p, ventricles, rng.uniform(-0.12, 0.3), 22.0)  # ventricle size (atrophy) varies
    amplitude = rng.uniform(1.5, 3.5)  # elastic field of a few mm, features ~30 mm wide
    p = [c + smooth_field(rng, shape, spacing, 30.0) * np.float32(amplitude) for c in p]
    q = placement.inverse(*p)
    del p
    csf, gm, wm = (ndi.map_coordinates(t, q, order=1, mode="constant", cval=0.0, prefilter=False) for t in tissues)
    del q
    brain = np.minimum(csf + gm + wm, 1.0)
    csf, gm, wm = _sharpen((csf, gm, wm), brain)

    f = {CSF: csf, GM: gm, WM: wm}
    mm = float(np.mean(spacing))
    _lesions(rng, f, template, placement, shape, spacing, mm)
    _oedema_and_tumour(rng, f, brain, tumour_centre, radius, shape, spacing, mm)
    _vessels(rng, f, shape, spacing)
    fractions = np.stack([f.get(k, np.zeros(shape, np.float32)) for k in range(1, len(TISSUE_NAMES))])
    mask = brain >= 0.5
    labels = np.where(mask, np.argmax(fractions, axis=0) + 1, BACKGROUND).astype(np.uint8)
    centre = placement.forward(template.centre[None])[0]
    return Anatomy(fractions.astype(np.float32), labels, mask, tumour_centre.astype(np.float32), radius, centre)


def _sharpen(fractions, brain, power: float = _SHARPNESS, weights=_SHARPEN_WEIGHTS):
    """Sharper tissue boundaries than the population average the template is: each class's
    weighted fraction raised to ``power`` and renormalized to the brain fraction, so that sulci,
    thin cortex and the grey/white boundary look like one brain's rather than a blur of 152. CSF
    weighs more: averaging over 152 brains left only a faint trace of each sulcus."""
    powered = [(f * np.float32(w)) ** power for f, w in zip(fractions, weights)]
    total = sum(powered) + np.float32(1e-6)
    return [p * (brain / total) for p in powered]


def _lesions(rng, f, template, placement, shape, spacing, mm) -> None:
    """A few small periventricular white-matter lesions (MS-like), in some subjects only."""
    if rng.uniform() >= _LESION_PROBABILITY:
        return
    count = int(rng.integers(3, 9))
    sites = placement.forward(template.lesion_sites[rng.integers(len(template.lesion_sites), size=count)])
    lesion = np.zeros(shape, np.float32)
    for centre in sites:
        r = float(rng.uniform(2.0, 5.0))
        # Elongated (ovoid lesions along the veins, perpendicular to the ventricles: vertical here).
        axes = np.array([r, r, r * rng.uniform(1.2, 2.0)], np.float32)
        box, rho = _ellipsoid_radius(centre, axes, shape, spacing)
        lesion[box] = np.maximum(lesion[box], ramp((1.0 - rho) * np.float32(r), mm))
    f[LESION] = f[WM] * lesion
    f[WM] = f[WM] - f[LESION]


def _ellipsoid_radius(centre, axes, shape, spacing) -> tuple[tuple[slice, ...], np.ndarray]:
    """The voxel box around an ellipsoid (twice its size) and the ellipsoidal radius inside it."""
    box, coords = [], []
    for k, (c, a, n, s) in enumerate(zip(centre, axes, shape, spacing)):
        lo = int(np.clip(np.floor((c - 2 * a) / s + (n - 1) / 2), 0, n))
        hi = int(np.clip(np.ceil((c + 2 * a) / s + (n - 1) / 2) + 1, lo, n))
        box.append(slice(lo, hi))
        view = [1, 1, 1]
        view[k] = hi - lo
        coords.append((((np.arange(lo, hi) - (n - 1) / 2) * s - c) / a).astype(np.float32).reshape(view))
    return tuple(box), np.sqrt(coords[0] ** 2 + coords[1] ** 2 + coords[2] ** 2)


def _oedema_and_tumour(rng, f, brain, centre, radius, shape, spacing, mm) -> None:
    """Oedema spreading along white matter (less into grey matter), then the tumour (enhancing
    shell, necrotic core, maybe calcifications) replacing whatever lies inside it."""
    x, y, z = grid(shape, spacing)
    r = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    width = mm / radius  # one voxel, in tumour radii
    outline = 1.0 + np.float32(0.15) * smooth_field(rng, shape, spacing, 12.0)
    rt = r / (np.float32(radius) * outline)
    reach = np.float32(rng.uniform(1.4, 2.3)) * (1.0 + np.float32(0.25) * smooth_field(rng, shape, spacing, 8.0))
    oedema_wm = f[WM] * ramp(reach - rt, width)
    oedema_gm = f[GM] * np.float32(0.5) * ramp(np.float32(0.7) * reach - rt, width)
    f[WM] = f[WM] - oedema_wm
    f[GM] = f[GM] - oedema_gm
    f[OEDEMA] = oedema_wm + oedema_gm
    tumour = brain * ramp(1.0 - rt, width)
    keep = 1.0 - tumour
    for k in list(f):
        f[k] = f[k] * keep
    core = np.float32(rng.uniform(0.25, 0.6)) * (1.0 + np.float32(0.2) * smooth_field(rng, shape, spacing, 6.0))
    necrosis = np.minimum(brain * ramp(core - rt, width), tumour)
    f[NECROSIS] = necrosis
    f[ENHANCING] = tumour - necrosis
    if rng.uniform() < _CALCIFICATION_PROBABILITY:
        calc = np.zeros(shape, np.float32)
        for _ in range(int(rng.integers(1, 4))):
            direction = rng.normal(size=3)
            spot = centre + direction / np.linalg.norm(direction) * radius * rng.uniform(0.2, 0.8)
            size = float(rng.uniform(1.5, 2.5))
            box, rho = _ellipsoid_radius(spot, [size] * 3, shape, spacing)
            calc[box] = np.maximum(calc[box], ramp((1.0 - rho) * np.float32(size), mm))
        calc = calc * tumour
        f[CALCIFICATION] = calc
        share = 1.0 - calc / np.maximum(tumour, 1e-6)
        f[NECROSIS] = f[NECROSIS] * share
        f[ENHANCING] = f[ENHANCING] * share


def _vessels(rng, f, shape, spacing) -> None:
    """Tubes where two smooth random fields both cross zero, kept in the CSF spaces (sulcal
    vessels, choroid plexus): they enhance on contrast-enhanced T1 and are flow voids on T2/FLAIR."""
    a = smooth_field(rng, shape, spacing, 16.0)
    b = smooth_field(rng, shape, spacing, 16.0)
    tube = np.exp((a * a + b * b) * np.float32(-0.5 / 0.12**2))
    f[VESSEL] = f[CSF] * np.float32(0.8) * tube
    f[CSF] = f[CSF] - f[VESSEL]

"""Intra-operative B-mode ultrasound simulated from the tissue fractions.

A probe sits on the brain surface in a craniotomy above the tumour, its sector (a pyramid with a
curved bottom) pointing into it. The tissue maps are resampled onto the scan lines (depth x lateral x
elevational angle), where the physics is one-dimensional along each line:

- backscatter amplitude per tissue (tumour hyperechoic, white matter brighter than grey matter,
  CSF and necrosis nearly anechoic, calcifications very bright);
- specular reflection where the acoustic impedance jumps along the line (boundaries facing the beam
  light up, oblique ones less), partly spread laterally like a real beam;
- transmission: the energy left after attenuation and after the reflections already met, so a strong
  reflector (calcification, dense tumour) casts an acoustic shadow behind it;
- depth attenuation partly compensated by time-gain control, a per-subject gain;
- speckle: the Rayleigh envelope of band-limited complex noise, finer along the beam than across it
  and widening with depth as the lines diverge, plus an electronic noise floor;
- log compression to ~45 dB and 8-bit quantization.

The scan lines are then drawn back onto the volume grid; everything outside the sector is zero.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from mmhvae.data.phantom.anatomy import TISSUE_NAMES, Anatomy
from mmhvae.data.phantom.fields import grid

#                          csf   gm    wm    necr  oedema enh   lesion vessel calcif
_ECHO = np.array([0.0, 0.01, 0.07, 0.11, 0.03, 0.22, 0.50, 0.25, 0.40, 2.5], np.float32)
_IMPEDANCE = np.array([1.50, 1.49, 1.58, 1.61, 1.54, 1.60, 1.66, 1.61, 1.66, 4.0], np.float32)
_ATTENUATION = np.array([0.0002, 0.0003, 0.005, 0.007, 0.002, 0.006, 0.012, 0.007, 0.006, 0.6], np.float32)  # 1/mm
assert len(_ECHO) == len(TISSUE_NAMES)
_SPECULAR = 25.0  # brightness per unit impedance gradient (MRayl / mm)
_DYNAMIC_RANGE_DB = 40.0
_GAIN = 0.15  # puts white matter near mid-grey after log compression
_NOISE_FLOOR = 0.005  # electronic noise: anechoic regions are dark grey, not black


def _tissue_map(anatomy: Anatomy, table: np.ndarray) -> np.ndarray:
    """Per-voxel mixture of a per-tissue property; background (saline in the cavity) outside."""
    value = np.tensordot(table[1:], anatomy.fractions, axes=1)
    value += table[0] * (1.0 - anatomy.fractions.sum(axis=0))
    return value.astype(np.float32)


def _probe(rng: np.random.Generator, anatomy: Anatomy, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Probe apex just outside the brain surface above the tumour, and the unit beam axis."""
    outward = anatomy.tumour_centre - anatomy.brain_centre
    outward = outward / (np.linalg.norm(outward) + 1e-6)
    # Craniotomies favour the upper convexity: tilt the outward direction towards the vertex.
    outward = outward + np.array([0.0, 0.0, rng.uniform(0.2, 0.7)]) + rng.normal(0, 0.12, 3)
    outward = outward / np.linalg.norm(outward)
    shape = np.array(anatomy.brain.shape)
    spacing = np.asarray(spacing)
    point = anatomy.tumour_centre.astype(np.float64)
    for _ in range(400):  # march out in 1 mm steps until leaving the brain (or the volume)
        index = np.rint(point / spacing + (shape - 1) / 2).astype(int)
        if np.any(index < 0) or np.any(index >= shape) or not anatomy.brain[tuple(index)]:
            break
        point = point + outward
    apex = point + outward * 1.5
    beam = anatomy.tumour_centre - apex
    beam = beam / np.linalg.norm(beam) + rng.normal(0, 0.08, 3)  # not always aimed at the centre
    return apex.astype(np.float32), (beam / np.linalg.norm(beam)).astype(np.float32)


def ultrasound_image(rng: np.random.Generator, anatomy: Anatomy, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(image, sector)``: float32 B-mode in 0..255 (integer values) and the bool field of view."""
    shape = anatomy.tissues.shape
    apex, beam = _probe(rng, anatomy, spacing)
    helper = np.array([1.0, 0.0, 0.0] if abs(beam[0]) < 0.9 else [0.0, 1.0, 0.0], dtype=np.float32)
    lateral = np.cross(beam, helper)
    lateral /= np.linalg.norm(lateral)
    elevation = np.cross(beam, lateral)
    reach = float(np.linalg.norm(anatomy.tumour_centre - apex)) + anatomy.tumour_radius + rng.uniform(10, 30)
    max_depth = max(reach, rng.uniform(50, 70))  # the deeper of: past the tumour, or a usual depth setting
    half_fan = np.tan(np.radians(rng.uniform(28, 40)))
    half_sweep = np.tan(np.radians(rng.uniform(20, 30)))

    # Sector voxels and their scan-line coordinates (depth r, tangents u, v of the two angles).
    x, y, z = grid(shape, spacing)
    qx, qy, qz = x - apex[0], y - apex[1], z - apex[2]
    axial = qx * beam[0] + qy * beam[1] + qz * beam[2]
    safe = np.maximum(axial, 1e-3)
    u = (qx * lateral[0] + qy * lateral[1] + qz * lateral[2]) / safe
    v = (qx * elevation[0] + qy * elevation[1] + qz * elevation[2]) / safe
    r = np.sqrt(qx * qx + qy * qy + qz * qz)
    sector = (axial > 0) & (r < max_depth) & (np.abs(u) < half_fan) & (np.abs(v) < half_sweep)
    if not sector.any():
        return np.zeros(shape, np.float32), sector

    # Scan-line grid: samples ~half a voxel apart in depth, ~0.7 voxel apart across at full depth.
    step = 0.5 * min(spacing)
    nr = int(np.ceil(max_depth / step)) + 1
    nu = max(int(np.ceil(2 * half_fan * max_depth / (0.7 * min(spacing)))), 8)
    nv = max(int(np.ceil(2 * half_sweep * max_depth / (0.7 * min(spacing)))), 8)
    rs = np.arange(nr, dtype=np.float32) * np.float32(step)
    us = np.linspace(-half_fan, half_fan, nu, dtype=np.float32)
    vs = np.linspace(-half_sweep, half_sweep, nv, dtype=np.float32)
    direction = beam[:, None, None] + lateral[:, None, None] * us[None, :, None] + elevation[:, None, None] * vs[None, None, :]
    direction /= np.linalg.norm(direction, axis=0, keepdims=True)  # (3, nu, nv)
    coords = [
        (apex[k] + rs[:, None, None] * direction[k][None]) / np.float32(spacing[k]) + np.float32((shape[k] - 1) / 2)
        for k in range(3)
    ]
    echo, impedance, attenuation = (
        ndi.map_coordinates(_tissue_map(anatomy, table), coords, order=1, mode="nearest", prefilter=False)
        for table in (_ECHO, _IMPEDANCE, _ATTENUATION)
    )
    del coords
    jump = np.abs(np.diff(impedance, axis=0, prepend=impedance[:1]))
    # Reflection coefficient (fraction of energy reflected) at each step, for the transmission loss.
    reflected = (jump / (2.0 * impedance)) ** 2
    loss = np.cumsum(attenuation * np.float32(2 * step) + np.float32(40.0) * reflected, axis=0)
    transmission = np.exp(-(loss - loss[:1]))
    # Brightness follows the impedance gradient along the beam (per mm): sharp boundaries facing the
    # beam reflect most; the gradient is spread by the grid's partial volume, as by a real pulse.
    specular = ndi.gaussian_filter(jump * np.float32(_SPECULAR / step), (0.6, 1.2, 1.2), truncate=2.0)
    tgc = np.exp(rs * np.float32(rng.uniform(0.6, 0.95) * 2 * 0.006))[:, None, None]
    gain = np.float32(_GAIN * np.exp(rng.uniform(-0.25, 0.25)))
    amplitude = (echo * _speckle(rng, echo.shape, (0.7, 1.3, 1.3)) + specular * _speckle(rng, echo.shape, (0.7, 2.5, 2.5)))
    amplitude *= transmission * tgc * gain
    amplitude += np.float32(_NOISE_FLOOR) * _speckle(rng, echo.shape, (0.5, 1.0, 1.0))  # electronic noise floor
    db = 20.0 * np.log10(amplitude + 1e-6)
    bmode = np.clip(1.0 + db / np.float32(_DYNAMIC_RANGE_DB), 0.0, 1.0) * np.float32(255.0)

    # Back onto the volume grid, inside the sector's bounding box only.
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(sector))
    inside = sector[box]
    where = [
        np.broadcast_to(c, shape)[box][inside]
        for c in (r / np.float32(step), (u + half_fan) / np.float32(2 * half_fan / (nu - 1)),
                  (v + half_sweep) / np.float32(2 * half_sweep / (nv - 1)))
    ]
    image = np.zeros(shape, np.float32)
    local = np.zeros(inside.shape, np.float32)
    local[inside] = ndi.map_coordinates(bmode, where, order=1, mode="nearest", prefilter=False)
    image[box] = np.rint(local)
    return image, sector


def _speckle(rng: np.random.Generator, shape: Sequence[int], sigma: Sequence[float]) -> np.ndarray:
    """Rayleigh envelope of Gaussian-filtered complex noise, normalized to mean 1."""
    re = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, truncate=2.5)
    im = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, truncate=2.5)
    envelope = np.sqrt(re * re + im * im)
    return envelope / (envelope.mean() + 1e-6)

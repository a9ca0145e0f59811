"""Target registration error and simulated rigid displacements (paper §4.4.4).

Landmarks are physical (LPS, mm) points of the fixed image; a transform maps fixed to moving space
(see :mod:`~mmhvae.downstream.registration.rigid`), so the error of an estimate is measured against
the simulated truth at each landmark.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import SimpleITK as sitk


def mask_points(mask: sitk.Image, step: int = 1, limit: Optional[int] = None, seed: int = 0) -> np.ndarray:
    """Physical (LPS, mm) positions ``(N, 3)`` of the non-zero voxels of ``mask``.

    ``step`` keeps every ``step``-th voxel along each axis (a regular grid of landmarks); ``limit``
    caps the count with a seeded random subset, since TRE statistics settle with a few thousand points.
    """
    array = sitk.GetArrayViewFromImage(mask)[::step, ::step, ::step]  # (z, y, x)
    kji = np.argwhere(array != 0) * step
    if len(kji) == 0:
        raise ValueError("the landmark mask is empty: no point to measure a registration error on")
    if limit is not None and len(kji) > limit:
        kji = kji[np.random.default_rng(seed).choice(len(kji), size=limit, replace=False)]
    index = kji[:, ::-1].astype(np.float64)  # (x, y, z) voxel indices
    direction = np.asarray(mask.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(mask.GetSpacing(), dtype=np.float64)
    origin = np.asarray(mask.GetOrigin(), dtype=np.float64)
    return origin + index @ (direction @ np.diag(spacing)).T


def transform_points(transform: sitk.Transform, points: np.ndarray) -> np.ndarray:
    """Apply ``transform`` to physical points ``(N, 3)``."""
    if isinstance(transform, (sitk.Euler3DTransform, sitk.VersorRigid3DTransform, sitk.AffineTransform)):
        # Rigid and affine transforms are x -> A (x - c) + c + t: vectorised instead of N Python calls.
        matrix = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
        centre = np.asarray(transform.GetCenter(), dtype=np.float64)
        translation = np.asarray(transform.GetTranslation(), dtype=np.float64)
        return (points - centre) @ matrix.T + centre + translation
    return np.array([transform.TransformPoint(tuple(map(float, p))) for p in points])


def target_registration_error(
    points: np.ndarray, estimated: sitk.Transform, truth: sitk.Transform
) -> np.ndarray:
    """Per-point error ``|estimated(p) - truth(p)|`` in mm for fixed-space points ``p`` ``(N, 3)``.

    Both transforms map fixed to moving space; a perfect registration gives 0 everywhere and no
    registration (identity) gives the simulated displacement at each point.
    """
    return np.linalg.norm(transform_points(estimated, points) - transform_points(truth, points), axis=1)


def displacement_magnitudes(transform: sitk.Transform, points: np.ndarray) -> np.ndarray:
    """``|T(p) - p|`` for each point: how far the transform moves each landmark."""
    return np.linalg.norm(transform_points(transform, points) - points, axis=1)


def random_rigid_displacement(
    points: np.ndarray,
    low: float,
    high: float,
    rng: np.random.Generator,
    *,
    centre: Optional[np.ndarray] = None,
    max_angle_deg: float = 10.0,
    max_translation_mm: float = 10.0,
) -> sitk.Euler3DTransform:
    """A random rigid transform whose **median** displacement over ``points`` lies in ``[low, high)`` mm.

    A random rotation axis and translation direction are drawn, with a random share of rotation
    versus translation; the whole motion is then scaled (bisection on the scale) until the median
    displacement over the points equals a target drawn uniformly in the range. The paper's ranges
    are defined by the median displacement over the image (§4.4.4).
    """
    if not 0 <= low < high:
        raise ValueError(f"displacement range must satisfy 0 <= low < high, got [{low}, {high})")
    centre = points.mean(axis=0) if centre is None else np.asarray(centre, dtype=np.float64)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    share = rng.uniform(0.0, 1.0)  # 0: pure translation, 1: pure rotation (before scaling)
    angle = math.radians(max_angle_deg) * share
    translation = max_translation_mm * (1.0 - share) * direction
    target = rng.uniform(low, high)

    def make(scale: float) -> sitk.Euler3DTransform:
        rotation = _axis_angle_matrix(axis, angle * scale)
        transform = sitk.Euler3DTransform()
        transform.SetCenter(tuple(map(float, centre)))
        transform.SetMatrix(tuple(map(float, rotation.ravel())))
        transform.SetTranslation(tuple(map(float, translation * scale)))
        return transform

    def median(scale: float) -> float:
        return float(np.median(displacement_magnitudes(make(scale), points)))

    lo_scale, hi_scale = 0.0, 1.0
    while median(hi_scale) < target:  # the displacement grows with the scale: bracket the target
        hi_scale *= 2.0
        if hi_scale > 1e3:
            raise ValueError(f"cannot reach a median displacement of {target:.1f} mm over these points")
    for _ in range(60):
        mid = 0.5 * (lo_scale + hi_scale)
        lo_scale, hi_scale = (mid, hi_scale) if median(mid) < target else (lo_scale, mid)
    return make(0.5 * (lo_scale + hi_scale))


def _axis_angle_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' rotation matrix for a unit axis and an angle in radians."""
    x, y, z = axis
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


def displace(image: sitk.Image, truth: sitk.Transform, interpolator: int = sitk.sitkLinear) -> sitk.Image:
    """The image moved so that ``truth`` (fixed-to-moving) is the transform that registers it back.

    The displaced image ``D`` satisfies ``D(truth(p)) = image(p)``, i.e. ``D = image ∘ truth⁻¹``, on
    the original grid (voxels moved outside the grid are lost, as in the paper's simulation).
    """
    return sitk.Resample(image, image, truth.GetInverse(), interpolator, 0.0, image.GetPixelID())

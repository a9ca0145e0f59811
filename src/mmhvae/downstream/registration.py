"""Rigid MR-to-ultrasound registration and its target registration error (DESIGN §6, paper §4.4.4).

Conventions (those of ITK, so that SimpleITK's ``Resample`` can be used directly):

* a registration transform ``T`` maps a physical point of the **fixed** image to the corresponding
  point of the **moving** image; ``Resample(moving, fixed, T)`` puts the moving image on the fixed grid;
* physical points are in LPS millimetres (ITK), not in the RAS of the NIfTI affine: the converters
  :func:`nifti_to_sitk` and :func:`sitk_to_nifti` flip the first two axes, so an image converted
  either way lands where ``SimpleITK.ReadImage`` of the same file would.

The registration is the 6-DoF rigid ``Euler3DTransform`` driven by the ANTs neighbourhood
cross-correlation metric over a multi-resolution pyramid with regular-step gradient descent, the
"multiscale normalized local cross-correlation" of the paper.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import nibabel as nib
import numpy as np
import SimpleITK as sitk

# NIfTI affines are RAS, ITK physical space is LPS: negate x and y.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])

#: Displacement ranges of the paper's Table 5, in mm (median displacement over the brain).
PAPER_RANGES: tuple[tuple[float, float], ...] = ((0.0, 4.0), (4.0, 8.0), (8.0, 12.0), (12.0, 16.0))


# --------------------------------------------------------------------------------------------------
# Image conversion and files
# --------------------------------------------------------------------------------------------------


def read_image(path: str | Path) -> sitk.Image:
    """Read a 3D image as float32 with SimpleITK; the error names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    try:
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    except RuntimeError as exc:
        raise ValueError(f"{path}: cannot be read as an image ({str(exc).strip().splitlines()[-1]})") from None
    if image.GetDimension() != 3:
        raise ValueError(f"{path}: expected a 3D image, got {image.GetDimension()}D")
    return image


def nifti_to_sitk(image: nib.Nifti1Image, dtype=np.float32) -> sitk.Image:
    """A nibabel image as a SimpleITK image with the same voxels at the same physical positions.

    The voxel array ``(i, j, k)`` becomes ITK's ``(x, y, z)`` index order; spacing, direction and
    origin come from the RAS affine converted to LPS. Shears (non-orthogonal affines) are refused,
    since ITK images cannot represent them.
    """
    data = np.asarray(image.dataobj, dtype=dtype)
    if data.ndim != 3:
        raise ValueError(f"expected a 3D image, got shape {data.shape}")
    affine = np.asarray(image.affine, dtype=np.float64)
    linear = _RAS_TO_LPS @ affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"degenerate affine (zero voxel size): {affine.tolist()}")
    direction = linear / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError("the affine has a shear, which ITK images cannot represent; resample the image first")
    # GetImageFromArray reads numpy's last axis as x, so give it (k, j, i).
    out = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    out.SetSpacing(tuple(float(s) for s in spacing))
    out.SetDirection(tuple(float(d) for d in direction.ravel()))
    out.SetOrigin(tuple(float(o) for o in _RAS_TO_LPS @ affine[:3, 3]))
    return out


def sitk_affine(image: sitk.Image) -> np.ndarray:
    """The 4×4 RAS voxel-to-world affine (NIfTI convention) of a 3D SimpleITK image."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = _RAS_TO_LPS @ direction @ np.diag(spacing)
    affine[:3, 3] = _RAS_TO_LPS @ np.asarray(image.GetOrigin(), dtype=np.float64)
    return affine


def sitk_to_nifti(image: sitk.Image, header: Optional[nib.Nifti1Header] = None) -> nib.Nifti1Image:
    """A SimpleITK image as a nibabel image (inverse of :func:`nifti_to_sitk`).

    ``header``, when given, contributes its metadata (description, units, intent); the data type,
    shape and geometry always come from ``image``.
    """
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    affine = sitk_affine(image)
    out = nib.Nifti1Image(data, affine, header=header.copy() if header is not None else None)
    out.set_data_dtype(data.dtype)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    return out


def array_on_grid(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    """A voxel array ``(X, Y, Z)`` (nibabel order) as a float32 image with the geometry of ``like``.

    For volumes computed on the grid of an image read by SimpleITK (e.g. a synthesis from it): the
    geometry is copied, not re-derived from a NIfTI affine, so the two can never disagree.
    """
    array = np.asarray(array, dtype=np.float32)
    if array.shape != tuple(like.GetSize()):
        raise ValueError(f"array of shape {array.shape} does not match the image size {like.GetSize()}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.CopyInformation(like)
    return image


def _write_via_temporary(path: Path, write: Callable[[Path], None]) -> None:
    """Write with ``write(tmp)`` to a same-named file in a temporary folder beside ``path``, then rename.

    Unlike :func:`mmhvae.atomic.atomic_write`, the temporary file keeps the final name, because
    SimpleITK and nibabel pick the file format from the extension (``.nii.gz``, ``.tfm``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp_dir:
        tmp = Path(tmp_dir) / path.name
        write(tmp)
        os.replace(tmp, path)


def save_image(image: sitk.Image, path: str | Path) -> None:
    """Write a SimpleITK image atomically (format from the extension, e.g. ``.nii.gz``)."""
    _write_via_temporary(Path(path), lambda p: sitk.WriteImage(image, str(p), True))


def save_transform(transform: sitk.Transform, path: str | Path) -> None:
    """Write a transform atomically (ITK text format for ``.tfm``)."""
    _write_via_temporary(Path(path), lambda p: sitk.WriteTransform(transform, str(p)))


# --------------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------------


@dataclass
class RigidSettings:
    """Optimisation settings of :func:`register_rigid`.

    ``shrink_factors`` and ``smoothing_sigmas`` (Gaussian sigma in mm, applied to both images at each
    level) define the pyramid, coarsest first. ``radius`` is the neighbourhood radius of the ANTs
    correlation in voxels. ``learning_rate`` is the initial step in mm (the parameter scales are
    estimated from physical shifts, so one unit of rotation moves the image by about one mm); the
    step shrinks by ``relaxation`` whenever the gradient direction turns back, and a level stops at
    ``min_step`` or after ``iterations``.
    ``sampling_percentage`` below 1 evaluates the metric on a seeded random subset of fixed voxels;
    the ANTs correlation recomputes a whole neighbourhood per sampled voxel, so sparse sampling saves
    little over the dense sliding-window evaluation, hence the dense default.
    """

    # Two levels, both smoothed, sigmas in mm so that they mean the same at any voxel size. Measured
    # on the built-in cohort: unsmoothed speckle makes the metric so rough that gradient steps wander
    # (mono-modal ultrasound at 2 mm voxels: TRE 2-3 mm with a final sigma of 0, 1.3 mm with 1 mm);
    # heavier smoothing, 2 voxels = 6 mm at 3 mm voxels, washed out the US-T2 correspondence (direct
    # registrations drifted 70 mm; 1-4 mm with these sigmas); a factor-4 level leaves too few voxels
    # in a small sector.
    shrink_factors: tuple[int, ...] = (2, 1)
    smoothing_sigmas: tuple[float, ...] = (2.0, 1.0)
    radius: int = 2
    learning_rate: float = 2.0
    # A gentle relaxation and a small final step: with 0.5 / 0.01 mm the optimiser stopped while the
    # rotation was still converging (mono-modal T2 at 3 mm, mean squares: TRE 2.3 mm instead of 0.01 mm).
    min_step: float = 1e-3
    relaxation: float = 0.8
    iterations: int = 100
    sampling_percentage: float = 1.0
    seed: int = 0
    threads: int = 0  # 0: SimpleITK's global default

    def validate(self) -> None:
        if len(self.shrink_factors) != len(self.smoothing_sigmas) or not self.shrink_factors:
            raise ValueError(
                f"shrink_factors {self.shrink_factors} and smoothing_sigmas {self.smoothing_sigmas} "
                "must be non-empty and of the same length (one entry per pyramid level)"
            )
        if any(int(f) < 1 for f in self.shrink_factors):
            raise ValueError(f"shrink_factors must be >= 1, got {self.shrink_factors}")
        if not 0 < self.sampling_percentage <= 1:
            raise ValueError(f"sampling_percentage must be in (0, 1], got {self.sampling_percentage}")
        if self.radius < 1:
            raise ValueError(f"radius must be >= 1 voxel, got {self.radius}")
        if not 0 < self.relaxation < 1:
            raise ValueError(f"relaxation must be in (0, 1), got {self.relaxation}")


@dataclass
class RegistrationReport:
    """What the optimiser did: final metric value, iterations of the last level, stop reason, time."""

    metric: float
    iterations: int
    stop_condition: str
    seconds: float
    levels: list[float] = field(default_factory=list)  # metric value at the end of each level


def centred_rigid_initialisation(fixed: sitk.Image, moving: sitk.Image) -> sitk.Euler3DTransform:
    """Identity rotation about the fixed image centre, translation aligning the two image centres.

    Image geometry, not intensity moments: moments of an ultrasound and of an MR volume do not
    correspond (different fields of view and contrasts), geometry does.
    """
    initial = sitk.CenteredTransformInitializer(
        fixed,
        moving,
        sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.GEOMETRY,
    )
    return sitk.Euler3DTransform(initial)


def foreground_mask(image: sitk.Image, fraction: float = 0.01) -> sitk.Image:
    """Voxels brighter than ``fraction`` of the image's 99th percentile (uint8 mask).

    The default metric region of :func:`register_rigid`: the ANTs correlation divides by the local
    variance, so nearly constant background windows (smoothing tails, zero padding) give huge,
    meaningless gradients. Without this mask a mono-modal T2 registration at 3 mm ended at a TRE of
    4.8 mm from 6.2 mm; with it, 0.07 mm.
    """
    array = sitk.GetArrayViewFromImage(image)
    high = float(np.percentile(array, 99.0))
    low = float(array.min())
    threshold = low + fraction * (high - low)
    mask = sitk.Cast(image > threshold, sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(mask)):
        raise ValueError("the image is constant: it has no foreground to register")
    return mask


def field_of_view_mask(image: sitk.Image, erode: int = 0) -> sitk.Image:
    """The acquired region of an image with a zero exterior (an ultrasound sector), as a uint8 mask.

    Non-zero voxels, closed and hole-filled so that dark tissue inside the sector counts as inside,
    then eroded by ``erode`` voxels: a correlation window straddling the sector edge sees the edge
    itself, which the optimiser would otherwise align to any MR edge (on the built-in cohort,
    T2-to-ultrasound registrations drifted by 20-40 mm with the uneroded sector).
    """
    from scipy import ndimage as ndi

    array = sitk.GetArrayViewFromImage(image) != 0
    if not array.any():
        raise ValueError("the image is zero everywhere: it has no field of view")
    structure = ndi.generate_binary_structure(3, 1)
    region = ndi.binary_fill_holes(ndi.binary_closing(array, structure, iterations=2, border_value=0))
    if erode > 0:
        eroded = ndi.binary_erosion(region, structure, iterations=erode)
        # A sector thinner than the window: keep the uneroded region rather than nothing.
        region = eroded if eroded.any() else region
    mask = sitk.GetImageFromArray(region.astype(np.uint8))
    mask.CopyInformation(image)
    return mask


def register_rigid(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    fixed_mask: Optional[sitk.Image] = None,
    moving_mask: Optional[sitk.Image] = None,
    settings: Optional[RigidSettings] = None,
    initial_transform: Optional[sitk.Transform] = None,
    report: Optional[list[RegistrationReport]] = None,
) -> sitk.Euler3DTransform:
    """Rigid 6-DoF registration of ``moving`` onto ``fixed`` (fixed-to-moving transform, see module doc).

    Args:
        fixed, moving: 3D images (any pixel type; cast to float32).
        fixed_mask: metric region in the fixed image (e.g. the ultrasound field of view), non-zero =
            inside, on any grid covering the fixed image; default :func:`foreground_mask` of ``fixed``.
        moving_mask: metric region in the moving image (default: none).
        settings: :class:`RigidSettings` (defaults when None).
        initial_transform: starting point; by default :func:`centred_rigid_initialisation`.
        report: when a list is given, a :class:`RegistrationReport` is appended to it.

    Returns:
        The optimised ``Euler3DTransform`` (rotation centre kept from the initialisation).
    """
    settings = settings or RigidSettings()
    settings.validate()
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    if initial_transform is None:
        transform = centred_rigid_initialisation(fixed, moving)
    else:
        transform = sitk.Euler3DTransform(initial_transform)
    mask = foreground_mask(fixed) if fixed_mask is None else _as_mask(fixed_mask, fixed, "fixed_mask")
    # The metric is only evaluated inside the mask: crop the fixed image (the virtual domain) to the
    # mask's bounding box, with a margin covering the correlation window at the coarsest level.
    fixed, mask = _crop_to_mask(fixed, mask, settings.radius * max(settings.shrink_factors))

    method = sitk.ImageRegistrationMethod()
    if settings.threads > 0:
        method.SetNumberOfThreads(settings.threads)
    method.SetMetricAsANTSNeighborhoodCorrelation(settings.radius)
    if settings.sampling_percentage < 1:
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(settings.sampling_percentage, settings.seed)
    method.SetMetricFixedMask(mask)
    if moving_mask is not None:
        method.SetMetricMovingMask(_as_mask(moving_mask, moving, "moving_mask"))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=settings.learning_rate,
        minStep=settings.min_step,
        numberOfIterations=settings.iterations,
        relaxationFactor=settings.relaxation,
        gradientMagnitudeTolerance=1e-8,
    )
    # Rotations (radians) and translations (mm) on one scale: a unit parameter change moves the
    # image by about one voxel, so the step sizes above are in mm for both.
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([int(f) for f in settings.shrink_factors])
    method.SetSmoothingSigmasPerLevel([float(s) for s in settings.smoothing_sigmas])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(transform, inPlace=True)

    level_ends: list[float] = []
    method.AddCommand(
        sitk.sitkMultiResolutionIterationEvent, lambda: level_ends.append(method.GetMetricValue())
    )
    start = time.perf_counter()
    method.Execute(fixed, moving)
    if report is not None:
        report.append(
            RegistrationReport(
                metric=float(method.GetMetricValue()),
                iterations=int(method.GetOptimizerIteration()),
                stop_condition=method.GetOptimizerStopConditionDescription(),
                seconds=time.perf_counter() - start,
                # The event fires at the start of each level: its value closes the previous one.
                levels=level_ends[1:] + [float(method.GetMetricValue())],
            )
        )
    return transform


def _as_mask(mask: sitk.Image, like: sitk.Image, name: str) -> sitk.Image:
    """A uint8 mask on the grid of ``like``; refuses an empty mask with a message naming it."""
    mask = sitk.Cast(mask != 0, sitk.sitkUInt8)
    same_grid = (
        mask.GetSize() == like.GetSize()
        and np.allclose(mask.GetOrigin(), like.GetOrigin(), atol=1e-4)
        and np.allclose(mask.GetSpacing(), like.GetSpacing(), atol=1e-6)
        and np.allclose(mask.GetDirection(), like.GetDirection(), atol=1e-6)
    )
    if not same_grid:
        mask = sitk.Resample(mask, like, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(mask)):
        raise ValueError(f"{name} is empty: the registration metric would have no voxel to compare")
    return mask


def _crop_to_mask(image: sitk.Image, mask: sitk.Image, margin: int) -> tuple[sitk.Image, sitk.Image]:
    """``image`` and ``mask`` cropped to the mask's bounding box grown by ``margin`` voxels."""
    kji = np.argwhere(sitk.GetArrayViewFromImage(mask) != 0)
    size = np.array(image.GetSize())
    lower = np.maximum(kji.min(axis=0)[::-1] - margin, 0)
    upper = np.minimum(kji.max(axis=0)[::-1] + margin + 1, size)
    index = [int(i) for i in lower]
    extent = [int(e) for e in upper - lower]
    return sitk.RegionOfInterest(image, extent, index), sitk.RegionOfInterest(mask, extent, index)


def resample_to(
    fixed: sitk.Image,
    moving: sitk.Image,
    transform: sitk.Transform,
    *,
    interpolator: int = sitk.sitkLinear,
    default_value: float = 0.0,
) -> sitk.Image:
    """``moving`` transformed by ``transform`` (fixed-to-moving) on the grid of ``fixed``."""
    return sitk.Resample(moving, fixed, transform, interpolator, default_value, moving.GetPixelID())


# --------------------------------------------------------------------------------------------------
# Target registration error and simulated displacements
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Benchmark: simulated displacements, registration directly or via synthesis (paper Table 5)
# --------------------------------------------------------------------------------------------------


@dataclass
class TreRow:
    """One registration of the benchmark: TRE statistics over the landmarks (mm)."""

    subject: str
    modality: str
    range_mm: str
    repeat: int
    method: str  # "before", "direct" (to the ultrasound), "synthesis" (to the synthetic MR), "upper-bound"
    tre_mean: float
    tre_std: float
    tre_median: float
    initial_median: float
    seconds: float
    stop_condition: str = ""


METHOD_NAMES = {
    "before": "No registration",
    "direct": "Acquired iUS",
    "synthesis": "Synthetic MR (from iUS)",
    "upper-bound": "Acquired MR (perfect synthesis)",
}


def parse_ranges(text: str) -> tuple[tuple[float, float], ...]:
    """``"0-4,4-8"`` -> ``((0, 4), (4, 8))``; the message says what is wrong."""
    ranges = []
    for item in text.split(","):
        try:
            low, high = (float(v) for v in item.strip().split("-"))
        except ValueError:
            raise ValueError(f"displacement range {item!r}: expected LOW-HIGH in mm, e.g. 0-4,4-8,8-12,12-16") from None
        if not 0 <= low < high:
            raise ValueError(f"displacement range {item!r}: need 0 <= LOW < HIGH")
        ranges.append((low, high))
    return tuple(ranges)


def range_label(low: float, high: float) -> str:
    return f"{low:g}-{high:g}"


def benchmark_registration(
    subjects: Sequence,
    *,
    fixed_modality: str = "us",
    modalities: Sequence[str] = ("t2", "cet1", "flair"),
    synthesize=None,
    ranges: Sequence[tuple[float, float]] = PAPER_RANGES,
    repeats: int = 1,
    seed: int = 0,
    settings: Optional[RigidSettings] = None,
    landmark_step: int = 2,
    max_landmarks: int = 20000,
    upper_bound: bool = False,
    load=None,
    log: Callable[[str], None] = print,
) -> list[TreRow]:
    """TRE of MR-to-ultrasound registration under simulated rigid displacements (paper §4.4.4).

    For each subject with an ultrasound and an MR ``modality``: the MR is displaced by a random
    rigid transform whose median displacement over the brain falls in each range (``repeats`` draws
    per range, seeded by ``seed``, subject and modality), then registered back (a) to the acquired
    ultrasound and (b), when ``synthesize`` is given, to the MR synthesized from the ultrasound;
    ``upper_bound`` adds (c), registration to the undisplaced acquired MR itself, i.e. what a perfect
    synthesis would give (a mono-modal problem, so the floor of the via-synthesis error).
    The metric region is the ultrasound sector, eroded by the correlation radius (see
    :func:`field_of_view_mask`). The TRE is measured on a grid of brain voxels (every
    ``landmark_step``-th along each axis; the brain mask, or the MR foreground without one).

    ``subjects`` are :class:`~mmhvae.data.cohort.Subject` objects, read with ``load``
    (default :func:`~mmhvae.data.cohort.load_subject`).
    """
    import zlib

    if load is None:
        from mmhvae.data.cohort import load_subject as load
    settings = settings or RigidSettings()
    settings.validate()
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    rows: list[TreRow] = []
    for subject in subjects:
        present = [m for m in modalities if m in subject.paths]
        if fixed_modality not in subject.paths or not present:
            log(f"  {subject.name}: skipped (needs {fixed_modality} and one of {list(modalities)})")
            continue
        volumes = load(subject)
        fixed = nifti_to_sitk(nib.Nifti1Image(volumes.images[fixed_modality], volumes.affine))
        sector = field_of_view_mask(fixed, erode=settings.radius)
        synthetic = {}
        if synthesize is not None:
            log(f"  {subject.name}: synthesizing {'+'.join(present)} from {fixed_modality}")
            synthetic = _synthesize_on_grid(synthesize, volumes, fixed_modality, present, fixed, subject.name)
        for modality in present:
            moving = nifti_to_sitk(nib.Nifti1Image(volumes.images[modality], volumes.affine))
            points = mask_points(_landmark_mask(volumes, moving), landmark_step, max_landmarks, seed)
            references = {"direct": fixed}
            if synthetic:
                references["synthesis"] = synthetic[modality]
            if upper_bound:
                references["upper-bound"] = moving
            # One stream per (seed, subject, modality): adding subjects or modalities changes nothing else.
            rng = np.random.default_rng([seed, zlib.crc32(subject.name.encode()), zlib.crc32(modality.encode())])
            for low, high in ranges:
                for repeat in range(repeats):
                    truth = random_rigid_displacement(points, low, high, rng)
                    case = dict(subject=subject.name, modality=modality, range_mm=range_label(low, high), repeat=repeat)
                    new = _register_displaced(moving, truth, references, sector, points, settings, case)
                    rows += new
                    log(f"  {subject.name} {modality} {case['range_mm']} mm #{repeat}: TRE "
                        + ", ".join(f"{r.method} {r.tre_mean:.1f}" for r in new) + " mm")
    return rows


def _synthesize_on_grid(synthesize, volumes, source: str, targets: list[str], like: sitk.Image, name: str) -> dict:
    """Synthesize ``targets`` from the ``source`` volume; each result as an image on the grid of ``like``."""
    inputs = {source: nib.Nifti1Image(volumes.images[source], volumes.affine, volumes.header)}
    result = synthesize(inputs, targets)
    images = {}
    for m in targets:
        array = np.asarray(result[m].dataobj, dtype=np.float32) if m in result else None
        if array is None or array.shape != volumes.shape:
            got = "nothing" if array is None else f"shape {array.shape}"
            raise ValueError(f"synthesized {m} for {name!r}: got {got}, expected shape {volumes.shape}")
        images[m] = array_on_grid(array, like)
    return images


def _landmark_mask(volumes, moving: sitk.Image) -> sitk.Image:
    """The brain mask of the subject, or the foreground of its MR when it has none."""
    brain = volumes.brain_mask
    if brain is not None and brain.any():
        return nifti_to_sitk(nib.Nifti1Image(brain.astype(np.uint8), volumes.affine), dtype=np.uint8)
    return foreground_mask(moving)


def _register_displaced(
    moving: sitk.Image, truth: sitk.Transform, references: dict[str, sitk.Image], sector: sitk.Image,
    points: np.ndarray, settings: RigidSettings, case: dict,
) -> list[TreRow]:
    """Displace ``moving`` by ``truth``, register it to each reference; one row per method and "before"."""
    displaced = displace(moving, truth)
    initial = displacement_magnitudes(truth, points)
    case = dict(case, initial_median=float(np.median(initial)))
    rows = [TreRow(method="before", tre_mean=float(initial.mean()), tre_std=float(initial.std()),
                   tre_median=float(np.median(initial)), seconds=0.0, **case)]
    for method, reference in references.items():
        report: list[RegistrationReport] = []
        estimate = register_rigid(reference, displaced, fixed_mask=sector, settings=settings, report=report)
        error = target_registration_error(points, estimate, truth)
        rows.append(TreRow(method=method, tre_mean=float(error.mean()), tre_std=float(error.std()),
                           tre_median=float(np.median(error)), seconds=report[0].seconds,
                           stop_condition=report[0].stop_condition, **case))
    return rows


def tre_table(rows: Sequence[TreRow], ranges: Sequence[tuple[float, float]] = PAPER_RANGES) -> str:
    """Markdown tables in the layout of paper Table 5: per MR modality, mean (std) TRE in mm per range.

    The mean and standard deviation are over registrations (each registration's TRE being its mean
    over the landmarks); ``n`` is the number of registrations per cell.
    """
    labels = [range_label(low, high) for low, high in ranges]
    modalities = list(dict.fromkeys(r.modality for r in rows))
    methods = [m for m in METHOD_NAMES if any(r.method == m for r in rows)]
    blocks = []
    for modality in modalities:
        lines = [
            f"**{modality}** — TRE (mm), mean (std) over registrations",
            "",
            "| Reference image | " + " | ".join(f"{label} mm" for label in labels) + " |",
            "|---|" + "---|" * len(labels),
        ]
        for method in methods:
            cells = []
            for label in labels:
                values = [r.tre_mean for r in rows
                          if r.modality == modality and r.method == method and r.range_mm == label]
                cells.append(f"{np.mean(values):.1f} ({np.std(values):.1f})" if values else "–")
            lines.append(f"| {METHOD_NAMES[method]} | " + " | ".join(cells) + " |")
        count = sum(1 for r in rows if r.modality == modality and r.method == "before")
        lines.append("")
        lines.append(f"n = {count} registrations ({count // max(len(labels), 1)} per range)")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def write_tre_csv(rows: Sequence[TreRow], path: str | Path) -> None:
    """One CSV row per registration (and per undisplaced baseline)."""
    import csv
    from dataclasses import asdict, fields

    from mmhvae.atomic import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=[f.name for f in fields(TreRow)])
            writer.writeheader()
            for row in rows:
                writer.writerow(asdict(row))

    atomic_write(Path(path), write)


# --------------------------------------------------------------------------------------------------
# Registering two files (the ``mmhvae register`` command)
# --------------------------------------------------------------------------------------------------


def metric_mask(fixed: sitk.Image, choice: str | Path, radius: int) -> sitk.Image:
    """The fixed-image metric region named by ``choice``.

    ``fov``: the non-zero field of view eroded by ``radius`` (ultrasound); ``foreground``: the
    intensity foreground (MR); ``none``: the whole image; anything else: a mask file on any grid.
    """
    if choice == "fov":
        return field_of_view_mask(fixed, erode=radius)
    if choice == "foreground":
        return foreground_mask(fixed)
    if choice == "none":
        whole = sitk.Image(fixed.GetSize(), sitk.sitkUInt8) + 1
        whole.CopyInformation(fixed)
        return whole
    return read_image(Path(choice))


def register_files(
    fixed_path: str | Path,
    moving_path: str | Path,
    out: str | Path,
    *,
    synthesize=None,
    fixed_modality: str = "us",
    synth_modality: Optional[str] = None,
    fixed_mask: str | Path = "fov",
    settings: Optional[RigidSettings] = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Register the moving file onto the fixed file and write the results under ``out``.

    Directly (``synthesize`` None): moving -> fixed, multi-modal. Via synthesis: the ``synth_modality``
    is synthesized from the fixed image (as ``fixed_modality``), and the moving image is registered to
    that synthetic image (mono-modal); the transform applies to the fixed grid either way.

    Writes ``transform.tfm`` (fixed-to-moving, ITK convention), ``moving_registered.nii.gz`` (the moving
    image resampled on the fixed grid), ``synthetic_<modality>.nii.gz`` when synthesizing, and
    ``registration.json`` (settings, optimiser report, transform parameters). Returns that record.
    """
    import json

    from mmhvae.atomic import atomic_write_text

    settings = settings or RigidSettings()
    out = Path(out)
    fixed = read_image(fixed_path)
    moving = read_image(moving_path)
    mask = metric_mask(fixed, fixed_mask, settings.radius)
    reference = fixed
    record: dict = {"fixed": str(fixed_path), "moving": str(moving_path), "fixed_mask": str(fixed_mask)}
    if synthesize is not None:
        if not synth_modality:
            raise ValueError("registration via synthesis needs the modality to synthesize (--synth-modality, e.g. t2)")
        log(f"synthesizing {synth_modality} from {fixed_modality} {fixed_path}")
        source = nib.load(str(fixed_path))
        result = synthesize({fixed_modality: source}, [synth_modality])
        if synth_modality not in result:
            raise ValueError(f"the synthesis returned no {synth_modality!r}")
        reference = array_on_grid(np.asarray(result[synth_modality].dataobj, dtype=np.float32), fixed)
        synthetic_path = out / f"synthetic_{synth_modality}.nii.gz"
        save_image(reference, synthetic_path)
        record.update(via_synthesis=synth_modality, synthetic=str(synthetic_path))
        log(f"wrote {synthetic_path}")
    report: list[RegistrationReport] = []
    transform = register_rigid(reference, moving, fixed_mask=mask, settings=settings, report=report)
    save_transform(transform, out / "transform.tfm")
    save_image(resample_to(fixed, moving, transform), out / "moving_registered.nii.gz")
    rotation = np.degrees(np.asarray(transform.GetParameters()[:3]))
    record.update(
        settings={k: list(v) if isinstance(v, tuple) else v for k, v in settings.__dict__.items()},
        metric=report[0].metric,
        metric_per_level=report[0].levels,
        stop_condition=report[0].stop_condition,
        seconds=round(report[0].seconds, 2),
        rotation_deg=[round(float(a), 4) for a in rotation],
        translation_mm=[round(float(t), 4) for t in transform.GetTranslation()],
        centre_mm=[round(float(c), 4) for c in transform.GetCenter()],
        transform=str(out / "transform.tfm"),
        registered=str(out / "moving_registered.nii.gz"),
    )
    atomic_write_text(out / "registration.json", json.dumps(record, indent=2) + "\n")
    log(f"wrote {out / 'transform.tfm'} and {out / 'moving_registered.nii.gz'} "
        f"(metric {report[0].metric:.4f}, {report[0].seconds:.1f}s)")
    return record

"""The model's frame (DESIGN §3 "Geometry"): reorientation, resampling, field of view on the foreground,
tiles, and the way back onto the input's grid. Synthetic volumes check the geometry exactly; the real
cases of ../shared/data/real check it on data as users have it (skipped when absent)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import yaml
from scipy import ndimage

from mmhvae.data.frame import (
    FrameMapping,
    GeometryError,
    TrainingFrame,
    blend,
    check_fits,
    cut,
    default_spacing,
    fits,
    from_frame,
    spacing_in,
    tiles,
    to_frame,
)
from mmhvae.data.nifti import read_labels, read_volume
from mmhvae.errors import ConfigError, InputDataError

BRATS = "BraTS-GLI-00000-000"


def world(affine: np.ndarray, shape) -> np.ndarray:
    """World coordinates ``(X, Y, Z, 3)`` of every voxel centre."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float64)
    return grid @ affine[:3, :3].T + affine[:3, 3]


def lps_affine(spacing, origin=(120.0, 110.0, -70.0)) -> np.ndarray:
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = origin
    return affine


@pytest.fixture(scope="module")
def brats(real_cases_dir):
    folder = real_cases_dir / BRATS
    t1, affine, header = read_volume(folder / f"{BRATS}-t1.nii.gz")
    seg, _, _ = read_labels(folder / f"{BRATS}-seg.nii.gz")
    return t1, seg, affine, header


# ------------------------------------------------------------------------------------------------
# The frame record
# ------------------------------------------------------------------------------------------------


def test_frame_round_trips_through_json_and_yaml():
    frame = TrainingFrame(spacing=(0.8, 0.8, 2.0), size=96, slice_axis=1, orientation=("L", "P", "S"))
    assert frame.field_of_view == pytest.approx((96 * 0.8, 96 * 2.0))
    assert frame.in_plane_axes == (0, 2)
    assert TrainingFrame.from_dict(json.loads(json.dumps(frame.to_dict()))) == frame
    assert TrainingFrame.from_dict(yaml.safe_load(yaml.safe_dump(frame.to_dict()))) == frame


@pytest.mark.parametrize(
    "kwargs",
    [dict(spacing=(1, 1, 0)), dict(spacing=(1, 1, float("nan"))), dict(size=0), dict(slice_axis=3),
     dict(orientation=("R", "L", "S"))],
)
def test_frame_refuses_nonsense(kwargs):
    base = dict(spacing=(1.0, 1.0, 1.0), size=64)
    with pytest.raises(ConfigError):
        TrainingFrame(**{**base, **kwargs})


def test_default_spacing_is_the_cohort_median_along_the_frame_axes():
    # An LPS 0.72 x 0.72 x 4 mm grid stored with its voxel axes permuted (slices first) still has its
    # 4 mm along the frame's S axis.
    permuted = lps_affine((0.72, 0.72, 4.0))[:, [2, 0, 1, 3]]
    assert tuple(spacing_in(permuted)) == pytest.approx((0.72, 0.72, 4.0))
    affines = [permuted, lps_affine((1, 1, 1)), lps_affine((0.72, 0.72, 4.0)), lps_affine((1, 1, 5))]
    assert default_spacing(affines) == pytest.approx((0.86, 0.86, 4.0))


# ------------------------------------------------------------------------------------------------
# Resampling: world positions kept, anisotropic grids resampled
# ------------------------------------------------------------------------------------------------


def test_anisotropic_volume_is_resampled_and_keeps_world_positions():
    """A 1 x 1 x 5 mm LPS volume holding a linear function of world position: in a 1 mm RAS frame the
    grid is 5x finer through-plane and every interior voxel holds the function at its own world point
    (linear interpolation reproduces linear functions, so any voxel-centre misalignment shows)."""
    shape, affine = (30, 26, 9), lps_affine((1.0, 1.0, 5.0))
    coefficients = np.array([0.3, -0.2, 0.7])
    volume = (world(affine, shape) @ coefficients + 5.0).astype(np.float32)
    frame = TrainingFrame(spacing=(1.0, 1.0, 1.0), size=32)
    framed = to_frame({"t1": volume}, affine, frame)
    assert framed.shape == (30, 26, 45)
    assert nib.aff2axcodes(framed.affine) == ("R", "A", "S")
    assert tuple(spacing_in(framed.affine)) == pytest.approx((1.0, 1.0, 1.0))
    expected = world(framed.affine, framed.shape) @ coefficients + 5.0
    interior = (slice(2, -2), slice(2, -2), slice(5, -5))  # beyond the outer slice centres: extrapolated
    np.testing.assert_allclose(framed.arrays["t1"][interior], expected[interior], atol=1e-3)
    # ... and back: the input's own grid, same values.
    back = from_frame(framed.arrays["t1"], framed)
    assert back.shape == shape
    np.testing.assert_allclose(back[2:-2, 2:-2, 2:-2], volume[2:-2, 2:-2, 2:-2], atol=1e-3)


def test_labels_are_resampled_nearest():
    rng = np.random.default_rng(0)
    labels = ndimage.zoom(rng.integers(0, 4, (8, 8, 4)), (4, 4, 4), order=0).astype(np.int16) * 2  # {0,2,4,6}
    affine = lps_affine((0.9, 0.9, 3.0))
    for spacing in (0.7, 2.0):
        framed = to_frame({"seg": labels}, affine, TrainingFrame((spacing,) * 3, 16))
        assert framed.arrays["seg"].dtype == np.int16
        assert set(np.unique(framed.arrays["seg"])) <= {0, 2, 4, 6}
        back = from_frame(framed.arrays["seg"], framed)
        assert back.dtype == np.int16 and set(np.unique(back)) <= {0, 2, 4, 6}


def test_mapping_survives_json_and_uncovered_voxels_get_the_fill():
    volume = np.random.default_rng(1).random((20, 22, 6)).astype(np.float32)
    affine = lps_affine((1.0, 1.0, 4.0))
    framed = to_frame({"t2": volume}, affine, TrainingFrame((2.0, 2.0, 2.0), 8))
    mapping = FrameMapping.from_dict(json.loads(json.dumps(framed.mapping.to_dict())))
    np.testing.assert_array_equal(from_frame(framed.arrays["t2"], mapping), from_frame(framed.arrays["t2"], framed))
    covered = np.zeros(framed.shape, dtype=bool)
    covered[:, :, : framed.shape[2] // 2] = True  # the inferior half (RAS axis 2)
    back = from_frame(framed.arrays["t2"], framed, covered=covered, fill=-1.0)
    assert np.all(back[:, :, -1] == -1.0) and np.all(back[:, :, 0] != -1.0)


def test_inputs_off_the_grid_are_refused_with_the_shapes():
    frame = TrainingFrame((1.0, 1.0, 1.0), 8)
    with pytest.raises(GeometryError, match="not on one grid"):
        to_frame({"t1": np.zeros((4, 4, 4)), "t2": np.zeros((4, 4, 5))}, np.eye(4), frame)
    with pytest.raises(GeometryError, match="singular"):
        to_frame({"t1": np.zeros((4, 4, 4))}, np.diag([1.0, 0.0, 1.0, 1.0]), frame)
    framed = to_frame({"t1": np.zeros((4, 4, 4), dtype=np.float32)}, np.eye(4), frame)
    with pytest.raises(GeometryError, match="frame grid"):
        from_frame(np.zeros((4, 4, 5)), framed)


# ------------------------------------------------------------------------------------------------
# Real cases: round trip, orientation invariance, anisotropic clinical grid
# ------------------------------------------------------------------------------------------------


def test_real_round_trip_at_1mm_is_exact_and_at_2mm_close(brats):
    t1, _, affine, _ = brats
    brain = t1 > 0
    framed = to_frame({"t1": t1}, affine, TrainingFrame((1.0, 1.0, 1.0), 240))
    assert nib.aff2axcodes(framed.affine) == ("R", "A", "S")  # the input is LPS
    back = from_frame(framed.arrays["t1"], framed)
    np.testing.assert_allclose(back[brain], t1[brain], rtol=1e-6, atol=1e-4)

    framed = to_frame({"t1": t1}, affine, TrainingFrame((2.0, 2.0, 2.0), 128))
    assert framed.shape == (120, 120, 78)
    back = from_frame(framed.arrays["t1"], framed)
    assert back.shape == t1.shape
    # The brain's outer 2 mm mixes with the background at 2 mm; inside it the volume comes back close.
    inner = ndimage.binary_erosion(brain, iterations=2)
    assert np.corrcoef(back[inner], t1[inner])[0, 1] > 0.95


@pytest.mark.parametrize("ornt", [[[1, -1], [0, 1], [2, -1]], [[2, 1], [0, -1], [1, 1]]])
def test_real_case_flipped_or_permuted_gives_the_same_frame_and_world_output(brats, ornt):
    """The same anatomy stored with other voxel axes (the affine rebuilt so the world geometry is the
    same) lands on the same frame grid with the same values, and maps back to the same world output."""
    t1, seg, affine, _ = brats
    ornt = np.asarray(ornt, dtype=float)
    t1_other = nib.orientations.apply_orientation(t1, ornt)
    seg_other = nib.orientations.apply_orientation(seg, ornt)
    affine_other = affine @ nib.orientations.inv_ornt_aff(ornt, t1.shape)
    # Same world geometry: voxel (5, 7, 3) of the new array is where its data came from.
    np.testing.assert_allclose(affine_other[:3, :3] @ [5.0, 7.0, 3.0] + affine_other[:3, 3],
                               _world_of_other_voxel(affine, t1.shape, ornt, (5, 7, 3)), atol=1e-6)
    frame = TrainingFrame((2.0, 2.0, 2.0), 128)
    a = to_frame({"t1": t1, "seg": seg}, affine, frame)
    b = to_frame({"t1": t1_other, "seg": seg_other}, affine_other, frame)
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-9)
    np.testing.assert_allclose(b.arrays["t1"], a.arrays["t1"], rtol=1e-6, atol=1e-3)
    np.testing.assert_array_equal(b.arrays["seg"], a.arrays["seg"])
    np.testing.assert_array_equal(b.foreground, a.foreground)
    out_a, out_b = from_frame(a.arrays["t1"], a), from_frame(b.arrays["t1"], b)
    assert out_b.shape == t1_other.shape
    np.testing.assert_allclose(out_b, nib.orientations.apply_orientation(out_a, ornt), rtol=1e-6, atol=1e-3)


def _world_of_other_voxel(affine, shape, ornt, voxel):
    """World point of voxel ``voxel`` of the reoriented array, computed from the original array's voxel."""
    original = [0, 0, 0]
    for axis, (target, flip) in enumerate(ornt):
        k = voxel[int(target)]
        original[axis] = shape[axis] - 1 - k if flip < 0 else k
    return affine[:3, :3] @ np.asarray(original, dtype=float) + affine[:3, 3]


def test_real_anisotropic_clinical_grid_reaches_the_frame_spacing(real_cases_dir):
    subject = "LjMS-long-patient01"
    t1, affine, _ = read_volume(real_cases_dir / subject / f"{subject}-t1.nii.gz")
    assert t1.shape == (320, 320, 36)
    frame = TrainingFrame((1.0, 1.0, 1.0), 256)
    framed = to_frame({"t1": t1}, affine, frame)
    assert tuple(spacing_in(framed.affine)) == pytest.approx(frame.spacing, abs=1e-6)
    extent_in = np.asarray(t1.shape) * np.sqrt((affine[:3, :3] ** 2).sum(axis=0))  # ~230, 230, 144 mm
    extent_frame = np.asarray(framed.shape) * np.asarray(frame.spacing)
    assert np.all(extent_frame >= extent_in - 1e-3) and np.all(extent_frame < extent_in + 1.0)
    centre = lambda a, shape: a[:3, :3] @ ((np.asarray(shape) - 1) / 2) + a[:3, 3]  # noqa: E731
    np.testing.assert_allclose(centre(framed.affine, framed.shape), centre(affine, t1.shape), atol=1e-6)
    assert framed.shape[2] == 144  # 36 slices of 4 mm -> 144 of 1 mm, not 36


# ------------------------------------------------------------------------------------------------
# Field of view on the foreground: windows, tiles, blending, refusal
# ------------------------------------------------------------------------------------------------


def _blob(shape, centre, radius):
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return (((grid - np.asarray(centre)) ** 2).sum(-1) <= radius ** 2)


def test_window_is_centred_on_an_off_centre_brain():
    shape = (120, 100, 10)
    brain = _blob(shape, (95, 20, 5), 12)
    volume = np.where(brain, 1.0, 0.0).astype(np.float32)
    frame = TrainingFrame((1.0, 1.0, 1.0), 32)
    framed = to_frame({"t1": volume}, np.eye(4), frame)
    starts = tiles(framed.foreground, frame)
    assert len(starts) == 1 and fits(framed.foreground, frame)
    window = cut(framed.foreground, starts[0], frame)
    assert window.sum() == framed.foreground.sum()  # every brain voxel is inside the window
    # A centre crop of the array would have missed the brain entirely.
    assert starts[0] != ((120 - 32) // 2, (100 - 32) // 2)


def test_zscored_background_is_not_foreground(real_cases_dir):
    """BraTS 2013 volumes are z-scored: the background is a negative constant, not 0."""
    subject = "BraTS2013-pat0001"
    flair, affine, _ = read_volume(real_cases_dir / subject / f"{subject}-flair.nii.gz")
    assert (flair != 0).mean() > 0.99
    framed = to_frame({"flair": flair}, affine, TrainingFrame((1.0, 1.0, 1.0), 240))
    assert 0.02 < framed.foreground.mean() < 0.4


def test_large_foreground_is_tiled_without_cutting_and_blend_is_exact():
    rng = np.random.default_rng(2)
    shape = (70, 9, 50)  # slice axis 1: in-plane axes 0 and 2
    foreground = _blob(shape, (35, 4, 25), 30) & (np.arange(shape[2]) > 3)[None, None, :]
    frame = TrainingFrame((1.0, 1.0, 1.0), 24, slice_axis=1)
    assert not fits(foreground, frame)
    starts = tiles(foreground, frame, overlap=6)
    assert len(starts) > 1
    volume = rng.random(shape).astype(np.float32)
    patches = [cut(volume, s, frame) for s in starts]
    blended, covered = blend(patches, starts, shape, frame, overlap=6)
    assert covered[foreground].all()  # nothing cut
    np.testing.assert_allclose(blended[covered], volume[covered], rtol=1e-6)  # same content -> exact
    constant, _ = blend([np.full_like(p, 3.5) for p in patches], starts, shape, frame, overlap=6)
    np.testing.assert_allclose(constant[covered], 3.5, rtol=1e-6)
    # Different tile outputs are averaged smoothly: between the two tile values, never outside.
    mixed, _ = blend([np.full_like(p, float(i % 2)) for i, p in enumerate(patches)], starts, shape, frame, overlap=6)
    assert mixed[covered].min() >= 0.0 and mixed[covered].max() <= 1.0
    assert ((mixed[covered] > 0.01) & (mixed[covered] < 0.99)).any()


def test_real_case_in_a_small_field_of_view_is_covered_whole_or_refused(brats):
    """A 64 px / 1 mm model on a 240 x 240 x 155 case: tiles cover every brain voxel, and restacking
    the tiles maps the whole brain back onto the input grid; the refuse path names what would fit."""
    t1, _, affine, _ = brats
    frame = TrainingFrame((1.0, 1.0, 1.0), 64)
    framed = to_frame({"t1": t1}, affine, frame)
    starts = tiles(framed.foreground, frame)
    indices = np.flatnonzero(framed.foreground.any(axis=(0, 1)))
    patches = [cut(framed.arrays["t1"], s, frame, indices) for s in starts]
    volume, covered = blend(patches, starts, framed.shape, frame, indices)
    assert covered[framed.foreground].all()
    back = from_frame(volume, framed, covered=covered)
    brain = t1 > 0
    np.testing.assert_allclose(back[brain], t1[brain], rtol=1e-5, atol=1e-3)
    with pytest.raises(InputDataError, match=BRATS) as refused:
        check_fits(framed.foreground, frame, BRATS)
    message = str(refused.value)
    size = int(message.split("image size ")[1].split(" px")[0])
    assert fits(framed.foreground, TrainingFrame((1.0, 1.0, 1.0), size))
    assert not fits(framed.foreground, TrainingFrame((1.0, 1.0, 1.0), size - 1))

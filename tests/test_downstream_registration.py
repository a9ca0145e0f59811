"""Rigid registration, NIfTI <-> SimpleITK geometry, TRE and the registration benchmark."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from mmhvae.downstream.registration import (
    PAPER_RANGES,
    RigidSettings,
    benchmark_registration,
    displace,
    displacement_magnitudes,
    foreground_mask,
    mask_points,
    nifti_to_sitk,
    random_rigid_displacement,
    read_image,
    register_files,
    register_rigid,
    sitk_to_nifti,
    target_registration_error,
    tre_table,
    write_tre_csv,
)


def _translation(t) -> sitk.Euler3DTransform:
    transform = sitk.Euler3DTransform()
    transform.SetTranslation(tuple(float(v) for v in t))
    return transform


# --------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------


def test_nifti_conversion_matches_simpleitk_reader(real_data_dir):
    path = real_data_dir / "TCGA-DU-7294" / "TCGA-DU-7294-t2.nii.gz"
    nifti = nib.load(str(path))
    converted = nifti_to_sitk(nifti)
    read = read_image(path)
    assert converted.GetSize() == read.GetSize()
    np.testing.assert_allclose(converted.GetOrigin(), read.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(converted.GetDirection(), read.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(converted.GetSpacing(), read.GetSpacing(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(converted), sitk.GetArrayViewFromImage(read))
    back = sitk_to_nifti(read)
    np.testing.assert_allclose(back.affine, nifti.affine, atol=1e-4)


def test_oblique_affine_round_trip_keeps_world_positions():
    rotation = sitk.VersorTransform((0.3, -0.2, 0.9), 0.4).GetMatrix()
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(rotation).reshape(3, 3) @ np.diag([1.2, 0.8, 2.5])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    data = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    image = nifti_to_sitk(nib.Nifti1Image(data, affine))
    # Voxel (i, j, k): RAS from the affine, LPS from SimpleITK; they differ by the sign of x and y.
    ijk = (4, 1, 6)
    ras = affine @ np.array([*ijk, 1.0])
    lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
    np.testing.assert_allclose(lps, ras[:3] * [-1, -1, 1], atol=1e-9)
    assert image[ijk] == pytest.approx(float(data[ijk]))
    back = sitk_to_nifti(image)
    np.testing.assert_allclose(back.affine, affine, atol=1e-9)
    np.testing.assert_array_equal(back.get_fdata(dtype=np.float32), data)


# --------------------------------------------------------------------------------------------------
# TRE and simulated displacements
# --------------------------------------------------------------------------------------------------


def test_tre_of_a_pure_translation_is_its_length():
    points = np.random.default_rng(0).uniform(-50, 50, size=(100, 3))
    truth = _translation((3.0, 4.0, 12.0))
    identity = sitk.Euler3DTransform()
    np.testing.assert_allclose(target_registration_error(points, identity, truth), 13.0)
    np.testing.assert_allclose(target_registration_error(points, truth, truth), 0.0, atol=1e-12)
    np.testing.assert_allclose(displacement_magnitudes(truth, points), 13.0)
    # A registration that recovered half of the translation leaves half of the error.
    np.testing.assert_allclose(target_registration_error(points, _translation((1.5, 2.0, 6.0)), truth), 6.5)


def test_tre_of_a_rotation_by_hand():
    # 90 degrees about z through c = (10, 0, 0): a point at distance r from the axis moves r * sqrt(2).
    rotation = sitk.Euler3DTransform((10.0, 0.0, 0.0), 0.0, 0.0, math.pi / 2, (0.0, 0.0, 0.0))
    points = np.array([[13.0, 4.0, 7.0], [10.0, 0.0, -5.0]])
    expected = np.array([5.0 * math.sqrt(2.0), 0.0])
    np.testing.assert_allclose(target_registration_error(points, sitk.Euler3DTransform(), rotation), expected, atol=1e-9)


@pytest.mark.parametrize("low,high", PAPER_RANGES)
def test_random_displacements_fall_in_their_range(low, high):
    points = np.random.default_rng(1).uniform(-60, 60, size=(2000, 3))
    for draw in range(3):
        transform = random_rigid_displacement(points, low, high, np.random.default_rng([7, draw]))
        median = float(np.median(displacement_magnitudes(transform, points)))
        assert low <= median < high
    again = random_rigid_displacement(points, low, high, np.random.default_rng([7, 0]))
    first = random_rigid_displacement(points, low, high, np.random.default_rng([7, 0]))
    assert again.GetParameters() == first.GetParameters()


# --------------------------------------------------------------------------------------------------
# Registration on real data (mono-modal) and on the phantom (multi-modal, via synthesis)
# --------------------------------------------------------------------------------------------------


def _downsample(image: sitk.Image, spacing: float) -> sitk.Image:
    """Anti-aliased resampling to an isotropic grid (speed: the test registers at 4 mm)."""
    smooth = sitk.SmoothingRecursiveGaussian(image, spacing / 2)
    size = [int(n * s / spacing) for n, s in zip(image.GetSize(), image.GetSpacing())]
    return sitk.Resample(smooth, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), [spacing] * 3,
                         image.GetDirection(), 0.0, sitk.sitkFloat32)


def test_registration_recovers_a_known_rigid_transform_on_real_t2(real_data_dir):
    t2 = _downsample(read_image(real_data_dir / "TCGA-DU-7294" / "TCGA-DU-7294-t2.nii.gz"), 4.0)
    points = mask_points(foreground_mask(t2))
    truth = sitk.Euler3DTransform()
    truth.SetCenter(tuple(points.mean(axis=0)))
    axis = np.array([0.6, 0.0, 0.8])
    truth.SetRotation(*(math.radians(5.0) * axis))  # 5 degrees about a unit axis
    truth.SetTranslation(tuple(5.0 * np.array([0.0, 0.6, 0.8])))  # 5 mm
    moving = displace(t2, truth)
    before = target_registration_error(points, sitk.Euler3DTransform(), truth).mean()
    estimate = register_rigid(t2, moving, settings=RigidSettings(threads=1))
    after = target_registration_error(points, estimate, truth)
    assert before > 5.0
    assert after.mean() < 1.0, f"TRE {after.mean():.2f} mm (before {before:.2f} mm)"


@pytest.fixture(scope="module")
def phantom_cohort(tmp_path_factory):
    phantom = pytest.importorskip("mmhvae.data.phantom", reason="the built-in phantom (mmhvae.data.phantom) is not available yet")
    from mmhvae.data.cohort import Cohort

    root = tmp_path_factory.mktemp("phantom")
    manifest = phantom.make_cohort(root, subjects=1, seed=3, shape=(64, 64, 40), missingness="complete", workers=1)
    return Cohort.load(manifest)


class TruthSynthesizer:
    """Stands in for a perfect model: 'synthesizes' each MR target as the subject's acquired one."""

    def __init__(self, subject) -> None:
        self.subject = subject
        self.calls = []

    def __call__(self, inputs, targets):
        self.calls.append((sorted(inputs), list(targets)))
        return {t: nib.load(str(self.subject.paths[t])) for t in targets}


def test_benchmark_runs_multimodal_and_via_synthesis_on_the_phantom(phantom_cohort, tmp_path):
    subject = phantom_cohort.subjects[0]
    synth = TruthSynthesizer(subject)
    ranges = ((0.0, 4.0), (8.0, 12.0))
    rows = benchmark_registration([subject], modalities=["t2"], synthesize=synth, ranges=ranges,
                                  settings=RigidSettings(threads=1), upper_bound=True, log=lambda *_: None)
    assert synth.calls == [(["us"], ["t2"])]
    by = {(r.method, r.range_mm): r for r in rows}
    assert set(by) == {(m, r) for m in ("before", "direct", "synthesis", "upper-bound") for r in ("0-4", "8-12")}
    for label, (low, high) in zip(("0-4", "8-12"), ranges):
        assert low <= by[("before", label)].initial_median < high
        # A perfect synthesis makes the problem mono-modal: the displacement is undone.
        assert by[("synthesis", label)].tre_mean < 2.0
        # The upper bound registers to the acquired MR, which is what this synthesizer returns.
        assert by[("upper-bound", label)].tre_mean == pytest.approx(by[("synthesis", label)].tre_mean, abs=1e-6)
        assert math.isfinite(by[("direct", label)].tre_mean)
    table = tre_table(rows, ranges)
    assert "| Acquired iUS |" in table and "| Synthetic MR (from iUS) |" in table and "0-4 mm" in table
    write_tre_csv(rows, tmp_path / "tre.csv")
    assert len((tmp_path / "tre.csv").read_text().strip().splitlines()) == len(rows) + 1


def test_register_files_writes_transform_and_resampled_image(phantom_cohort, tmp_path):
    subject = phantom_cohort.subjects[0]
    t2 = read_image(subject.paths["t2"])
    points = mask_points(foreground_mask(t2), 2)
    truth = random_rigid_displacement(points, 4.0, 8.0, np.random.default_rng(0))
    moving_path = tmp_path / "t2_displaced.nii.gz"
    sitk.WriteImage(displace(t2, truth), str(moving_path))

    record = register_files(subject.paths["us"], moving_path, tmp_path / "out", synthesize=TruthSynthesizer(subject),
                            synth_modality="t2", settings=RigidSettings(threads=1), log=lambda *_: None)
    transform = sitk.ReadTransform(str(tmp_path / "out" / "transform.tfm"))
    assert target_registration_error(points, transform, truth).mean() < 2.0
    registered = read_image(tmp_path / "out" / "moving_registered.nii.gz")
    assert registered.GetSize() == read_image(subject.paths["us"]).GetSize()
    assert (tmp_path / "out" / "synthetic_t2.nii.gz").is_file()
    assert record["via_synthesis"] == "t2" and (tmp_path / "out" / "registration.json").is_file()

    with pytest.raises(ValueError, match="synth-modality"):
        register_files(subject.paths["us"], moving_path, tmp_path / "bad", synthesize=TruthSynthesizer(subject))
    with pytest.raises(FileNotFoundError, match="absent.nii.gz"):
        register_files(tmp_path / "absent.nii.gz", moving_path, tmp_path / "bad")

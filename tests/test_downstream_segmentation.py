"""The built-in segmentation experiment: metrics by hand, volume preparation, and a tiny end-to-end run."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch

from mmhvae.downstream.segmentation import (
    SegmentationSettings,
    benchmark_segmentation,
    dice_and_assd,
    prepare_volume,
    segmentation_table,
    ultrasound_region,
    write_scores_csv,
)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run torch single-threaded here, restoring the session's setting afterwards.

    On shared, busy cores torch's intra-op threads wait on each other: a forward pass of the tiny
    model took 10-20x longer with 2 threads than with 1 on the development machine.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _cube(shape=(24, 24, 24), start=(5, 5, 5), size=10) -> np.ndarray:
    volume = np.zeros(shape, dtype=np.uint8)
    volume[tuple(slice(s, s + size) for s in start)] = 1
    return volume


def test_dice_and_assd_by_hand():
    cube = _cube()
    assert dice_and_assd(cube, cube, (1.0, 1.0, 1.0)) == (1.0, 0.0)
    # Shifted by one voxel along x: overlap 9 x 10 x 10 of two 1000-voxel cubes -> Dice 0.9.
    shifted = _cube(start=(6, 5, 5))
    dice, assd = dice_and_assd(shifted, cube, (2.0, 1.0, 1.0))
    assert dice == pytest.approx(0.9)
    # The two x faces are 2 mm (one voxel along x) from the other surface, side faces mostly 0 mm.
    assert 0.0 < assd < 2.0
    dice, assd = dice_and_assd(np.zeros_like(cube), cube, (1.0, 1.0, 1.0))
    assert dice == 0.0 and math.isnan(assd)


def test_prepare_volume_standardises_inside_the_sector_only():
    rng = np.random.default_rng(0)
    region = np.zeros((10, 10, 10), dtype=bool)
    region[2:8, 2:8, 2:8] = True
    image = np.where(region, rng.normal(100.0, 20.0, region.shape), 0.0)
    seg = np.zeros(region.shape, dtype=np.int16)
    seg[0:5, 0:5, 0:5] = 2  # partly outside the sector
    seg[6, 6, 6] = 3
    affine = np.diag([1.5, 1.5, 2.5, 1.0])
    volume = prepare_volume("s", image, seg, region, affine, "whole")
    assert abs(volume.image[region].mean()) < 1e-5 and volume.image[region].std() == pytest.approx(1.0, rel=1e-4)
    assert not volume.image[~region].any()
    assert volume.label.sum() == 3 * 3 * 3 + 1 and not volume.label[~region].any()
    assert volume.spacing == (1.5, 1.5, 2.5)
    core = prepare_volume("s", image, seg, region, affine, "core")
    assert core.label.sum() == 1
    us = np.zeros((9, 9, 9))
    us[2:7, 2:7, 2:7] = 5.0
    us[4, 4, 4] = 0.0  # a dark voxel inside the sector still belongs to it
    assert ultrasound_region(us)[4, 4, 4] and ultrasound_region(us).sum() == 125


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    phantom = pytest.importorskip("mmhvae.data.phantom", reason="the built-in phantom is not available yet")
    from mmhvae.data.cohort import Cohort

    manifest = phantom.make_cohort(tmp_path_factory.mktemp("seg"), subjects=4, seed=1, shape=(32, 32, 16),
                                   missingness="complete", workers=1)
    return Cohort.load(manifest)


def test_benchmark_is_deterministic_and_reports_both_conditions(cohort, tmp_path):
    class AcquiredUltrasound:
        """A 'perfect' synthesizer returning the acquired ultrasound: both conditions see the same data."""

        def __init__(self) -> None:
            self.calls = []

        def __call__(self, inputs, targets):
            self.calls.append(sorted(inputs))
            subject = next(s for s in cohort.subjects if s.name == self.current)
            return {"us": nib.load(str(subject.paths["us"]))}

    synth = AcquiredUltrasound()
    loads = []

    def load(subject):
        from mmhvae.data.cohort import load_subject

        synth.current = subject.name
        loads.append(subject.name)
        return load_subject(subject)

    train, test = cohort.subjects[:3], cohort.subjects[3:]
    settings = SegmentationSettings(steps=6, batch_size=4, channels=(8, 16), strides=(2,))
    result = benchmark_segmentation(train, test, synth, settings=settings, load=load, log=lambda *_: None)
    assert all("us" not in inputs for inputs in synth.calls) and len(synth.calls) == 3
    assert result.train_subjects == [s.name for s in train] and result.test_subjects == [test[0].name]
    by_condition = {s.condition: s for s in result.scores}
    assert set(by_condition) == {"synthetic", "acquired"}
    # Same images, same seed, same schedule: identical networks and scores.
    assert by_condition["synthetic"].dice == by_condition["acquired"].dice
    assert 0.0 <= by_condition["synthetic"].dice <= 1.0
    table = segmentation_table(result)
    assert "Dice Score (%)" in table and "Trained on synthetic iUS" in table and "Trained on acquired iUS" in table
    write_scores_csv(result, tmp_path / "scores.csv")
    assert len((tmp_path / "scores.csv").read_text().strip().splitlines()) == 3


def test_benchmark_refuses_without_usable_subjects(cohort):
    with pytest.raises(ValueError, match="no usable training subject"):
        benchmark_segmentation([], cohort.subjects[:1], lambda inputs, targets: {}, log=lambda *_: None)

"""Issue 15, points 1-4 end to end: a model's frame is recorded; synthesis brings any volume into it
(orientation, spacing, foreground field of view, tiles) and maps the outputs back onto the input grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from mmhvae.config import ExperimentConfig, preset

CASE = "BraTS-GLI-00001-000"  # 240 x 240 x 155, 1 mm, LPS


def _model(spacing, size=32, modalities=("t2", "flair")):
    from mmhvae.models import build_model

    cfg = preset("tiny")
    cfg.model.modalities = list(modalities)
    cfg.model.image_size = size
    cfg.data.spacing = list(spacing)
    torch.manual_seed(0)
    from mmhvae.trained_model import TrainedModel

    return TrainedModel(build_model(cfg.model), cfg).eval()


@pytest.fixture(scope="module")
def real_t2(real_cases_dir):
    path = real_cases_dir / CASE / f"{CASE}-t2w.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return nib.load(path)


def test_training_records_the_frame_chosen_from_the_cohort(tmp_path):
    from mmhvae.cli import main
    from mmhvae.data.phantom import make_cohort

    cohort = make_cohort(tmp_path / "cohort", subjects=4, seed=0, shape=(32, 32, 12), workers=1)
    spacing = [float(v) for v in np.round(nib.load(next((tmp_path / "cohort").glob("*/*-t2.nii.gz"))).header.get_zooms(), 2)]
    run = tmp_path / "run"
    assert main(["train", "--config", "tiny", "--cohort", str(cohort), "--out", str(run), "--no-progress",
                 "train.steps=2", "train.batch_size=2", "train.validate_every=2", "train.checkpoint_every=2"]) == 0
    cfg = ExperimentConfig.load(run / "config.yaml")
    assert cfg.data.spacing == pytest.approx(spacing) and cfg.data.orientation == "RAS"
    from mmhvae.data.frame import frame_of
    from mmhvae.infer import load_model

    frame = frame_of(load_model(run).config.data, cfg.model.image_size)
    assert frame.field_of_view == pytest.approx((cfg.model.image_size * spacing[0], cfg.model.image_size * spacing[1]))


@pytest.mark.real
def test_a_small_field_of_view_covers_the_whole_real_brain_by_tiles(real_t2):
    from mmhvae.infer import synthesize_volume

    model = _model((4.0, 4.0, 4.0), size=32)  # 128 mm field of view: smaller than the brain
    out = synthesize_volume(model, {"t2": real_t2}, temperature=0.0)
    brain = np.asarray(real_t2.dataobj) > 0
    for name, img in out.items():
        assert img.shape == real_t2.shape and np.allclose(img.affine, real_t2.affine)
        data = img.get_fdata()
        assert np.count_nonzero(data[brain]) / brain.sum() > 0.999, name  # defined over the whole brain
    from mmhvae.data.frame import fits, frame_of, to_frame

    framed = to_frame({"t2": np.asarray(real_t2.dataobj, dtype=np.float32)}, real_t2.affine,
                      frame_of(model.config.data, 32))
    assert not fits(framed.foreground, framed.frame)  # so the pass above really needed tiles


@pytest.mark.real
def test_refuse_mode_names_the_subject_and_a_size_that_fits(real_t2):
    from mmhvae.data.frame import GeometryError
    from mmhvae.infer import synthesize_volume

    model = _model((4.0, 4.0, 4.0), size=32)
    model.config.data.fit = "refuse"
    with pytest.raises(GeometryError, match=r"t2w.*image size \d+ px"):
        synthesize_volume(model, {"t2": real_t2.get_filename()}, temperature=0.0)


@pytest.mark.real
def test_flipped_and_permuted_storage_gives_the_same_world_space_output(real_t2):
    from mmhvae.infer import synthesize_volume

    model = _model((3.0, 3.0, 3.0), size=48)
    data = np.asarray(real_t2.dataobj, dtype=np.float32)[::2, ::2, ::2]  # 2 mm, to keep the test fast
    affine = real_t2.affine.copy()
    affine[:3, :3] *= 2
    reference = synthesize_volume(model, {"t2": nib.Nifti1Image(data, affine)}, temperature=0.0)["flair"].get_fdata()
    # Same world geometry, other storage: flip axis 0 and swap axes 1 and 2 (affine adjusted to match).
    flipped = data[::-1]
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, data.shape[0] - 1
    stored = np.ascontiguousarray(np.transpose(flipped, (0, 2, 1)))
    swap = np.eye(4)[[0, 2, 1, 3]]
    new_affine = affine @ flip @ swap
    out = synthesize_volume(model, {"t2": nib.Nifti1Image(stored, new_affine)}, temperature=0.0)["flair"].get_fdata()
    back = np.transpose(out, (0, 2, 1))[::-1]
    assert np.allclose(back, reference, atol=1e-5)


def test_an_anisotropic_volume_is_resampled_to_the_model_spacing(monkeypatch):
    import mmhvae.models.protocol as protocol
    from mmhvae.infer import synthesize_volume

    model = _model((2.0, 2.0, 2.0), size=32)
    volume = np.zeros((40, 40, 8), dtype=np.float32)  # 1 x 1 x 5 mm: 40 x 40 x 40 mm
    volume[8:32, 8:32, 1:7] = np.random.default_rng(0).uniform(50, 100, (24, 24, 6))
    affine = np.diag([1.0, 1.0, 5.0, 1.0])
    seen = []
    batched = protocol.synthesize_batched

    def counting(model, inputs, *args, **kwargs):
        seen.append(next(iter(inputs.values())).shape[0])  # slices handed to the model
        return batched(model, inputs, *args, **kwargs)

    monkeypatch.setattr(protocol, "synthesize_batched", counting)
    out = synthesize_volume(model, {"t2": nib.Nifti1Image(volume, affine)}, temperature=0.0, batch_size=64)
    assert out["flair"].shape == volume.shape
    # 30 mm of foreground along z at 2 mm: about 15 slices, not the 6 stored ones
    assert 13 <= sum(seen) <= 17


def test_outputs_are_zero_outside_the_inputs_foreground_unless_asked_otherwise():
    from mmhvae.infer import synthesize_volume

    model = _model((2.0, 2.0, 2.0), size=32)
    volume = np.zeros((32, 32, 16), dtype=np.float32)
    volume[8:24, 8:24, 4:12] = np.random.default_rng(1).uniform(50, 100, (16, 16, 8))
    img = nib.Nifti1Image(volume, np.diag([2.0, 2.0, 2.0, 1.0]))
    masked = synthesize_volume(model, {"t2": img}, temperature=0.0)["flair"].get_fdata()
    assert not masked[volume == 0].any() and masked[volume > 0].any()
    model.config.data.mask_outputs = False
    free = synthesize_volume(model, {"t2": img}, temperature=0.0)["flair"].get_fdata()
    assert free[volume == 0].any()  # the haze an untrained model puts around the brain
    assert np.allclose(free[volume > 0], masked[volume > 0])

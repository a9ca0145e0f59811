"""Paper §4.4.1: inputs are normalized per image (not harmonized), targets are harmonized, so the model
learns to harmonize; one temperature default; inference leaves the global RNG alone."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from mmhvae.config import DataConfig, preset
from mmhvae.data.cohort import Cohort
from mmhvae.data.dataset import preprocess_subject
from mmhvae.data.input_normalization import normalize_input_volume
from mmhvae.data.phantom import make_cohort

MODALITIES = ["us", "t2", "cet1"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    make_cohort(root, subjects=3, seed=3, shape=(32, 32, 12), workers=1)
    return Cohort.load(root)


@pytest.fixture(scope="module")
def tiny_model():
    from mmhvae.models import build_model

    cfg = preset("tiny")
    cfg.model.modalities = list(MODALITIES)
    cfg.model.image_size = 32
    torch.manual_seed(0)
    from mmhvae.trained_model import TrainedModel

    return TrainedModel(build_model(cfg.model), cfg)


def _gained(subject_dir, modality, gain, out_dir):
    img = nib.load(subject_dir / f"{subject_dir.name}-{modality}.nii.gz")
    data = np.asarray(img.dataobj, dtype=np.float32) * gain
    path = out_dir / f"{modality}_x{gain}.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine), path)
    return path


def test_inputs_are_normalized_per_image_and_targets_harmonized(cohort):
    cfg = DataConfig(cache_dir="")
    subject = cohort.subjects[0]
    pre = preprocess_subject(subject, cfg, MODALITIES, 32)
    for m in pre.targets:
        assert pre.inputs[m].shape == pre.targets[m].shape
        assert pre.inputs[m].min() >= 0 and pre.inputs[m].max() == pytest.approx(1.0)
    # ceT1 harmonized to a white-matter median of 1/5: its values are not the [0, 1] input scaling
    assert not np.allclose(pre.inputs["cet1"], pre.targets["cet1"], atol=1e-3)


def test_input_scaling_ignores_scanner_gain_and_background_offset():
    rng = np.random.default_rng(0)
    volume = np.zeros((20, 20, 8), dtype=np.float32)
    volume[4:16, 4:16, 2:6] = rng.uniform(100, 400, size=(12, 12, 4))
    cfg = DataConfig()
    ref = normalize_input_volume(volume, cfg)
    assert np.allclose(normalize_input_volume(3.5 * volume, cfg), ref, atol=1e-6)
    # a z-scored volume: negative constant background, brain values on both sides of 0
    zscored = np.where(volume > 0, (volume - 250) / 80, -4.0).astype(np.float32)
    assert np.allclose(normalize_input_volume(zscored, cfg), ref, atol=1e-5)
    assert (normalize_input_volume(zscored, cfg)[volume == 0] == 0).all()


def test_slice_mode_scales_each_slice_on_its_own():
    volume = np.zeros((10, 10, 4), dtype=np.float32)
    volume[2:8, 2:8, 1] = np.linspace(1, 2, 36).reshape(6, 6)
    volume[2:8, 2:8, 2] = 50 * np.linspace(1, 2, 36).reshape(6, 6)
    from mmhvae.data.input_normalization import normalize_input_slices

    cfg = DataConfig(input_normalization="slice")
    slices = np.moveaxis(normalize_input_volume(volume, cfg), 2, 0)
    out = normalize_input_slices(slices, cfg, slices != 0)
    assert np.allclose(out[1], out[2], atol=1e-6) and out[1].max() == pytest.approx(1.0)


def test_trainer_feeds_inputs_to_the_encoders_and_scores_the_targets(tmp_path):
    from mmhvae.train.batches import ArraySliceDataset
    from mmhvae.train.losses import reconstruction_loss
    from mmhvae.train.trainer import Trainer

    cfg = preset("tiny")
    cfg.model.modalities = ["a", "b"]
    cfg.model.image_size = 16
    cfg.train.steps, cfg.train.batch_size, cfg.train.draws, cfg.train.use_gan = 2, 4, 1, False
    cfg.train.subset_policy = "uniform"
    g = torch.Generator().manual_seed(0)
    targets = torch.rand(8, 2, 16, 16, generator=g)
    inputs = torch.rand(8, 2, 16, 16, generator=g)
    available = torch.ones(8, 2, dtype=torch.bool)
    trainer = Trainer(cfg, tmp_path / "run", ArraySliceDataset(targets, available, inputs=inputs), None)
    seen = {}

    def record(module, args, output):
        seen["images"], seen["out"] = args[0].detach().clone(), output.reconstructions.detach()

    trainer.model.register_forward_hook(record)
    batch = trainer.batches.batch(0)
    stats = trainer.training_step(batch, 0)
    assert torch.equal(seen["images"], batch["inputs"])  # the encoders read the inputs
    expected = reconstruction_loss(seen["out"], batch["targets"], batch["available"], cfg.train.reconstruction)
    assert stats["img"] == pytest.approx(float(expected), rel=1e-5)  # the loss scores the targets


def test_synthesis_needs_no_white_matter_and_does_not_depend_on_gain(cohort, tiny_model, tmp_path):
    """Inputs are not harmonized at inference: an input whose gain differs gives the same output."""
    from mmhvae.infer import synthesize_volume

    subject_dir = next(iter(cohort.subjects[0].paths.values())).parent
    one = synthesize_volume(tiny_model, {"t2": _gained(subject_dir, "t2", 1.0, tmp_path)}, temperature=0.0)
    three = synthesize_volume(tiny_model, {"t2": _gained(subject_dir, "t2", 3.0, tmp_path)}, temperature=0.0)
    for t in MODALITIES:
        assert np.allclose(one[t].get_fdata(), three[t].get_fdata(), atol=1e-5)


def test_one_temperature_default_and_a_local_random_generator(cohort, tiny_model):
    from mmhvae.infer import synthesize_volume

    tiny_model.config.eval.temperature = 0.0
    x = {"t2": torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(1))}
    torch.manual_seed(123)
    a = tiny_model.synthesize(x)["cet1"]
    b = tiny_model.synthesize(x)["cet1"]
    assert torch.equal(a, b)  # checkpoint's eval.temperature = 0: deterministic by default
    tiny_model.config.eval.temperature = 1.0
    c = tiny_model.synthesize(x)["cet1"]
    assert not torch.equal(a, c)  # ... and tau = 1 once the config says so
    path = next(iter(cohort.subjects[0].paths.values())).parent / f"{cohort.subjects[0].name}-t2.nii.gz"
    state = torch.get_rng_state()
    first = synthesize_volume(tiny_model, {"t2": path}, seed=5)["cet1"].get_fdata()
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is neither used nor reseeded
    again = synthesize_volume(tiny_model, {"t2": path}, seed=5)["cet1"].get_fdata()
    other = synthesize_volume(tiny_model, {"t2": path}, seed=6)["cet1"].get_fdata()
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    for bad in (float("nan"), -0.5, float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            synthesize_volume(tiny_model, {"t2": path}, temperature=bad)


def test_synthesis_works_where_white_matter_cannot_be_estimated(tiny_model, tmp_path):
    """Harmonization (which needs a white-matter estimate) is for scoring only, not for the inputs."""
    from mmhvae.data.harmonize import HarmonizationError, harmonize
    from mmhvae.infer import synthesize_volume

    volume = np.zeros((32, 32, 6), dtype=np.float32)
    volume[8:24, 8:24] = 200.0
    volume[12:20, 12:20] = 600.0  # two tissue intensities: no 3-class white matter
    with pytest.raises(HarmonizationError):
        harmonize(volume, "t2", DataConfig())
    path = tmp_path / "two_tissues.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    out = synthesize_volume(tiny_model, {"t2": path}, temperature=0.0)
    assert set(out) == set(MODALITIES) and all(np.isfinite(img.get_fdata()).all() for img in out.values())


def test_masks_bound_the_input_scaling_and_are_asked_for_when_training_had_them(cohort, tiny_model, tmp_path):
    from mmhvae.infer import synthesize_volume

    subject_dir = next(iter(cohort.subjects[0].paths.values())).parent
    t2 = nib.load(subject_dir / f"{cohort.subjects[0].name}-t2.nii.gz")
    mask = np.zeros(t2.shape, dtype=np.uint8)
    mask[8:24, 8:24] = 1
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, t2.affine), mask_path)
    tiny_model.config.data.trained_with_masks = True
    with pytest.warns(UserWarning, match="trained with brain masks"):
        free = synthesize_volume(tiny_model, {"t2": t2}, temperature=0.0)["cet1"].get_fdata()
    masked = synthesize_volume(tiny_model, {"t2": t2}, temperature=0.0, brain_mask=mask_path)["cet1"].get_fdata()
    assert not np.allclose(free, masked)  # the mask changes what the encoders see
    bad = tmp_path / "bad_mask.nii.gz"
    nib.save(nib.Nifti1Image(mask[:, :, :-1], t2.affine), bad)
    with pytest.raises(ValueError, match="shape"):
        synthesize_volume(tiny_model, {"t2": t2}, temperature=0.0, brain_mask=bad)
    tiny_model.config.data.trained_with_masks = False


def test_the_documented_api_a_bare_generator_and_a_loaded_trained_model(tmp_path):
    """``synthesize_volume(MMHVAE.from_config(cfg), ...)`` works; ``load_model`` returns the network
    with its run's config and step, and sets nothing on the ``nn.Module``."""
    from mmhvae.checkpoint import save_generator
    from mmhvae.infer import load_model, synthesize_volume
    from mmhvae.models.mmhvae import MMHVAE
    from mmhvae.trained_model import TrainedModel

    cfg = preset("tiny")
    cfg.model.modalities, cfg.model.image_size = ["t2", "flair"], 16
    network = MMHVAE.from_config(cfg.model)
    assert MMHVAE.from_config(cfg).state_dict().keys() == network.state_dict().keys()  # either config
    volume = np.zeros((16, 16, 4), dtype=np.float32)
    volume[4:12, 4:12] = np.random.default_rng(0).uniform(10, 20, (8, 8, 4))
    out = synthesize_volume(network, {"t2": nib.Nifti1Image(volume, np.eye(4))}, temperature=0.0)
    assert out["flair"].shape == volume.shape
    cfg.eval.temperature = 0.0
    path = tmp_path / "model.safetensors"
    save_generator(path, network, cfg, step=7)
    loaded = load_model(path)
    assert isinstance(loaded, TrainedModel) and loaded.step == 7 and loaded.config.eval.temperature == 0.0
    assert not hasattr(loaded.network, "config")

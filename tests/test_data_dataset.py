"""SliceDataset: documented item shapes, missing modalities, on-disk cache streaming, sampling, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mmhvae.config import DataConfig
from mmhvae.data.cohort import Cohort
from mmhvae.data.dataset import SliceDataset, augment_sample, pattern_balanced_sampler
from mmhvae.data.phantom import make_cohort

MODALITIES = ["us", "t2", "cet1", "flair"]
SIZE = 32


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    make_cohort(root, subjects=6, seed=1, shape=(32, 28, 16), workers=1)
    return Cohort.load(root)


@pytest.fixture
def cfg(tmp_path):
    return DataConfig(cache_dir=str(tmp_path / "cache"))


def test_items_have_the_documented_shapes(cohort, cfg):
    dataset = SliceDataset(cohort, cohort.subjects, cfg, MODALITIES, SIZE)
    assert len(dataset) > 0 and dataset.cache_misses == 6
    item = dataset[0]
    assert item["targets"].shape == (4, SIZE, SIZE) and item["targets"].dtype == torch.float32
    assert item["available"].shape == (4,) and item["available"].dtype == torch.bool
    assert item["seg"].shape == (SIZE, SIZE) and item["seg"].dtype == torch.long
    assert item["has_seg"] is True and isinstance(item["subject"], str) and isinstance(item["slice"], int)
    batch = next(iter(DataLoader(dataset, batch_size=5)))
    assert batch["targets"].shape == (5, 4, SIZE, SIZE) and batch["available"].shape == (5, 4)


def test_missing_modalities_are_zero_and_flagged(cohort, cfg):
    dataset = SliceDataset(cohort, cohort.subjects, cfg, MODALITIES, SIZE)
    seen_missing = 0
    for index in range(len(dataset)):
        item = dataset[index]
        subject = cohort.subject(item["subject"])
        assert item["available"].tolist() == list(subject.available(MODALITIES))
        for j, present in enumerate(item["available"].tolist()):
            if not present:
                assert torch.count_nonzero(item["targets"][j]) == 0
                seen_missing += 1
        assert item["targets"][0].max() <= 1.0  # ultrasound min-max harmonized
    assert seen_missing > 0
    assert len(dataset.patterns) == len(set(s.available(MODALITIES) for s in cohort.subjects))


def test_harmonized_and_foreground_only(cohort, cfg):
    dataset = SliceDataset(cohort, cohort.subjects, cfg, MODALITIES, SIZE)
    meta = dataset.meta(0)
    assert meta["harmonization"]["cet1"]["method"] == "wm-median"
    assert meta["harmonization"]["us"]["method"] == "minmax"
    assert 0 < meta["num_slices"] <= 16  # slices without brain dropped
    all_slices = DataConfig(cache_dir=cfg.cache_dir, foreground_only=False)
    everything = SliceDataset(cohort, cohort.subjects[:1], all_slices, MODALITIES, SIZE)
    assert len(everything) == 16


def test_second_epoch_streams_from_the_memmap_cache(cohort, cfg):
    first = SliceDataset(cohort, cohort.subjects, cfg, MODALITIES, SIZE)
    items = [first[i]["targets"] for i in range(len(first))]
    again = SliceDataset(cohort, cohort.subjects, cfg, MODALITIES, SIZE)
    assert again.cache_hits == 6 and again.cache_misses == 0
    assert all(torch.equal(items[i], again[i]["targets"]) for i in range(len(again)))
    maps = again.arrays(0)
    assert maps and all(isinstance(a, np.memmap) for a in maps.values())
    assert len(again._open) <= 32
    # Another setting (image size) is another cache entry, never a stale one.
    resized = SliceDataset(cohort, cohort.subjects[:2], cfg, MODALITIES, 48)
    assert resized.cache_misses == 2 and resized[0]["targets"].shape == (4, 48, 48)


def test_subjects_are_restricted_to_the_model_modalities(cohort, cfg):
    dataset = SliceDataset(cohort, cohort.subjects, cfg, ["us", "cet1"], SIZE)
    assert dataset[0]["targets"].shape == (2, SIZE, SIZE)
    flair_only = SliceDataset(cohort, cohort.subjects, cfg, ["flair"], SIZE)
    assert len(flair_only.skipped) == sum("flair" not in s.paths for s in cohort.subjects)


def test_pattern_balanced_sampler_balances(cohort, cfg):
    dataset = SliceDataset(cohort, cohort.subjects, cfg, MODALITIES, SIZE)
    sampler = pattern_balanced_sampler(dataset, num_samples=6000, generator=torch.Generator().manual_seed(0))
    drawn = np.bincount(dataset.sample_patterns[list(sampler)], minlength=len(dataset.patterns)) / 6000
    np.testing.assert_allclose(drawn, 1 / len(dataset.patterns), atol=0.03)


def test_augmentation_is_shared_and_keeps_missing_zero(cohort, cfg):
    images = torch.zeros(3, SIZE, SIZE)
    images[0, 8:20, 10:14] = 1.0
    images[1] = images[0] * 2  # a second modality, same anatomy
    seg = (images[0] > 0).long() * 2
    generator = torch.Generator().manual_seed(3)
    out, out_seg = augment_sample(images, seg, DataConfig(augment_rotation=20.0), generator)
    assert torch.allclose(out[1], out[0] * 2, atol=1e-5)  # same transform for every modality
    assert torch.count_nonzero(out[2]) == 0  # missing stays zero
    assert set(out_seg.unique().tolist()) <= {0, 2} and not torch.equal(out_seg, seg)
    dataset = SliceDataset(cohort, cohort.subjects, cfg, MODALITIES, SIZE, augment=True)
    item = dataset[0]
    assert item["targets"].shape == (4, SIZE, SIZE)


def test_crop_to_the_ultrasound_field_of_view(cohort, cfg):
    cropped_cfg = DataConfig(cache_dir=cfg.cache_dir, crop_to_modality="us", crop_margin=1)
    dataset = SliceDataset(cohort, cohort.subjects[:2], cropped_cfg, MODALITIES, SIZE)
    full = SliceDataset(cohort, cohort.subjects[:2], cfg, MODALITIES, SIZE)
    assert len(dataset) < len(full)  # slices outside the ultrasound sector are left out
    # Every kept slice shows some of the ultrasound sector.
    assert all(dataset[i]["targets"][0].max() > 0 for i in range(len(dataset)))
    # The targets (every modality) are 0 outside the cropped field of view: nothing outside the cone
    # is asked of the model, nor scored (outputs are masked to it), while the inputs keep their context.
    from mmhvae.data.dataset import preprocess_subject

    pre = preprocess_subject(cohort.subjects[0], cropped_cfg, MODALITIES, SIZE)
    outside = ~pre.slices.foreground
    assert outside.any()
    for m, target in pre.targets.items():
        assert np.count_nonzero(np.asarray(target)[outside]) == 0, m
    uncropped = preprocess_subject(cohort.subjects[0], cfg, MODALITIES, SIZE)
    assert any(np.count_nonzero(np.asarray(v)) > np.count_nonzero(np.asarray(pre.targets[m]))
               for m, v in uncropped.targets.items())

"""Training and validation slice datasets from the cohort named in the config."""

from __future__ import annotations

from torch.utils.data import Dataset

from mmhvae.config import ConfigError, ExperimentConfig


def build_datasets(cfg: ExperimentConfig) -> tuple[Dataset, Dataset | None]:
    """``(train, val)`` :class:`~mmhvae.data.dataset.SliceDataset` of ``cfg.data.cohort``.

    Subjects come from the ``split`` column (``train`` / ``val``); with no ``val`` subjects,
    validation is skipped and the final model is kept as the best one. ``train.complete_only``
    (the ``mhvae`` baseline) keeps only subjects that have every modality.
    """
    from mmhvae.data.cohort import Cohort
    from mmhvae.data.dataset import SliceDataset

    if not cfg.data.cohort:
        raise ConfigError("data.cohort is empty: pass --cohort PATH (a manifest CSV or a cohort folder)")
    cohort = Cohort.load(cfg.data.cohort, modalities=cfg.model.modalities, aliases=cfg.data.modality_aliases or None)
    train_subjects = cohort.select("train")
    if not train_subjects:
        raise ConfigError(
            f"{cfg.data.cohort}: no subject with split 'train'; add a split column (train/val/test)"
        )
    if getattr(cfg.train, "complete_only", False):
        train_subjects = [s for s in train_subjects if all(m in s.paths for m in cfg.model.modalities)]
        if not train_subjects:
            raise ConfigError(f"{cfg.data.cohort}: train.complete_only is set but no training subject is complete")
    val_subjects = cohort.select("val")[: max(cfg.train.val_subjects, 0)]
    cfg.data.trained_with_masks = any(s.brain_mask is not None for s in train_subjects)
    if not cfg.data.spacing:
        cfg.data.spacing = cohort_spacing(train_subjects, cfg.data.orientation)  # recorded in config.yaml
    mods, size = cfg.model.modalities, cfg.model.image_size
    train_set = SliceDataset(cohort, train_subjects, cfg.data, mods, size, augment=cfg.data.augment)
    val_set = SliceDataset(cohort, val_subjects, cfg.data, mods, size, augment=False) if val_subjects else None
    return train_set, val_set


def cohort_spacing(subjects, orientation: str = "RAS") -> list[float]:
    """``data.spacing`` default: the median voxel spacing (mm, per frame axis) of ``subjects``' images,
    read from the NIfTI headers only."""
    import nibabel as nib

    from mmhvae.data.frame import default_spacing

    affines = [nib.load(str(next(iter(s.paths.values())))).affine for s in subjects if s.paths]
    return [float(v) for v in default_spacing(affines, tuple(orientation))]


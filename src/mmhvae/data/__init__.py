"""Data layer (DESIGN §3): NIfTI I/O, cohorts, harmonization, slicing, the training dataset and the
built-in phantom cohort.

The light modules are imported here; ``SliceDataset``, ``pattern_balanced_sampler`` (torch) and
``make_cohort`` (the phantom) load on first use.
"""

from __future__ import annotations

import importlib

from mmhvae.data.cohort import Cohort, CohortError, Subject, SubjectVolumes, load_subject
from mmhvae.data.harmonize import (
    HarmonizationError,
    HarmonizationParams,
    harmonize,
    harmonize_subject,
    invert_harmonization,
)
from mmhvae.data.nifti import NiftiError, read_volume, write_volume
from mmhvae.data.slices import (
    SliceGeometry,
    crop_box_to_mask,
    foreground_slices,
    slices_to_volume,
    volume_to_slices,
)

_LAZY = {
    "SliceDataset": "mmhvae.data.dataset",
    "pattern_balanced_sampler": "mmhvae.data.dataset",
    "preprocess_subject": "mmhvae.data.dataset",
    "make_cohort": "mmhvae.data.phantom",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mmhvae.data' has no attribute {name!r}")


__all__ = [
    "Cohort", "CohortError", "Subject", "SubjectVolumes", "load_subject",
    "HarmonizationError", "HarmonizationParams", "harmonize", "harmonize_subject", "invert_harmonization",
    "NiftiError", "read_volume", "write_volume",
    "SliceGeometry", "crop_box_to_mask", "foreground_slices", "slices_to_volume", "volume_to_slices",
    *_LAZY,
]

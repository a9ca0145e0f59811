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

The parts, one concept each:

* :mod:`.images` — NIfTI <-> SimpleITK images and atomic image / transform files;
* :mod:`.rigid` — the rigid registration (:func:`register_rigid`) and its metric regions;
* :mod:`.displacement` — simulated rigid displacements and the target registration error;
* :mod:`.benchmark` — the displaced-MR benchmark of paper Table 5;
* :mod:`.files` — registering two image files, directly or via synthesis (``mmhvae register``).

Everything public is re-exported here: ``from mmhvae.downstream.registration import register_rigid``.
"""

from __future__ import annotations

from mmhvae.downstream.registration.benchmark import (
    METHOD_NAMES,
    PAPER_RANGES,
    TreRow,
    benchmark_registration,
    parse_ranges,
    range_label,
    tre_table,
    write_tre_csv,
)
from mmhvae.downstream.registration.displacement import (
    displace,
    displacement_magnitudes,
    mask_points,
    random_rigid_displacement,
    target_registration_error,
    transform_points,
)
from mmhvae.downstream.registration.files import register_files
from mmhvae.downstream.registration.images import (
    array_on_grid,
    nifti_to_sitk,
    read_image,
    save_image,
    save_transform,
    sitk_affine,
    sitk_to_nifti,
)
from mmhvae.downstream.registration.rigid import (
    RegistrationReport,
    RigidSettings,
    centred_rigid_initialisation,
    field_of_view_mask,
    foreground_mask,
    metric_mask,
    register_rigid,
    resample_to,
)

__all__ = [
    "METHOD_NAMES", "PAPER_RANGES", "RegistrationReport", "RigidSettings", "TreRow", "array_on_grid",
    "benchmark_registration", "centred_rigid_initialisation", "displace", "displacement_magnitudes",
    "field_of_view_mask", "foreground_mask", "mask_points", "metric_mask", "nifti_to_sitk", "parse_ranges",
    "random_rigid_displacement", "range_label", "read_image", "register_files", "register_rigid", "resample_to",
    "save_image", "save_transform", "sitk_affine", "sitk_to_nifti", "target_registration_error", "transform_points",
    "tre_table", "write_tre_csv",
]

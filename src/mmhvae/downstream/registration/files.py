"""Registering two image files, directly or via a synthesized MR (the ``mmhvae register`` verb)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from mmhvae.downstream.registration.images import array_on_grid, read_image, save_image, save_transform
from mmhvae.downstream.registration.rigid import (
    RegistrationReport,
    RigidSettings,
    metric_mask,
    register_rigid,
    resample_to,
)


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
        reference = _synthetic_reference(synthesize, fixed_path, fixed, fixed_modality, synth_modality, out, log)
        record.update(via_synthesis=synth_modality, synthetic=str(out / f"synthetic_{synth_modality}.nii.gz"))
    report: list[RegistrationReport] = []
    transform = register_rigid(reference, moving, fixed_mask=mask, settings=settings, report=report)
    save_transform(transform, out / "transform.tfm")
    save_image(resample_to(fixed, moving, transform), out / "moving_registered.nii.gz")
    record.update(_transform_record(transform, report[0], settings, out))
    atomic_write_text(out / "registration.json", json.dumps(record, indent=2) + "\n")
    log(f"wrote {out / 'transform.tfm'} and {out / 'moving_registered.nii.gz'} "
        f"(metric {report[0].metric:.4f}, {report[0].seconds:.1f}s)")
    return record


def _synthetic_reference(
    synthesize, fixed_path: str | Path, fixed: sitk.Image, fixed_modality: str, synth_modality: str,
    out: Path, log: Callable[[str], None],
) -> sitk.Image:
    """``synth_modality`` synthesized from the fixed file, on the fixed grid; written as ``synthetic_<m>``."""
    log(f"synthesizing {synth_modality} from {fixed_modality} {fixed_path}")
    source = nib.load(str(fixed_path))
    result = synthesize({fixed_modality: source}, [synth_modality])
    if synth_modality not in result:
        raise ValueError(f"the synthesis returned no {synth_modality!r}")
    reference = array_on_grid(np.asarray(result[synth_modality].dataobj, dtype=np.float32), fixed)
    synthetic_path = out / f"synthetic_{synth_modality}.nii.gz"
    save_image(reference, synthetic_path)
    log(f"wrote {synthetic_path}")
    return reference


def _transform_record(
    transform: sitk.Euler3DTransform, report: RegistrationReport, settings: RigidSettings, out: Path
) -> dict:
    """The settings, optimiser report and transform parameters written to ``registration.json``."""
    rotation = np.degrees(np.asarray(transform.GetParameters()[:3]))
    return dict(
        settings={k: list(v) if isinstance(v, tuple) else v for k, v in settings.__dict__.items()},
        metric=report.metric,
        metric_per_level=report.levels,
        stop_condition=report.stop_condition,
        seconds=round(report.seconds, 2),
        rotation_deg=[round(float(a), 4) for a in rotation],
        translation_mm=[round(float(t), 4) for t in transform.GetTranslation()],
        centre_mm=[round(float(c), 4) for c in transform.GetCenter()],
        transform=str(out / "transform.tfm"),
        registered=str(out / "moving_registered.nii.gz"),
    )

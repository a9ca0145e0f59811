"""Volume synthesis: every modality from any non-empty subset of NIfTI inputs (DESIGN §5, §7).

A volume is harmonized like the training data (``config.data``), cut into slices along the
training axis, synthesized in batches and restacked into the input's shape, affine and header.
Outputs are float32. Targets that were also inputs are mapped back to the input's intensity range;
synthesized missing modalities have no acquired range to return to and stay in harmonized units
(e.g. white-matter median = 1/7 for T2), which is the paper's "harmonized synthesis".
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import nibabel as nib
import numpy as np
import torch
from torch import nn

from mmhvae.train.checkpoint import load_generator

ImageLike = Union[str, Path, nib.spatialimages.SpatialImage]


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A trained generator from a run folder or ``.safetensors`` file; ``model.config`` is its config."""
    return load_generator(checkpoint, device)


def _as_image(name: str, value: ImageLike) -> tuple[nib.spatialimages.SpatialImage, str]:
    if isinstance(value, (str, Path)):
        from mmhvae.data.nifti import read_volume

        path = Path(value)
        array, affine, header = read_volume(path)  # clear errors: missing, corrupt, 4D, NaN/Inf
        return nib.Nifti1Image(array, affine, header), str(path)
    if not hasattr(value, "affine"):
        raise ValueError(f"input {name!r}: expected a NIfTI path or a nibabel image, got {type(value).__name__}")
    data = np.asarray(value.dataobj, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"input {name!r}: expected a 3D image, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError(f"input {name!r}: contains NaN or Inf voxels")
    return value, f"<{name} image>"


def _check_geometry(images: dict[str, tuple[nib.spatialimages.SpatialImage, str]], tolerance: float) -> None:
    names = list(images)
    ref_img, ref_src = images[names[0]]
    for name in names[1:]:
        img, src = images[name]
        if img.shape != ref_img.shape:
            raise ValueError(
                f"{src} ({name}) has shape {img.shape} but {ref_src} ({names[0]}) has {ref_img.shape}: "
                "inputs must be co-registered on one grid"
            )
        if not np.allclose(img.affine, ref_img.affine, atol=tolerance):
            raise ValueError(
                f"{src} ({name}) and {ref_src} ({names[0]}) have different affines "
                f"(max difference {np.abs(img.affine - ref_img.affine).max():.3g} > {tolerance}): resample them onto one grid"
            )


@torch.no_grad()
def synthesize_volume(
    model: nn.Module | str | Path,
    inputs: Mapping[str, ImageLike],
    targets: Optional[Sequence[str]] = None,
    temperature: float = 0.0,
    samples: int = 1,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, nib.Nifti1Image]:
    """Synthesize ``targets`` (default: every modality) from the given subset of volumes.

    Args:
        model: a loaded generator or a checkpoint path.
        inputs: modality name -> NIfTI path or nibabel image; all on one grid.
        temperature: tau of the posterior sampling (0 = deterministic mean output; paper: 0.5).
        samples: K > 1 draws K samples; the result holds their voxel-wise mean under ``target``
            and their standard deviation under ``target + "_std"`` (an uncertainty map).
    Returns:
        name -> float32 NIfTI with the inputs' shape, affine and header.
    """
    from mmhvae.data.cohort import SubjectVolumes
    from mmhvae.data.harmonize import harmonize_subject, invert_harmonization
    from mmhvae.data.slices import slices_to_volume, volume_to_slices

    if not isinstance(model, nn.Module):
        model = load_model(model)
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise ValueError("the model has no .config; load it with mmhvae.infer.load_model(checkpoint)")
    modalities = list(model.cfg.modalities)
    if not inputs:
        raise ValueError(f"empty input subset: give at least one of {modalities}")
    unknown = [m for m in inputs if m not in modalities]
    if unknown:
        raise ValueError(f"unknown modality {unknown}; this model knows {modalities}")
    targets = list(targets) if targets else modalities
    bad = [t for t in targets if t not in modalities]
    if bad:
        raise ValueError(f"unknown target modality {bad}; this model knows {modalities}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")

    loaded = {m: _as_image(m, v) for m, v in inputs.items()}
    _check_geometry(loaded, getattr(cfg.data, "affine_tolerance", 1e-3))
    ref_img = next(iter(loaded.values()))[0]
    arrays = {m: np.asarray(img.dataobj, dtype=np.float32) for m, (img, _) in loaded.items()}
    volumes = SubjectVolumes(name="input", images=arrays, affine=ref_img.affine, header=ref_img.header,
                             seg=None, brain_mask=None, wm_mask=None)
    harmonized, params = harmonize_subject(volumes, cfg.data)

    axis, size = cfg.data.slice_axis, model.cfg.image_size
    sliced = {}
    geometry = None
    for m, vol in harmonized.items():
        sliced[m], geometry = volume_to_slices(vol, axis, size)
    occupied = np.zeros(len(geometry.indices), dtype=bool)
    for m in sliced:  # slices where every input is empty are background: nothing to synthesize
        occupied |= np.abs(arrays[m]).sum(axis=tuple(a for a in range(3) if a != axis)) > 0
    keep = np.flatnonzero(occupied)

    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    draws = {t: np.zeros((samples, len(geometry.indices), size, size), dtype=np.float32) for t in targets}
    batches = [keep[i : i + batch_size] for i in range(0, len(keep), batch_size)]
    iterator = batches
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(batches, desc="synthesize", unit="batch")
    model.eval()
    for idx in iterator:
        batch = {m: torch.from_numpy(np.ascontiguousarray(s[idx])).to(device) for m, s in sliced.items()}
        for k in range(samples):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            out = model.synthesize(batch, temperature=temperature, targets=targets)
            for t in targets:
                draws[t][k, idx] = out[t].float().cpu().numpy()

    results: dict[str, nib.Nifti1Image] = {}
    header = ref_img.header.copy()
    header.set_data_dtype(np.float32)
    for t in targets:
        stack = draws[t].mean(axis=0)
        vol = slices_to_volume(stack, geometry, fill=0.0)
        if t in params:  # back to the acquired intensity range of this input
            vol = invert_harmonization(vol, params[t])
        results[t] = nib.Nifti1Image(vol.astype(np.float32), ref_img.affine, header)
        if samples > 1:
            std = slices_to_volume(draws[t].std(axis=0), geometry, fill=0.0)
            if t in params:
                std = std / np.float32(params[t].scale)
            results[f"{t}_std"] = nib.Nifti1Image(std.astype(np.float32), ref_img.affine, header)
    return results

"""Volume synthesis: every modality from any non-empty subset of NIfTI inputs (DESIGN §3, §5, §7).

Inputs are read as acquired and scaled per image exactly as the encoders saw them in training
(:mod:`mmhvae.data.input_normalization`; no harmonization, so no white-matter estimate is needed),
brought into the model's frame (orientation, spacing, field of view on the foreground, tiles where
the foreground is wider: :mod:`mmhvae.data.frame_slices`), synthesized in batches and mapped back onto
the input's own grid: same shape, affine and header, so outputs overlay the inputs in any viewer. Outputs are float32 in **harmonized units** (paper §4.4.1: e.g. white-matter
median = 1/7 for T2, ultrasound in [0, 1]), for every target, including one that was also an input
(the model harmonizes it). ``acquired_range=True`` maps such a target back to its input's intensity
range instead (that harmonizes the input too, so it needs a white-matter estimate or ``wm_mask``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import nibabel as nib
import numpy as np
import torch
from torch import nn

from mmhvae.checkpoint import load_trained
from mmhvae.trained_model import TrainedModel, as_trained

ImageLike = Union[str, Path, nib.spatialimages.SpatialImage]


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """A :class:`~mmhvae.trained_model.TrainedModel` (network, run config, step) from a run folder or a
    ``.safetensors`` file."""
    return load_trained(checkpoint, device)


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


def _mask_array(name: str, value: Optional[ImageLike], like: nib.spatialimages.SpatialImage, tolerance: float):
    if value is None:
        return None
    img, src = _as_image(name, value)
    _check_geometry({"reference": (like, "the inputs"), name: (img, src)}, tolerance)
    return np.asarray(img.dataobj) > 0


@torch.no_grad()
def synthesize_volume(
    model: TrainedModel | nn.Module | str | Path,
    inputs: Mapping[str, ImageLike],
    targets: Optional[Sequence[str]] = None,
    temperature: Optional[float] = None,
    samples: int = 1,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = False,
    brain_mask: Optional[ImageLike] = None,
    wm_mask: Optional[ImageLike] = None,
    acquired_range: bool = False,
) -> dict[str, nib.Nifti1Image]:
    """Synthesize ``targets`` (default: every modality) from the given subset of volumes.

    Args:
        model: a :class:`TrainedModel` (:func:`load_model`), a checkpoint path, or a bare generator
            (e.g. ``MMHVAE.from_config(cfg)``: default data settings, the input's own spacing).
        inputs: modality name -> NIfTI path or nibabel image; all on one grid.
        temperature: tau of the posterior sampling (0 = deterministic mean output); default: the
            checkpoint's ``eval.temperature``.
        samples: K > 1 draws K samples; the result holds their voxel-wise mean under ``target``
            and their standard deviation under ``target + "_std"`` (an uncertainty map).
        seed: seeds a local random generator (the global one is not touched).
        brain_mask, wm_mask: optional masks on the inputs' grid (path or image, > 0 = inside). The
            brain mask bounds the input scaling statistics, as a ``mask`` column does in training;
            the white-matter mask is used only with ``acquired_range``.
        acquired_range: map targets that were inputs back to the acquired intensity range.
    Returns:
        name -> float32 NIfTI with the inputs' shape, affine and header (harmonized units unless
        ``acquired_range``).
    """
    from mmhvae.models.protocol import check_request, check_temperature, default_temperature, synthesize_batched

    model = load_model(model) if isinstance(model, (str, Path)) else as_trained(model)
    targets = check_request(model.cfg.modalities, inputs, targets or None)
    if samples < 1 or batch_size < 1:
        raise ValueError(f"samples and batch size must be >= 1, got {samples} and {batch_size}")
    tau = check_temperature(default_temperature(model) if temperature is None else temperature)
    given = _read_inputs(model.config.data, inputs, brain_mask, wm_mask)
    sliced, stacks, occupied = _frame_slices(model, given)
    keep = np.flatnonzero(occupied)  # tile slices with no foreground: nothing to synthesize
    size = model.cfg.image_size
    draws = {t: np.zeros((samples, occupied.size, size, size), dtype=np.float32) for t in targets}
    if keep.size:
        out = synthesize_batched(model, {m: s[keep] for m, s in stacks.items()}, tau, batch_size, targets,
                                 samples, seed=seed, progress=progress)
        for t in targets:
            draws[t][:, keep] = out[t]
    params = {}
    if acquired_range and any(t in given.arrays for t in targets):
        params = _harmonization(model.config.data, given)
    return _on_input_grid(model.config.data, given, sliced, draws, params)


@dataclass
class _Inputs:
    """The validated inputs of one synthesis call, on their own grid."""

    reference: nib.spatialimages.SpatialImage  # the first input: grid, affine and header of the outputs
    source: str
    arrays: dict[str, np.ndarray]  # modality -> acquired volume (float32)
    brain: Optional[np.ndarray]  # the given brain mask
    wm: Optional[np.ndarray]  # the given white-matter mask
    foreground: dict[str, np.ndarray]  # modality -> its foreground (the brain mask, else non-background)


def _read_inputs(data_cfg, inputs: Mapping[str, ImageLike], brain_mask, wm_mask) -> _Inputs:
    """Read and check the inputs and masks (one grid, finite, 3D); warn when a brain mask is expected."""
    from mmhvae.data.foreground import foreground_mask

    tolerance = getattr(data_cfg, "affine_tolerance", 1e-3)
    loaded = {m: _as_image(m, v) for m, v in inputs.items()}
    _check_geometry(loaded, tolerance)
    ref_img, source = next(iter(loaded.values()))
    arrays = {m: np.asarray(img.dataobj, dtype=np.float32) for m, (img, _) in loaded.items()}
    brain = _mask_array("brain mask", brain_mask, ref_img, tolerance)
    if brain is None and getattr(data_cfg, "trained_with_masks", False):
        warnings.warn(
            "this model was trained with brain masks but none was given: inputs are scaled over their "
            "non-background voxels instead; pass brain_mask (CLI: --mask) for outputs as in training",
            stacklevel=3,
        )
    wm = _mask_array("white-matter mask", wm_mask, ref_img, tolerance)
    own = {m: brain if brain is not None else foreground_mask(a) for m, a in arrays.items()}
    return _Inputs(ref_img, source, arrays, brain, wm, own)


def _frame_slices(model: TrainedModel, given: _Inputs):
    """Inputs scaled as in training, in the model's frame (orientation, spacing, field of view on the
    foreground; tiles if wider): the frame slices, the input stacks and which slices hold foreground."""
    from mmhvae.data.frame import frame_of
    from mmhvae.data.frame_slices import frame_slices
    from mmhvae.data.input_normalization import normalize_input_slices, normalize_input_volume

    data_cfg = model.config.data
    frame = frame_of(data_cfg, model.cfg.image_size, given.reference.affine)
    arrays: dict[str, np.ndarray] = {}
    for m, volume in given.arrays.items():
        arrays[f"{m}.input"] = normalize_input_volume(volume, data_cfg, given.foreground[m])
        arrays[f"{m}.foreground"] = given.foreground[m]
    sliced = frame_slices(arrays, given.reference.affine, frame, subject=given.source, foreground=given.brain,
                          fit=getattr(data_cfg, "fit", "tile"), min_fraction=0.0)
    stacks = {m: normalize_input_slices(sliced.stacks[f"{m}.input"], data_cfg, sliced.stacks[f"{m}.foreground"])
              for m in given.arrays}
    occupied = sliced.foreground.reshape(sliced.foreground.shape[0], -1).any(axis=1)
    return sliced, stacks, occupied


def _harmonization(data_cfg, given: _Inputs) -> dict:
    """Per input modality, the harmonization of its acquired volume (to map a target back to it)."""
    from mmhvae.data.cohort import SubjectVolumes
    from mmhvae.data.harmonize import harmonize_subject

    volumes = SubjectVolumes(name="input", images=given.arrays, affine=given.reference.affine,
                             header=given.reference.header, seg=None, brain_mask=given.brain, wm_mask=given.wm)
    return harmonize_subject(volumes, data_cfg)[1]


def _on_input_grid(data_cfg, given: _Inputs, sliced, draws: dict[str, np.ndarray], params: dict):
    """The K draws per target -> float32 NIfTI on the inputs' grid: the mean (and ``_std`` when K > 1),
    0 outside the inputs' foreground with ``data.mask_outputs``, in the acquired range for ``params``."""
    from mmhvae.data.harmonize import invert_harmonization

    ref_img = given.reference
    header = ref_img.header.copy()
    header.set_data_dtype(np.float32)
    inside = None
    if getattr(data_cfg, "mask_outputs", False):
        inside = given.brain if given.brain is not None else np.logical_or.reduce(list(given.foreground.values()))
    results: dict[str, nib.Nifti1Image] = {}
    for t, samples in draws.items():
        vol = sliced.to_input_grid(samples.mean(axis=0))
        if inside is not None:
            vol = np.where(inside, vol, np.float32(0))
        if t in params:  # back to the acquired intensity range of this input
            vol = invert_harmonization(vol, params[t])
        results[t] = nib.Nifti1Image(vol.astype(np.float32), ref_img.affine, header)
        if samples.shape[0] > 1:
            std = sliced.to_input_grid(samples.std(axis=0))
            if inside is not None:
                std = np.where(inside, std, np.float32(0))
            if t in params:
                std = std / np.float32(params[t].scale)
            results[f"{t}_std"] = nib.Nifti1Image(std.astype(np.float32), ref_img.affine, header)
    return results

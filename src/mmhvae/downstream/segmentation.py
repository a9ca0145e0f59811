"""A CPU-sized version of the paper's segmentation experiment (§4.4.3, Table 6).

The paper trains nnU-Net on synthetic intra-operative ultrasound (iUS) generated from MR scans that
have tumour labels, and tests it on acquired iUS. Here a small MONAI 2D U-Net is trained on slices
of (a) ultrasound synthesized from each training subject's MR and (b) the subject's acquired
ultrasound (the supervised reference), and both are tested on the acquired ultrasound of the test
subjects with Dice and the average symmetric surface distance (ASSD, mm), computed in 3D with MONAI.

Ultrasound only sees its sector: labels are restricted to the field of view of the subject's
acquired ultrasound, and intensities are standardised inside it (synthetic ultrasound is in
harmonized units, acquired ultrasound in 8-bit grey levels). The synthetic condition uses that
field of view as geometry only, the way the paper places synthetic ultrasound in the field of view
of a (virtual) sweep.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import nibabel as nib
import numpy as np

from mmhvae.downstream import Synthesizer

#: Label values of each segmentation target (BraTS-style maps: 1 necrotic, 2 oedema, 3/4 enhancing).
TARGETS: dict[str, tuple[int, ...]] = {
    "whole": (1, 2, 3, 4),
    "core": (1, 3, 4),
    "enhancing": (3, 4),
}


@dataclass
class SegmentationSettings:
    """The U-Net and its training (CPU-sized defaults: a few minutes at 128 x 128 slices).

    ``channels``/``strides`` define the MONAI ``UNet``; slices along ``slice_axis`` where the field
    of view covers at least ``min_region_fraction`` of the slice are used for training.
    """

    target: str = "whole"
    slice_axis: int = 2
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    residual_units: int = 1
    steps: int = 400
    batch_size: int = 16
    learning_rate: float = 2e-3
    min_region_fraction: float = 0.01
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"segmentation target {self.target!r}; choose one of {sorted(TARGETS)}")
        if len(self.channels) != len(self.strides) + 1:
            raise ValueError(
                f"the U-Net needs one more channel entry than strides, got channels {self.channels} "
                f"and strides {self.strides}"
            )
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2, got {self.slice_axis}")


@dataclass
class SegmentationVolume:
    """One ultrasound volume ready for training or testing, all arrays ``(X, Y, Z)``.

    ``image`` is standardised inside ``region`` and 0 outside; ``label`` is the binary target
    restricted to ``region`` (the ultrasound field of view); ``spacing`` is in mm.
    """

    name: str
    image: np.ndarray
    label: np.ndarray
    region: np.ndarray
    spacing: tuple[float, float, float]


def ultrasound_region(us: np.ndarray) -> np.ndarray:
    """The sector of an ultrasound volume (non-zero voxels, closed and hole-filled), bool ``(X, Y, Z)``."""
    from scipy import ndimage as ndi

    inside = us != 0
    if not inside.any():
        return inside
    structure = ndi.generate_binary_structure(3, 1)
    return ndi.binary_fill_holes(ndi.binary_closing(inside, structure, iterations=2, border_value=0))


def prepare_volume(
    name: str, image: np.ndarray, seg: np.ndarray, region: np.ndarray, affine: np.ndarray, target: str
) -> SegmentationVolume:
    """Standardise ``image`` inside ``region`` and binarise ``seg`` to ``target`` within it."""
    image = np.asarray(image, dtype=np.float32)
    region = np.asarray(region, dtype=bool)
    if not region.any():
        raise ValueError(f"subject {name!r}: empty ultrasound field of view")
    values = image[region]
    scale = float(values.std()) or 1.0
    standardised = np.where(region, (image - float(values.mean())) / scale, 0.0).astype(np.float32)
    label = (np.isin(np.asarray(seg), TARGETS[target]) & region).astype(np.uint8)
    spacing = tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))
    return SegmentationVolume(name, standardised, label, region, spacing)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Model, training, inference
# --------------------------------------------------------------------------------------------------


def build_unet(settings: SegmentationSettings):
    """MONAI 2D U-Net: 1 input channel, 2 output classes (background, target)."""
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2, in_channels=1, out_channels=2, channels=tuple(settings.channels),
        strides=tuple(settings.strides), num_res_units=settings.residual_units,
    )


def _slices(volume: np.ndarray, axis: int, indices: np.ndarray, multiple: int) -> np.ndarray:
    """Slices ``(N, H, W)`` of ``volume`` along ``axis``, zero-padded to a multiple of ``multiple``."""
    stack = np.moveaxis(volume, axis, 0)[indices]
    pad = [(0, 0)] + [(0, (-n) % multiple) for n in stack.shape[1:]]
    return np.pad(stack, pad)


def train_segmenter(
    volumes: Sequence[SegmentationVolume],
    settings: SegmentationSettings,
    log: Callable[[str], None] = print,
):
    """Train a 2D U-Net on slices of ``volumes`` with Dice + cross-entropy; returns the model (eval mode).

    Batches are drawn with replacement from the slices inside the fields of view, half of them from
    slices that contain the target (the tumour is a small part of the sector), with random flips.
    """
    import torch
    from monai.losses import DiceCELoss

    settings.validate()
    multiple = 2 ** len(settings.strides)
    images, labels = [], []
    for v in volumes:
        coverage = np.moveaxis(v.region, settings.slice_axis, 0).reshape(v.region.shape[settings.slice_axis], -1)
        keep = np.flatnonzero(coverage.mean(axis=1) >= settings.min_region_fraction)
        images.append(_slices(v.image, settings.slice_axis, keep, multiple))
        labels.append(_slices(v.label, settings.slice_axis, keep, multiple))
    shapes = {im.shape[1:] for im in images}
    if len(shapes) != 1:
        raise ValueError(f"training volumes have different slice shapes {sorted(shapes)}; resample them onto one grid")
    x = np.concatenate(images)
    y = np.concatenate(labels)
    if len(x) == 0:
        raise ValueError("no training slice inside an ultrasound field of view")
    positive = np.flatnonzero(y.reshape(len(y), -1).any(axis=1))
    generator = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    device = torch.device(settings.device)
    model = build_unet(settings).to(device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimiser, settings.steps, eta_min=settings.learning_rate / 20
    )
    model.train()
    start = time.perf_counter()
    for step in range(1, settings.steps + 1):
        half = settings.batch_size // 2 if len(positive) else 0
        batch = np.concatenate([
            generator.choice(positive, size=half) if half else np.empty(0, dtype=np.int64),
            generator.integers(0, len(x), size=settings.batch_size - half),
        ])
        xb, yb = x[batch].copy(), y[batch].copy()
        for axis in (1, 2):  # random flips: the sector orientation varies between subjects
            flip = generator.random(len(batch)) < 0.5
            xb[flip] = np.flip(xb[flip], axis=axis)
            yb[flip] = np.flip(yb[flip], axis=axis)
        inputs = torch.from_numpy(xb[:, None]).to(device)
        targets = torch.from_numpy(yb[:, None].astype(np.int64)).to(device)
        loss = loss_fn(model(inputs), targets)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step == 1 or step % max(1, settings.steps // 5) == 0 or step == settings.steps:
            log(f"    step {step}/{settings.steps}  loss {loss.item():.4f}  ({time.perf_counter() - start:.0f}s)")
    model.eval()
    return model


def predict_volume(model, volume: SegmentationVolume, settings: SegmentationSettings) -> np.ndarray:
    """Binary prediction ``(X, Y, Z)`` uint8, slice by slice, restricted to the field of view."""
    import torch

    multiple = 2 ** len(settings.strides)
    axis = settings.slice_axis
    n = volume.image.shape[axis]
    stack = _slices(volume.image, axis, np.arange(n), multiple)
    device = next(model.parameters()).device
    out = np.zeros(stack.shape, dtype=np.uint8)
    with torch.no_grad():
        for i in range(0, n, 32):
            logits = model(torch.from_numpy(stack[i : i + 32, None]).to(device))
            out[i : i + 32] = logits.argmax(dim=1).cpu().numpy().astype(np.uint8)
    h, w = np.moveaxis(volume.image, axis, 0).shape[1:]
    prediction = np.moveaxis(out[:, :h, :w], 0, axis)
    return (prediction & volume.region).astype(np.uint8)


def dice_and_assd(prediction: np.ndarray, label: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """Dice (0-1) and average symmetric surface distance (mm) of two binary volumes (MONAI metrics).

    ASSD is NaN when either volume is empty (no surface to measure from).
    """
    import torch
    from monai.metrics import DiceMetric, SurfaceDistanceMetric

    def one_hot(volume: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.asarray(volume, dtype=np.int64))
        return torch.stack([t == 0, t == 1]).float()[None]  # (1, 2, X, Y, Z)

    pred, true = one_hot(prediction), one_hot(label)
    dice_metric = DiceMetric(include_background=False, reduction="mean", ignore_empty=False)
    dice = float(dice_metric(pred, true).item())
    if not np.any(prediction) or not np.any(label):
        return dice, math.nan
    surface = SurfaceDistanceMetric(include_background=False, symmetric=True, reduction="mean")
    assd = float(surface(pred, true, spacing=list(map(float, spacing))).item())
    return dice, assd


# --------------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------------


@dataclass
class SegmentationScore:
    condition: str
    subject: str
    dice: float
    assd_mm: float
    label_voxels: int
    predicted_voxels: int


@dataclass
class SegmentationResult:
    """Per-subject scores of each training condition and what was used."""

    scores: list[SegmentationScore]
    train_subjects: list[str]
    test_subjects: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


CONDITION_NAMES = {
    "synthetic": "Trained on synthetic iUS (from MR)",
    "acquired": "Trained on acquired iUS (reference)",
    "sector": "Sector shape only, no image (control)",
}


def benchmark_segmentation(
    train_subjects: Sequence,
    test_subjects: Sequence,
    synthesize: Synthesizer,
    *,
    ultrasound: str = "us",
    settings: Optional[SegmentationSettings] = None,
    sector_control: bool = False,
    load=None,
    log: Callable[[str], None] = print,
) -> SegmentationResult:
    """Train on synthetic vs acquired ultrasound of ``train_subjects``, test on acquired of ``test_subjects``.

    A training subject needs an acquired ultrasound (for its field of view and the reference
    condition), at least one other modality (to synthesize from) and a segmentation; a test subject
    needs an ultrasound and a segmentation. Both conditions use the same training subjects, the same
    seed and the same schedule, so the difference is the images.

    ``sector_control`` adds a third network trained and tested on the sector mask alone (1 inside,
    0 outside): what can be learned from where the probe points, without any image. On the built-in
    cohort the probe is aimed at the tumour, so this control shows how much of a score is geometry.
    """
    settings = settings or SegmentationSettings()
    settings.validate()
    if load is None:
        from mmhvae.data.cohort import load_subject as load
    result = SegmentationResult(scores=[], train_subjects=[], test_subjects=[])
    synthetic_volumes: list[SegmentationVolume] = []
    acquired_volumes: list[SegmentationVolume] = []
    for subject in train_subjects:
        volumes = _usable(subject, ultrasound, True, load, result.skipped)
        if volumes is None:
            continue
        region = ultrasound_region(volumes.images[ultrasound])
        sources = [m for m in volumes.images if m != ultrasound]
        inputs = {m: nib.Nifti1Image(volumes.images[m], volumes.affine, volumes.header) for m in sources}
        log(f"  synthesizing {ultrasound} for {subject.name} from {'+'.join(sources)}")
        synthetic = np.asarray(synthesize(inputs, [ultrasound])[ultrasound].dataobj, dtype=np.float32)
        if synthetic.shape != volumes.shape:
            raise ValueError(
                f"synthesized {ultrasound} of {subject.name!r} has shape {synthetic.shape}, expected {volumes.shape}"
            )
        for images, array in ((synthetic_volumes, synthetic), (acquired_volumes, volumes.images[ultrasound])):
            images.append(prepare_volume(subject.name, array, volumes.seg, region, volumes.affine, settings.target))
        result.train_subjects.append(subject.name)
    test_volumes: list[SegmentationVolume] = []
    for subject in test_subjects:
        volumes = _usable(subject, ultrasound, False, load, result.skipped)
        if volumes is not None:
            region = ultrasound_region(volumes.images[ultrasound])
            test_volumes.append(prepare_volume(subject.name, volumes.images[ultrasound], volumes.seg, region,
                                               volumes.affine, settings.target))
            result.test_subjects.append(subject.name)
    if not synthetic_volumes:
        raise ValueError(f"no usable training subject (need {ultrasound}, another modality and a segmentation); "
                         f"skipped: {result.skipped}")
    if not test_volumes:
        raise ValueError(f"no usable test subject (need {ultrasound} and a segmentation); skipped: {result.skipped}")

    conditions = [("synthetic", synthetic_volumes, test_volumes), ("acquired", acquired_volumes, test_volumes)]
    if sector_control:
        sectors = ([_sector_only(v) for v in acquired_volumes], [_sector_only(v) for v in test_volumes])
        conditions.append(("sector", *sectors))
    for condition, volumes, tests in conditions:
        log(f"  {CONDITION_NAMES[condition]}: {len(volumes)} volumes")
        start = time.perf_counter()
        model = train_segmenter(volumes, settings, log)
        result.seconds[condition] = time.perf_counter() - start
        for v in tests:
            prediction = predict_volume(model, v, settings)
            dice, assd = dice_and_assd(prediction, v.label, v.spacing)
            result.scores.append(
                SegmentationScore(condition, v.name, dice, assd, int(v.label.sum()), int(prediction.sum()))
            )
    return result


def _sector_only(volume: SegmentationVolume) -> SegmentationVolume:
    """The volume with its image replaced by its sector mask (the geometry control)."""
    image = volume.region.astype(np.float32)
    return SegmentationVolume(volume.name, image, volume.label, volume.region, volume.spacing)


def _usable(subject, ultrasound: str, need_sources: bool, load, skipped: dict[str, str]):
    """The subject's volumes when it can serve (ultrasound with a sector, segmentation, sources), else None."""
    reason = _missing(subject, ultrasound, need_sources)
    volumes = None
    if not reason:
        volumes = load(subject)
        if not np.any(volumes.images[ultrasound]):
            reason = f"empty {ultrasound} (no field of view)"
    if reason:
        skipped[subject.name] = reason
        return None
    return volumes


def _missing(subject, ultrasound: str, need_sources: bool) -> str:
    if ultrasound not in subject.paths:
        return f"no acquired {ultrasound}"
    if subject.seg is None:
        return "no segmentation"
    if need_sources and not any(m != ultrasound for m in subject.paths):
        return f"no modality other than {ultrasound} to synthesize from"
    return ""


# --------------------------------------------------------------------------------------------------
# Reporting (paper Table 6 layout: median [interquartile range])
# --------------------------------------------------------------------------------------------------


def _median_iqr(values: Sequence[float], scale: float = 1.0) -> str:
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64) * scale
    if finite.size == 0:
        return "n/a"
    q1, q2, q3 = np.percentile(finite, [25, 50, 75])
    text = f"{q2:.1f} [{q1:.1f} - {q3:.1f}]"
    missing = len(values) - finite.size
    return text + (f" ({missing} undefined)" if missing else "")


def segmentation_table(result: SegmentationResult, title: str = "Built-in cohort") -> str:
    """Markdown table shaped like paper Table 6: Dice (%) and ASSD (mm), median [Q1 - Q3] over subjects."""
    lines = [
        f"| | {title} | |",
        "|---|---|---|",
        "| Training data | Dice Score (%) ↑ | ASSD (mm) ↓ |",
    ]
    for condition, name in CONDITION_NAMES.items():
        scores = [s for s in result.scores if s.condition == condition]
        if not scores:
            continue
        dice = _median_iqr([s.dice for s in scores], 100.0)
        assd = _median_iqr([s.assd_mm for s in scores])
        lines.append(f"| {name} | {dice} | {assd} |")
    return "\n".join(lines) + "\n"


def write_scores_csv(result: SegmentationResult, path: str | Path) -> None:
    """One row per (condition, test subject)."""
    from mmhvae.atomic import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(SegmentationScore.__dataclass_fields__))
            writer.writeheader()
            for score in result.scores:
                writer.writerow(asdict(score))

    atomic_write(Path(path), write)

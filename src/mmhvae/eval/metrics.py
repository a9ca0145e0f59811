"""Image-synthesis metrics (PSNR, SSIM 2D/3D, LPIPS) on volumes, and their accumulation (DESIGN §5).

Conventions, chosen once here so that every method is scored the same way:

* **Data range.** ``data_range=None`` (or ``0``, the config's "automatic") means the per-volume
  ``max - min`` of the *ground truth*; harmonized volumes start at 0, so this is their maximum.
  A positive float fixes the range for all volumes (e.g. ``1.0`` for images in [0, 1]).
* **Foreground.** Only slices holding foreground are scored (empty slices would score a perfect
  SSIM and inflate every method alike). Without a mask, foreground is every voxel that differs from
  the volume's padding value (:func:`background_value`). With a user mask (brain mask, ultrasound
  field of view) the slices are those the mask touches, and PSNR / SSIM are averaged over the mask
  voxels only; LPIPS always sees whole slices.
* **SSIM.** ``skimage.metrics.structural_similarity`` with its defaults (7×7 uniform window,
  sample covariance) on each 2D slice, then the mean over slices. The official MMHVAE code passed a
  whole volume with ``channel_axis=0``, which treats slices as colour channels of one image; we do
  not. ``ssim3d`` uses the same estimator with a 7×7×7 window on the foreground slab.
* **LPIPS.** AlexNet v0.1 (:mod:`mmhvae.eval.lpips`) per slice, with ``[lo, lo + data_range]``
  mapped to [-1, 1] (``lo`` = ground-truth minimum) and clipped; ``None`` when unavailable.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from skimage.metrics import structural_similarity

from mmhvae.eval.lpips import LPIPS


@dataclass(frozen=True)
class MetricSpec:
    """How a metric is shown: column label, direction, and display scale (SSIM/LPIPS in %)."""

    label: str
    higher_is_better: bool
    scale: float = 1.0


METRICS: dict[str, MetricSpec] = {
    "psnr": MetricSpec("PSNR (dB)", True),
    "ssim": MetricSpec("SSIM (%)", True, 100.0),
    "ssim3d": MetricSpec("SSIM-3D (%)", True, 100.0),
    "lpips": MetricSpec("LPIPS (%)", False, 100.0),
}


# --- data range and foreground -------------------------------------------------------------------


def resolve_data_range(target: np.ndarray, data_range: Optional[float] = None) -> float:
    """``data_range`` if positive, else the ground truth's ``max - min`` (see module docstring)."""
    if data_range is not None and data_range != 0:
        if data_range < 0 or not math.isfinite(data_range):
            raise ValueError(f"data_range must be a positive number, None or 0 (automatic), got {data_range}")
        return float(data_range)
    span = float(np.max(target) - np.min(target))
    if span <= 0:
        raise ValueError("the ground truth is constant, so its automatic data range is 0; pass data_range explicitly")
    return span


def foreground_slices(target: np.ndarray, axis: int = 0, foreground: Optional[np.ndarray] = None) -> np.ndarray:
    """Boolean ``(n_slices,)``: slices along ``axis`` holding foreground (the mask, else non-background voxels)."""
    fg = _foreground(target, foreground)
    other = tuple(a for a in range(target.ndim) if a != axis % target.ndim)
    return fg.any(axis=other)


def background_value(target: np.ndarray) -> float:
    """The padding value of a volume: the most frequent of its minimum, its first corner voxel and 0.

    ``target > min`` is not enough: resampled BraTS volumes keep a background of 0 but hold a few
    negative interpolation undershoots, so their minimum is not the background.
    """
    candidates = {float(np.min(target)), float(target.flat[0]), 0.0}
    return max(sorted(candidates), key=lambda v: int(np.count_nonzero(target == v)))


def _foreground(target: np.ndarray, foreground: Optional[np.ndarray]) -> np.ndarray:
    if foreground is None:
        return target != background_value(target)
    if foreground.shape != target.shape:
        raise ValueError(f"foreground mask shape {foreground.shape} differs from the volume shape {target.shape}")
    return foreground.astype(bool)


def _check_pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {target.shape}")
    if not (np.isfinite(pred).all() and np.isfinite(target).all()):
        raise ValueError("prediction or ground truth holds NaN or inf values")
    return pred, target


# --- PSNR / SSIM -----------------------------------------------------------------------------------


def psnr(pred: np.ndarray, target: np.ndarray, data_range: Optional[float] = None, mask: Optional[np.ndarray] = None) -> float:
    """``10 log10(data_range² / MSE)`` over all voxels, or over ``mask`` voxels; ``inf`` when equal.

    ``pred``, ``target`` and ``mask`` share any shape, e.g. a volume ``(D, H, W)``.
    """
    pred, target = _check_pair(pred, target)
    rng = resolve_data_range(target, data_range)
    if mask is not None:
        mask = _foreground(target, mask)
        if not mask.any():
            raise ValueError("PSNR mask selects no voxel")
        pred, target = pred[mask], target[mask]
    mse = float(np.mean((pred - target) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(rng**2 / mse)


def _ssim(
    pred: np.ndarray, target: np.ndarray, data_range: float, mask: Optional[np.ndarray], ssim_kwargs: Mapping[str, Any]
) -> float:
    """SSIM of one 2D or 3D image; with ``mask``, the mean of the SSIM map over the mask."""
    if mask is None:
        return float(structural_similarity(pred, target, data_range=data_range, **ssim_kwargs))
    _, ssim_map = structural_similarity(pred, target, data_range=data_range, full=True, **ssim_kwargs)
    return float(ssim_map[mask].mean())


def ssim2d_slices(
    pred_vol: np.ndarray,
    target_vol: np.ndarray,
    data_range: Optional[float] = None,
    axis: int = 0,
    slice_mask: Optional[np.ndarray] = None,
    foreground: Optional[np.ndarray] = None,
    ssim_kwargs: Optional[Mapping[str, Any]] = None,
) -> float:
    """Mean 2D SSIM over the scored slices of two volumes ``(D, H, W)`` sliced along ``axis``.

    ``slice_mask`` ``(n_slices,)`` picks the slices (default :func:`foreground_slices`);
    ``foreground`` (volume-shaped) restricts each slice's SSIM map to the mask. ``ssim_kwargs`` go
    to ``structural_similarity`` (e.g. ``gaussian_weights=True``); the data range is always ours.
    """
    pred_vol, target_vol = _check_pair(pred_vol, target_vol)
    rng = resolve_data_range(target_vol, data_range)
    chosen = _slice_indices(target_vol, axis, slice_mask, foreground)
    fg = None if foreground is None else _foreground(target_vol, foreground)
    scores = []
    for index in chosen:
        m = None if fg is None else np.take(fg, index, axis=axis)
        if m is not None and not m.any():
            continue  # a slice chosen by slice_mask may hold none of the user's mask
        pred_slice, target_slice = np.take(pred_vol, index, axis=axis), np.take(target_vol, index, axis=axis)
        scores.append(_ssim(pred_slice, target_slice, rng, m, ssim_kwargs or {}))
    if not scores:
        raise ValueError("no slice to score: the foreground is empty")
    return float(np.mean(scores))


def ssim3d(
    pred_vol: np.ndarray,
    target_vol: np.ndarray,
    data_range: Optional[float] = None,
    axis: int = 0,
    foreground: Optional[np.ndarray] = None,
    ssim_kwargs: Optional[Mapping[str, Any]] = None,
) -> float:
    """3D SSIM (7×7×7 window) on the slab from the first to the last foreground slice along ``axis``.

    The slab is widened to the 7 slices the window needs when the foreground is thinner.
    With ``foreground``, the SSIM map is averaged over the mask voxels only.
    """
    pred_vol, target_vol = _check_pair(pred_vol, target_vol)
    if pred_vol.ndim != 3:
        raise ValueError(f"ssim3d expects volumes (D, H, W), got shape {pred_vol.shape}")
    rng = resolve_data_range(target_vol, data_range)
    kwargs = dict(ssim_kwargs or {})
    win = int(kwargs.get("win_size") or 7)
    if min(pred_vol.shape) < win:
        raise ValueError(f"ssim3d needs every side >= the window ({win}), got shape {pred_vol.shape}")
    scored = np.flatnonzero(foreground_slices(target_vol, axis, foreground))
    if scored.size == 0:
        raise ValueError("no slice to score: the foreground is empty")
    first, last = int(scored[0]), int(scored[-1]) + 1
    missing = max(0, win - (last - first))
    first = max(0, min(first - missing // 2, pred_vol.shape[axis] - win))
    last = max(last, first + win)
    keep = np.arange(first, last)
    fg = None if foreground is None else np.take(_foreground(target_vol, foreground), keep, axis=axis)
    return _ssim(np.take(pred_vol, keep, axis=axis), np.take(target_vol, keep, axis=axis), rng, fg, kwargs)


def _slice_indices(
    target: np.ndarray, axis: int, slice_mask: Optional[np.ndarray], foreground: Optional[np.ndarray]
) -> np.ndarray:
    if slice_mask is None:
        slice_mask = foreground_slices(target, axis, foreground)
    slice_mask = np.asarray(slice_mask, dtype=bool)
    if slice_mask.shape != (target.shape[axis],):
        raise ValueError(f"slice_mask must have shape ({target.shape[axis]},) for axis {axis}, got {slice_mask.shape}")
    return np.flatnonzero(slice_mask)


# --- LPIPS over slices ---------------------------------------------------------------------------


@torch.no_grad()
def lpips_slices(
    model: Optional[LPIPS],
    pred_vol: np.ndarray,
    target_vol: np.ndarray,
    data_range: Optional[float] = None,
    axis: int = 0,
    slice_mask: Optional[np.ndarray] = None,
    foreground: Optional[np.ndarray] = None,
    batch_size: int = 16,
) -> Optional[float]:
    """Mean LPIPS over the scored slices of two volumes ``(D, H, W)``; ``None`` when ``model`` is None.

    Intensities ``[lo, lo + data_range]`` (``lo`` = ground-truth minimum) map to [-1, 1], clipped,
    so prediction and ground truth share one mapping. Slices smaller than AlexNet's 32×32 minimum
    (a small field of view, e.g. an ultrasound sector at a coarse spacing) are padded to 32 with the
    ground truth's minimum in both images, so the padding itself matches.
    """
    if model is None:
        return None
    pred_vol, target_vol = _check_pair(pred_vol, target_vol)
    rng = resolve_data_range(target_vol, data_range)
    lo = float(np.min(target_vol))
    chosen = _slice_indices(target_vol, axis, slice_mask, foreground)
    if chosen.size == 0:
        raise ValueError("no slice to score: the foreground is empty")
    device = next(model.parameters()).device

    def to_batch(vol: np.ndarray, idx: np.ndarray) -> torch.Tensor:
        slices = np.moveaxis(np.take(vol, idx, axis=axis), axis, 0)  # (n, H, W)
        scaled = np.clip(2.0 * (slices - lo) / rng - 1.0, -1.0, 1.0)
        short = [max(32 - n, 0) for n in scaled.shape[1:]]
        if any(short):
            scaled = np.pad(scaled, ((0, 0), (short[0] // 2, short[0] - short[0] // 2),
                                     (short[1] // 2, short[1] - short[1] // 2)), constant_values=-1.0)
        return torch.from_numpy(scaled.astype(np.float32))[:, None].to(device)

    parts = np.array_split(chosen, math.ceil(chosen.size / batch_size))
    scores = [model(to_batch(pred_vol, part), to_batch(target_vol, part)).cpu() for part in parts]
    return float(torch.cat(scores).double().mean())


def score_volume(
    pred_vol: np.ndarray,
    target_vol: np.ndarray,
    axis: int = 0,
    data_range: Optional[float] = None,
    foreground: Optional[np.ndarray] = None,
    lpips_model: Optional[LPIPS] = None,
    with_ssim3d: bool = True,
    with_lpips: bool = True,
) -> dict[str, Optional[float]]:
    """All metrics of one synthesized volume against its ground truth, both ``(D, H, W)``.

    Returns ``{"psnr", "ssim", "ssim3d"?, "lpips"?}``; ``lpips`` is ``None`` when ``lpips_model``
    is None (weights unavailable), so a table shows it as unavailable rather than as a number.
    PSNR is over the voxels of the scored slices (or over the ``foreground`` mask when given).
    """
    pred_vol, target_vol = _check_pair(pred_vol, target_vol)
    rng = resolve_data_range(target_vol, data_range)
    scored = foreground_slices(target_vol, axis, foreground)
    if not scored.any():
        raise ValueError("no slice to score: the ground truth has no foreground")
    region = np.zeros(target_vol.shape, dtype=bool)
    np.moveaxis(region, axis, 0)[scored] = True  # the voxels of the scored slices (a view into region)
    if foreground is not None:
        region &= _foreground(target_vol, foreground)
    scores: dict[str, Optional[float]] = {
        "psnr": psnr(pred_vol, target_vol, rng, mask=region),
        "ssim": ssim2d_slices(pred_vol, target_vol, rng, axis, scored, foreground),
    }
    if with_ssim3d:
        scores["ssim3d"] = ssim3d(pred_vol, target_vol, rng, axis, foreground)
    if with_lpips:
        scores["lpips"] = lpips_slices(lpips_model, pred_vol, target_vol, rng, axis, scored)
    return scores


# --- accumulation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricRecord:
    """One score: ``method`` on input ``subset`` (e.g. ``"us+t2"``) for ``target`` of ``subject``.

    ``value`` is ``None`` when the metric was unavailable (LPIPS without weights).
    """

    method: str
    subset: str
    target: str
    subject: str
    metric: str
    value: Optional[float]


class MetricAccumulator:
    """Per-subject scores, then mean (std) per (method, subset, target, metric) — MONAI-style.

    Adding the same (method, subset, target, subject, metric) twice is an error, so a subject
    cannot be counted twice by a re-run loop.
    """

    def __init__(self, records: Iterable[MetricRecord] = ()) -> None:
        self._records: dict[tuple[str, str, str, str, str], MetricRecord] = {}
        # (method, target, metric) -> records: tables query every cell, a scan each would be quadratic
        self._by_cell: dict[tuple[str, str, str], list[MetricRecord]] = defaultdict(list)
        for record in records:
            self._insert(record)

    def _insert(self, record: MetricRecord) -> None:
        key = (record.method, record.subset, record.target, record.subject, record.metric)
        if key in self._records:
            named = ", ".join(f"{k}={v}" for k, v in zip(("method", "subset", "target", "subject", "metric"), key))
            raise ValueError(f"duplicate score for {named}")
        self._records[key] = record
        self._by_cell[(record.method, record.target, record.metric)].append(record)

    def add(self, method: str, subset: str, target: str, subject: str, metric: str, value: Optional[float]) -> None:
        self._insert(MetricRecord(method, subset, target, subject, metric, None if value is None else float(value)))

    def add_scores(self, method: str, subset: str, target: str, subject: str, scores: Mapping[str, Optional[float]]) -> None:
        """Add every entry of a :func:`score_volume` result."""
        for metric, value in scores.items():
            self.add(method, subset, target, subject, metric, value)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> "MetricAccumulator":
        """Rebuild from :meth:`rows` (e.g. read back from CSV; empty values mean unavailable)."""
        records = []
        for row in rows:
            value = row["value"]
            value = None if value is None or value == "" else float(value)
            keys = (str(row[k]) for k in ("method", "subset", "target", "subject", "metric"))
            records.append(MetricRecord(*keys, value=value))
        return cls(records)

    @property
    def records(self) -> list[MetricRecord]:
        return list(self._records.values())

    def rows(self) -> list[dict[str, Any]]:
        """One dict per record, keys ``method, subset, target, subject, metric, value``."""
        return [asdict(r) for r in self._records.values()]

    def _distinct(self, field: str) -> list[str]:
        return list(dict.fromkeys(getattr(r, field) for r in self._records.values()))

    # The distinct methods, subsets, targets and metrics, in the order they were first added.
    methods = property(lambda self: self._distinct("method"))
    subsets = property(lambda self: self._distinct("subset"))
    targets = property(lambda self: self._distinct("target"))
    metrics = property(lambda self: self._distinct("metric"))

    def values(self, method: str, target: str, metric: str, subset: Optional[str] = None) -> dict[Any, float]:
        """Available values keyed by subject, or by ``(subset, subject)`` pooled over subsets when ``subset`` is None."""
        out: dict[Any, float] = {}
        for r in self._by_cell.get((method, target, metric), ()):
            if r.value is not None:
                if subset is None:
                    out[(r.subset, r.subject)] = r.value
                elif r.subset == subset:
                    out[r.subject] = r.value
        return out

    def summary(self, ddof: int = 0) -> list[dict[str, Any]]:
        """Mean, std (``ddof`` as numpy, default population), n and n_unavailable per cell."""
        groups: dict[tuple[str, str, str, str], list[Optional[float]]] = defaultdict(list)
        for r in self._records.values():
            groups[(r.method, r.subset, r.target, r.metric)].append(r.value)
        out = []
        for (method, subset, target, metric), vals in groups.items():
            nums = np.array([v for v in vals if v is not None], dtype=np.float64)
            mean, std = summarize(nums, ddof)
            n = int(nums.size)
            out.append(
                dict(method=method, subset=subset, target=target, metric=metric, mean=mean, std=std, n=n, n_unavailable=len(vals) - n)
            )
        return out


def summarize(values: Sequence[float] | np.ndarray, ddof: int = 0) -> tuple[Optional[float], Optional[float]]:
    """``(mean, std)`` of finite-or-inf values; ``(None, None)`` when empty; std 0 for one value."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return None, None
    std = float(arr.std(ddof=ddof)) if arr.size > ddof else 0.0
    return float(arr.mean()), std

"""Per-volume intensity harmonization (paper §4.4.1, DESIGN §3).

Every method is an affine map ``harmonized = (x - offset) * scale`` recorded in
:class:`HarmonizationParams`, so synthesized images can be mapped back to the scanner's range with
:func:`invert_harmonization`.

* ``wm-median`` (default, the paper's): ``offset`` = the volume minimum, ``scale`` such that the median
  intensity inside white matter (WM) equals ``cfg.wm_targets[modality]`` (T2 1/7, ceT1 1/5, FLAIR 1/3).
  The WM mask is supplied (e.g. SynthSeg) or estimated by :func:`estimate_wm_mask`.
* ``percentile``: the official code's min-max between two brain percentiles (0.5 and 99.5) -> [0, 1].
* ``none``: identity.
* Modalities listed in ``cfg.minmax_modalities`` (ultrasound) are always min-max scaled to [0, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from mmhvae.config import DataConfig
from mmhvae.errors import InputDataError
from mmhvae.data.foreground import background_value, foreground_mask

_RANKS = {"darkest": 0, "middle": 1, "brightest": 2}


class HarmonizationError(InputDataError):
    """Harmonization cannot be computed (no brain voxels, no WM rule or target for a modality, ...)."""


@dataclass
class HarmonizationParams:
    """``harmonized = (x - offset) * scale``; ``method`` is ``wm-median``, ``percentile``, ``minmax`` or ``none``."""

    offset: float
    scale: float
    method: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "HarmonizationParams":
        return cls(offset=float(data["offset"]), scale=float(data["scale"]), method=str(data["method"]))


def brain_mask_of(volume: np.ndarray, brain_mask: Optional[np.ndarray] = None) -> np.ndarray:
    """The brain voxels ``(X, Y, Z)``: the supplied mask, else the voxels that differ from the volume's
    constant background (:func:`~mmhvae.data.foreground.foreground_mask`: 0 for skull-stripped data,
    a negative constant for z-scored volumes).

    Images with skull or a noisy background need a supplied brain mask (``mask`` column).
    """
    if brain_mask is not None:
        mask = np.asarray(brain_mask, dtype=bool)
        if mask.shape != volume.shape:
            raise HarmonizationError(f"brain mask shape {mask.shape} differs from the image shape {volume.shape}")
    else:
        mask = foreground_mask(volume)
    if not mask.any():
        raise HarmonizationError("no brain voxels (empty brain mask, or no voxel > 0 in the image)")
    return mask


def clip_below_background(volume: np.ndarray) -> np.ndarray:
    """MR magnitudes do not go below the background: values under it are resampling ringing.

    The floor is the volume's constant background (0 for most data; the negative background of a
    z-scored volume, whose negative brain values are real) or 0 when it has none.
    """
    background = background_value(volume)
    floor = np.float32(0.0 if background is None else min(background, 0.0))
    return np.maximum(volume, floor)


def kmeans_1d(values: np.ndarray, classes: int = 3, iterations: int = 100) -> np.ndarray:
    """Sorted class centres of 1D k-means (Lloyd's algorithm from quantile starts), deterministic.

    Written out rather than using scikit-learn's KMeans: in one dimension it is a few lines, needs no
    random restarts, and avoids OpenMP start-up costs that dominate on small volumes.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    centres = np.quantile(values, (np.arange(classes) + 0.5) / classes)
    for _ in range(iterations):
        labels = np.digitize(values, (centres[1:] + centres[:-1]) / 2)
        counts = np.bincount(labels, minlength=classes)
        sums = np.bincount(labels, weights=values, minlength=classes)
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centres)
        if np.allclose(updated, centres, rtol=0, atol=1e-9 * (np.abs(centres).max() + 1)):
            break
        centres = np.sort(updated)
    return centres


def estimate_wm_mask(
    volume: np.ndarray, modality: str, cfg: DataConfig, brain_mask: Optional[np.ndarray] = None
) -> np.ndarray:
    """White matter by 3-class intensity clustering inside the brain, bool ``(X, Y, Z)``.

    1D k-means with three classes is fitted on a fixed random subsample of brain intensities clipped to
    ``cfg.wm_clip_percentiles``; every brain voxel then takes the nearest class centre, and the WM class
    is chosen among the classes sorted by intensity with ``cfg.wm_cluster_rule[modality]``.
    """
    rule = cfg.wm_cluster_rule.get(modality)
    if rule not in _RANKS:
        raise HarmonizationError(
            f"no white-matter rule for modality {modality!r} (got {rule!r}): set "
            f"data.wm_cluster_rule.{modality} to one of {list(_RANKS)}, supply a wm mask, or use "
            "data.harmonization=percentile"
        )
    brain = brain_mask_of(volume, brain_mask)
    values = volume[brain]
    lo, hi = np.percentile(values, cfg.wm_clip_percentiles)
    # A fixed seed makes the mask, hence the harmonized volume, reproducible.
    rng = np.random.default_rng(0)
    sample = values[rng.integers(0, values.size, min(cfg.wm_cluster_samples, values.size))]
    sample = np.clip(sample, lo, hi)
    if np.unique(sample).size < 3:
        raise HarmonizationError(f"{modality}: fewer than 3 distinct brain intensities, cannot find white matter")
    centres = kmeans_1d(sample, 3)
    thresholds = (centres[1:] + centres[:-1]) / 2  # 1D nearest-centre boundaries
    classes = np.digitize(np.clip(values, lo, hi), thresholds)
    wm = np.zeros(volume.shape, dtype=bool)
    wm[brain] = classes == _RANKS[rule]
    if not wm.any():
        raise HarmonizationError(f"{modality}: the white-matter class is empty")
    return wm


def _minmax(values: np.ndarray) -> tuple[float, float]:
    lo, hi = float(values.min()), float(values.max())
    return lo, (1.0 / (hi - lo) if hi > lo else 1.0)


def harmonize(
    volume: np.ndarray,
    modality: str,
    cfg: DataConfig,
    brain_mask: Optional[np.ndarray] = None,
    wm_mask: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, HarmonizationParams]:
    """Harmonize one volume ``(X, Y, Z)``; returns the float32 volume and its :class:`HarmonizationParams`.

    ``brain_mask`` restricts the percentile and WM statistics (default ``volume > 0``); ``wm_mask``
    overrides the estimated white matter for ``wm-median``.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if modality in cfg.minmax_modalities:
        offset, scale = _minmax(volume)
        method = "minmax"
    elif cfg.harmonization == "none":
        offset, scale, method = 0.0, 1.0, "none"
    else:
        if cfg.clip_negative:
            volume = clip_below_background(volume)
        if cfg.harmonization == "percentile":
            lo, hi = np.percentile(volume[brain_mask_of(volume, brain_mask)], cfg.percentiles)
            offset, scale = float(lo), (1.0 / float(hi - lo) if hi > lo else 1.0)
            method = "percentile"
        elif cfg.harmonization == "wm-median":
            offset, scale = _wm_median(volume, modality, cfg, brain_mask, wm_mask)
            method = "wm-median"
        else:
            raise HarmonizationError(
                f"data.harmonization={cfg.harmonization!r}: choose wm-median, percentile or none"
            )
    out = (volume - np.float32(offset)) * np.float32(scale)
    return out.astype(np.float32, copy=False), HarmonizationParams(float(offset), float(scale), method)


def _wm_median(
    volume: np.ndarray, modality: str, cfg: DataConfig,
    brain_mask: Optional[np.ndarray], wm_mask: Optional[np.ndarray],
) -> tuple[float, float]:
    target = cfg.wm_targets.get(modality)
    if target is None:
        raise HarmonizationError(
            f"no white-matter target for modality {modality!r}: set data.wm_targets.{modality} "
            f"(paper: t2 1/7, cet1 1/5, flair 1/3) or list it in data.minmax_modalities"
        )
    if wm_mask is None:
        wm_mask = estimate_wm_mask(volume, modality, cfg, brain_mask)
    wm_mask = np.asarray(wm_mask, dtype=bool)
    if wm_mask.shape != volume.shape or not wm_mask.any():
        raise HarmonizationError(f"{modality}: white-matter mask is empty or has the wrong shape {wm_mask.shape}")
    offset = float(volume.min())  # paper §4.4.1: the minimum goes to 0
    median = float(np.median(volume[wm_mask]))
    if median <= offset:
        raise HarmonizationError(f"{modality}: white-matter median {median:g} is not above the minimum {offset:g}")
    return offset, float(target) / (median - offset)


def invert_harmonization(volume: np.ndarray, params: HarmonizationParams) -> np.ndarray:
    """Back to the original intensity range: ``x = harmonized / scale + offset`` (float32, same shape)."""
    volume = np.asarray(volume, dtype=np.float32)
    return (volume / np.float32(params.scale) + np.float32(params.offset)).astype(np.float32, copy=False)


MIN_CONSENSUS_AGREEMENT = 0.3  # Dice of the single-contrast WM masks below which they disagree


class HarmonizationWarning(UserWarning):
    """The white-matter estimate of a subject is doubtful (its harmonized targets may be off)."""


def check_agreement(subject: str, sources: str, masks: list[np.ndarray], has_brain_mask: bool) -> None:
    """Warn when the single-contrast white-matter masks of a consensus (``t1+t2``) disagree.

    Two contrasts of one brain find nearly the same white matter (Dice 0.5-0.85 on the real cases);
    when they do not, one clustering picked another tissue, most often scalp fat or skull left in an
    image without a brain mask, and the harmonized intensities of that subject are wrong.
    """
    agreement = _agreement(masks)
    if agreement < MIN_CONSENSUS_AGREEMENT:
        import warnings

        hint = ("check the brain mask" if has_brain_mask else
                "the images probably contain skull or scalp: give a brain mask (a 'mask' column)")
        warnings.warn(
            f"subject {subject!r}: the white-matter masks of {sources} disagree (Dice {agreement:.2f}); "
            f"its harmonized targets are unreliable: {hint}, or a white-matter mask ('wm' column)",
            HarmonizationWarning, stacklevel=3,
        )


def _agreement(masks: list[np.ndarray]) -> float:
    """Smallest pairwise Dice overlap of boolean masks (1 for a single mask)."""
    worst = 1.0
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            a, b = masks[i], masks[j]
            total = int(a.sum()) + int(b.sum())
            worst = min(worst, 2.0 * int(np.logical_and(a, b).sum()) / total if total else 0.0)
    return worst


def harmonize_subject(volumes, cfg: DataConfig) -> tuple[dict[str, np.ndarray], dict[str, HarmonizationParams]]:
    """Harmonize every image of a :class:`~mmhvae.data.cohort.SubjectVolumes`.

    The WM mask of modality ``m`` is the subject's ``wm`` map if any; else the first alternative of
    ``cfg.wm_reference[m]`` whose modalities the subject has (``"t1+t2"``: the intersection of the T1
    and T2 masks); else ``m``'s own clustering rule. Each single-modality mask is estimated once and
    shared (all images are on one grid). Errors name the subject and modality.
    """
    images: dict[str, np.ndarray] = {}
    params: dict[str, HarmonizationParams] = {}
    estimated: dict[str, np.ndarray] = {}

    def own_mask(modality: str) -> np.ndarray:
        if modality not in estimated:
            volume = volumes.images[modality]
            if cfg.clip_negative:
                volume = clip_below_background(volume)
            estimated[modality] = estimate_wm_mask(volume, modality, cfg, volumes.brain_mask)
        return estimated[modality]

    def wm_for(modality: str) -> Optional[np.ndarray]:
        if volumes.wm_mask is not None:
            return volumes.wm_mask
        for alternative in cfg.wm_reference.get(modality, []):
            sources = [s.strip() for s in alternative.split("+") if s.strip()]
            if sources and all(s in volumes.images and s in cfg.wm_cluster_rule for s in sources):
                masks = [own_mask(s) for s in sources]
                mask = np.logical_and.reduce(masks)
                check_agreement(volumes.name, alternative, masks, volumes.brain_mask is not None)
                if mask.any():
                    return mask
        if modality in cfg.wm_cluster_rule:
            return own_mask(modality)
        return None  # harmonize() reports the missing rule for this modality

    for modality, volume in volumes.images.items():
        try:
            wm = None
            if cfg.harmonization == "wm-median" and modality not in cfg.minmax_modalities:
                wm = wm_for(modality)
            images[modality], params[modality] = harmonize(volume, modality, cfg, volumes.brain_mask, wm)
        except HarmonizationError as exc:
            raise HarmonizationError(f"subject {volumes.name!r}, {modality}: {exc}") from None
    return images, params

"""Reference baselines that make a synthesis table readable (issue 18).

A learned synthesizer is only worth using if it beats what needs no learning at all:

* ``mean-image`` - **predict the mean image**: for each target, the voxel-wise mean of the training
  subjects' harmonized target, position-matched to the test subject (each training volume's
  foreground box is resampled onto the test subject's foreground box), masked to the test subject's
  foreground like the models' outputs. It ignores the inputs entirely: a method that does not beat
  it has learned nothing about the subject.
* ``nearest-contrast`` - **copy the nearest contrast**: for each target, the single available input
  whose copy is best, after histogram matching it to the target's *training* intensity distribution
  (pooled foreground quantiles of the harmonized target over the training subjects). "Best" is
  ranked once on the **training subjects** (mean SSIM of the matched copy against the harmonized
  truth), never on test subjects; for a given input subset the highest-ranked source in it is copied.
  When the target itself is an input this is the harmonization-by-histogram of that input.

Both are scored exactly as :func:`mmhvae.eval.runner.evaluate_checkpoints` scores a model (whole
planes of the model's frame, foreground slices, the same data range, masking and metrics), and
return rows in the evaluator's format, so they can share one Table 1 with the trained methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

from mmhvae.config import DataConfig, EvalConfig
from mmhvae.subsets import subset_name, subsets_of

MEAN_IMAGE = "mean-image"
NEAREST_CONTRAST = "nearest-contrast"
REFERENCES = (MEAN_IMAGE, NEAREST_CONTRAST)
_QUANTILES = np.linspace(0.0, 1.0, 1001)


@dataclass
class Planes:
    """One subject as whole planes of the model's frame: inputs, harmonized targets, foreground."""

    name: str
    inputs: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    foreground: np.ndarray  # bool, (K, H, W)


def subject_planes(pre) -> Planes:
    """:class:`Planes` of a :class:`~mmhvae.data.dataset.PreprocessedSubject`."""
    sl = pre.slices
    fg = sl.plane_stack(sl.foreground.astype(np.float32)) > 0.5
    return Planes(
        pre.meta["subject"],
        {m: sl.plane_stack(v) for m, v in pre.inputs.items()},
        {m: sl.plane_stack(v) for m, v in pre.targets.items()},
        fg,
    )


def histogram_match(image: np.ndarray, foreground: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """``image``'s foreground voxels mapped rank-for-rank onto ``quantiles`` (0 outside the foreground)."""
    out = np.zeros(image.shape, dtype=np.float32)
    vals = image[foreground]
    if vals.size == 0:
        return out
    order = np.argsort(vals, kind="stable")
    ranks = np.empty(vals.size, dtype=np.float64)
    ranks[order] = np.arange(vals.size) / max(vals.size - 1, 1)
    out[foreground] = np.interp(ranks, _QUANTILES, quantiles).astype(np.float32)
    return out


def _bbox(mask: np.ndarray) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    if not idx[0].size:
        return tuple(slice(0, n) for n in mask.shape)
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)


def position_matched(source: np.ndarray, source_fg: np.ndarray, target_fg: np.ndarray) -> np.ndarray:
    """``source`` with its foreground box resampled (linearly) onto ``target_fg``'s box."""
    from scipy.ndimage import zoom

    sbox, tbox = _bbox(source_fg), _bbox(target_fg)
    crop = np.where(source_fg, source, 0.0)[sbox].astype(np.float32)
    shape = tuple(s.stop - s.start for s in tbox)
    factors = [t / c for t, c in zip(shape, crop.shape)]
    moved = zoom(crop, factors, order=1, mode="nearest", grid_mode=True)
    out = np.zeros(target_fg.shape, dtype=np.float32)
    moved = moved[tuple(slice(0, n) for n in shape)]
    out[tuple(slice(s.start, s.start + n) for s, n in zip(tbox, moved.shape))] = moved
    return out


@dataclass
class ReferenceModel:
    """What the two baselines learned from the training subjects."""

    quantiles: dict[str, np.ndarray] = field(default_factory=dict)  # target -> training intensity quantiles
    ranking: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # target -> [(source, train SSIM)]
    training: list[Planes] = field(default_factory=list)

    def mean_image(self, target: str, foreground: np.ndarray) -> Optional[np.ndarray]:
        stacks = [position_matched(p.targets[target], p.foreground, foreground)
                  for p in self.training if target in p.targets]
        if not stacks:
            return None
        return np.where(foreground, np.mean(stacks, axis=0), 0.0).astype(np.float32)

    def nearest(self, target: str, given: Sequence[str]) -> Optional[str]:
        """The highest-ranked (on training subjects) source among ``given``."""
        for source, _ in self.ranking.get(target, []):
            if source in given:
                return source
        return None

    def copy(self, target: str, source: str, planes: Planes) -> np.ndarray:
        return histogram_match(planes.inputs[source], planes.foreground, self.quantiles[target])


def fit_references(training: Sequence[Planes], modalities: Sequence[str], data_range: Optional[float] = None) -> ReferenceModel:
    """Training quantiles per target and, per target, the sources ranked by mean training SSIM."""
    from mmhvae.eval.metrics import score_volume

    ref = ReferenceModel(training=list(training))
    for t in modalities:
        vals = [p.targets[t][p.foreground] for p in training if t in p.targets]
        vals = [v for v in vals if v.size]
        if not vals:
            continue
        ref.quantiles[t] = np.quantile(np.concatenate(vals), _QUANTILES).astype(np.float32)
    for t in ref.quantiles:
        ranked = []
        for s in modalities:
            scores = []
            for p in training:
                if s in p.inputs and t in p.targets and p.foreground.any():
                    copy = histogram_match(p.inputs[s], p.foreground, ref.quantiles[t])
                    try:
                        scores.append(score_volume(copy, p.targets[t], axis=0, data_range=data_range,
                                                   with_ssim3d=False, with_lpips=False)["ssim"])
                    except ValueError:  # no foreground slice in the truth
                        continue
            if scores:
                ranked.append((s, float(np.mean(scores))))
        ref.ranking[t] = sorted(ranked, key=lambda x: -x[1])
    return ref


def score_references(
    ref: ReferenceModel,
    test: Sequence[Planes],
    modalities: Sequence[str],
    eval_cfg: EvalConfig,
    lpips_model=None,
    methods: Sequence[str] = REFERENCES,
) -> tuple[list[dict], dict[str, dict[str, dict[str, np.ndarray]]]]:
    """Rows (evaluator format) of the reference baselines on ``test``, and their predictions
    ``{method: {subject: {"subset->target": planes}}}`` for the pictures (the all-but-target subsets)."""
    from mmhvae.eval.metrics import MetricAccumulator, score_volume

    acc = MetricAccumulator()
    data_range = eval_cfg.data_range or None
    pictures: dict[str, dict[str, dict[str, np.ndarray]]] = {m: {} for m in methods}
    for planes in test:
        avail = [m in planes.targets for m in modalities]
        means = {t: ref.mean_image(t, planes.foreground) for t in planes.targets}
        for subset in subsets_of(avail):
            given = [m for m, b in zip(modalities, subset) if b]
            sname = subset_name(subset, modalities)
            for t in planes.targets:
                preds = {}
                if MEAN_IMAGE in methods and means[t] is not None:
                    preds[MEAN_IMAGE] = means[t]
                source = ref.nearest(t, given) if t in ref.quantiles else None
                if NEAREST_CONTRAST in methods and source is not None:
                    preds[NEAREST_CONTRAST] = ref.copy(t, source, planes)
                for name, pred in preds.items():
                    try:
                        scores = score_volume(pred, planes.targets[t], axis=0, data_range=data_range,
                                              lpips_model=lpips_model, with_ssim3d=eval_cfg.ssim_3d,
                                              with_lpips=eval_cfg.lpips)
                    except ValueError:
                        continue
                    acc.add_scores(name, sname, t, planes.name, scores)
                    if set(given) == set(planes.targets) - {t} or (len(planes.targets) == 1 and t in given):
                        pictures[name].setdefault(planes.name, {})[f"{sname}->{t}"] = pred
    return acc.rows(), pictures


def ranking_markdown(ref: ReferenceModel) -> str:
    """Which input ``nearest-contrast`` copies for each target (ranked on training subjects)."""
    lines = ["| Target | sources ranked on the training subjects (mean SSIM % of the matched copy) |", "|---|---|"]
    for t, ranked in ref.ranking.items():
        lines.append(f"| {t} | " + ", ".join(f"{s} {100 * v:.1f}" for s, v in ranked) + " |")
    return "\n".join(lines) + "\n"


__all__ = [
    "MEAN_IMAGE", "NEAREST_CONTRAST", "REFERENCES", "Planes", "ReferenceModel", "fit_references",
    "histogram_match", "position_matched", "ranking_markdown", "score_references", "subject_planes",
]

"""Evaluate trained models on a cohort split: every input subset x every target (paper Table 1).

For each subject of the split, each checkpoint synthesizes every available modality from every
non-empty subset of the subject's available modalities (2^|r| - 1 subsets; 2^M - 1 for complete
subjects), on the foreground slices used in training: the model reads the inputs as acquired (scaled
per image) and is scored against the harmonized targets, so a target that is also an input is a
harmonization task (● in the table), a missing one a synthesis task (○), as in the paper's Table 1.
Scores are per subject (PSNR,
SSIM 2D per slice, SSIM 3D over the slice stack, LPIPS); tables give mean (std) over subjects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from mmhvae.config import EvalConfig
from mmhvae.subsets import subset_name, subsets_of


@dataclass
class EvaluationReport:
    rows: list[dict]
    table_markdown: str
    out_dir: Path
    figures: list[Path] = field(default_factory=list)

    def mean(self, metric: str, method: Optional[str] = None, target: Optional[str] = None) -> float:
        vals = [r["value"] for r in self.rows if r["metric"] == metric and r["value"] is not None
                and (method is None or r["method"] == method) and (target is None or r["target"] == target)]
        return float(np.mean(vals)) if vals else float("nan")


def synthesize_slices(
    model, inputs: Mapping[str, np.ndarray], temperature: Optional[float], batch_size: int = 16,
    targets: Optional[Sequence[str]] = None, seed: Optional[int] = None,
) -> dict[str, np.ndarray]:
    """``{modality: (N, H, W)}`` input slices -> ``{target: (N, H, W)}`` synthesized (harmonized) slices."""
    from mmhvae.models.protocol import synthesize_batched

    out = synthesize_batched(model, inputs, temperature, batch_size, targets, samples=1, seed=seed)
    return {t: v[0] for t, v in out.items()}


@torch.no_grad()
def _latent_z1(model, inputs: Mapping[str, np.ndarray], index: int) -> Optional[np.ndarray]:
    """z_1 ``(C, H, W)`` of one slice at temperature 0, or None for models without spatial latents."""
    mods = list(model.cfg.modalities)
    ref = next(iter(inputs.values()))
    images = torch.zeros(1, len(mods), *ref.shape[1:])
    observed = torch.zeros(1, len(mods), dtype=torch.bool)
    for m, v in inputs.items():
        images[0, mods.index(m)] = torch.from_numpy(np.ascontiguousarray(v[index]))
        observed[0, mods.index(m)] = True
    network = model.network
    device = next(network.parameters()).device
    out = network(images.to(device), observed.to(device), temperature=0.0)
    if not out.latents or out.latents[0].dim() != 4:
        return None
    return out.latents[0][0].float().cpu().numpy()


def evaluate_checkpoints(
    checkpoints: Mapping[str, str | Path],
    cohort_source: str | Path,
    split: str,
    out_dir: str | Path,
    eval_cfg: Optional[EvalConfig] = None,
    max_subjects: Optional[int] = None,
    figures: bool = True,
    progress: bool = True,
    device: str = "cpu",
) -> EvaluationReport:
    """Score each checkpoint (``{method name: path}``) on ``split`` and write CSV, Markdown and PNGs.

    Writes ``metrics.csv`` (one row per method, subject, subset, target, metric), ``summary.csv``
    (mean/std), ``table.md`` (paper Table 1 layout; with several methods, the best per column in bold
    and paired Wilcoxon + Bonferroni marks) and, with ``figures``, qualitative grids, a temperature
    sweep and the z_1 PCA for the first subject.
    """
    from mmhvae.data.dataset import preprocess_subject
    from mmhvae.eval.lpips import load_lpips
    from mmhvae.eval.metrics import MetricAccumulator

    if not checkpoints:
        raise ValueError("no checkpoint to evaluate")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models, modalities = _load_models(checkpoints, device)
    eval_cfg = eval_cfg or next(iter(models.values())).config.eval
    lpips_model = load_lpips() if eval_cfg.lpips else None
    subjects = _select_subjects(cohort_source, split, modalities, models, max_subjects)
    acc = MetricAccumulator()
    made: list[Path] = []
    work = [(name, s) for name in models for s in subjects]
    iterator = work
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(work, desc="evaluate", unit="subject")
    cached = {}
    for name, subject in iterator:
        model = models[name]
        key = (id(model.config.data), subject.name)
        if key not in cached:
            cached[key] = preprocess_subject(subject, model.config.data, modalities, model.cfg.image_size)
        pre = cached[key]
        avail = [m in pre.targets for m in modalities]
        if not any(avail):
            continue
        grid_rows, truth = _score_subject(model, name, subject.name, pre, modalities, avail, eval_cfg, lpips_model, acc)
        if figures and subject is subjects[0]:
            given = {m: pre.slices.plane_stack(pre.inputs[m]) for m in pre.inputs}
            made += _figures(model, name, pre, modalities, avail, grid_rows, given, truth, out_dir, eval_cfg)
    text = _write_tables(acc, out_dir, modalities, list(models), split, cohort_source, len(subjects), eval_cfg,
                         lpips_model is not None)
    return EvaluationReport(acc.rows(), text, out_dir, made)


def _load_models(checkpoints: Mapping[str, str | Path], device: str):
    """``{name: TrainedModel}`` and their modalities (one list for all: compare like with like)."""
    from mmhvae.checkpoint import load_trained

    models = {name: load_trained(path, device) for name, path in checkpoints.items()}
    modalities = list(next(iter(models.values())).cfg.modalities)
    for name, model in models.items():
        if list(model.cfg.modalities) != modalities:
            raise ValueError(f"{name}: modalities {model.cfg.modalities} differ from {modalities}; compare like with like")
    return models, modalities


def _select_subjects(cohort_source, split: str, modalities: list[str], models, max_subjects: Optional[int]):
    """The split's subjects (the first ``max_subjects``); warns when models trained with brain masks
    meet subjects without one."""
    from mmhvae.data.cohort import Cohort

    cohort = Cohort.load(cohort_source, modalities=modalities)
    subjects = cohort.select(split)
    if not subjects:
        raise ValueError(f"{cohort_source}: no subject in split {split!r}")
    unmasked = [s.name for s in subjects if s.brain_mask is None]
    trained_masked = [n for n, m in models.items() if getattr(m.config.data, "trained_with_masks", False)]
    if unmasked and trained_masked:
        import warnings

        warnings.warn(
            f"{', '.join(trained_masked)} trained with brain masks, but {len(unmasked)} subject(s) of "
            f"{cohort_source} have no 'mask' column entry (e.g. {unmasked[0]}): their inputs are scaled over "
            "the non-background voxels instead", stacklevel=3,
        )
    return subjects[:max_subjects] if max_subjects else subjects


def _score_subject(model, name: str, subject: str, pre, modalities, avail, eval_cfg: EvalConfig, lpips_model, acc):
    """Synthesize every available target from every subset of one subject's inputs and score it into
    ``acc``; returns the grid rows ``[(subset, {target: planes})]`` and the ground-truth planes."""
    from mmhvae.eval.metrics import score_volume

    grid_rows = []
    # Scores and pictures are of whole slices of the model's frame: tiles blended back together.
    truth = {m: pre.slices.plane_stack(pre.targets[m]) for m in pre.targets}
    inside = None
    if getattr(model.config.data, "mask_outputs", False):  # synthesis is 0 outside the foreground
        inside = pre.slices.plane_stack(pre.slices.foreground.astype(np.float32)) > 0.5
    targets = [m for m, a in zip(modalities, avail) if a]
    for subset in subsets_of(avail):
        inputs = {m: pre.inputs[m] for m, b in zip(modalities, subset) if b}
        synth = synthesize_slices(model, inputs, eval_cfg.temperature, eval_cfg.batch_size, targets, seed=0)
        sname = subset_name(subset, modalities)
        planes = {t: pre.slices.plane_stack(synth[t]) for t in targets}
        if inside is not None:
            planes = {t: np.where(inside, p, np.float32(0)) for t, p in planes.items()}
        for t in targets:
            scores = score_volume(planes[t], truth[t], axis=0, data_range=eval_cfg.data_range or None,
                                  lpips_model=lpips_model, with_ssim3d=eval_cfg.ssim_3d, with_lpips=eval_cfg.lpips)
            acc.add_scores(name, sname, t, subject, scores)
        grid_rows.append((sname, planes))
    return grid_rows, truth


def _write_tables(acc, out_dir: Path, modalities, methods, split, cohort_source, n_subjects: int,
                  eval_cfg: EvalConfig, with_lpips: bool) -> str:
    """``metrics.csv``, ``summary.csv`` and ``table.md`` (header + paper Table 1); returns the table text."""
    from mmhvae.atomic import atomic_write_text
    from mmhvae.eval.tables import paper_table, write_csv

    rows = acc.rows()
    write_csv(rows, out_dir / "metrics.csv")
    write_csv(acc.summary(), out_dir / "summary.csv")
    metrics = ["psnr", "ssim"] + (["ssim3d"] if eval_cfg.ssim_3d else []) + (["lpips"] if eval_cfg.lpips else [])
    present = {r["target"] for r in rows}
    table = paper_table(acc, modalities=modalities, targets=[m for m in modalities if m in present],
                        metrics=[m for m in metrics if m != "ssim3d"], methods=methods)
    data_range = eval_cfg.data_range or None
    header = (
        f"# Synthesis on split '{split}' of {cohort_source}\n\n"
        f"{n_subjects} subjects; temperature {eval_cfg.temperature}; data range "
        f"{'per-volume (max - min) of the ground truth' if data_range is None else data_range}; "
        f"foreground slices only. Inputs as acquired (scaled per image), targets harmonized: a target "
        f"marked ● is harmonized from itself, ○ is synthesized. SSIM and LPIPS in %. LPIPS: "
        f"{'AlexNet v0.1' if with_lpips else 'unavailable (weights could not be obtained)'}.\n\n"
    )
    atomic_write_text(out_dir / "table.md", header + table + "\n")
    return header + table


def _figures(model, method, pre, modalities, avail, grid_rows, given_planes, truth_planes, out_dir: Path,
             eval_cfg: EvalConfig) -> list[Path]:
    from mmhvae.eval.figures import latent_pca, subset_grid, temperature_sweep

    made = []
    targets = [m for m, a in zip(modalities, avail) if a]
    middle = len(pre.slices.indices) // 2  # the middle foreground slice of the frame, all tiles
    truth = {m: truth_planes[m][middle] for m in targets}
    given = {m: given_planes[m][middle] for m in targets}
    rows = [(s, {t: planes[t][middle] for t in targets}) for s, planes in grid_rows]
    made.append(subset_grid(given, rows, truth, out_dir / f"grid_{method}_{pre.meta['subject']}.png",
                            modalities=targets, targets=targets,
                            title=f"{method}: {pre.meta['subject']}, slice {int(pre.slices.indices[middle])}"))
    n = next(iter(pre.targets.values())).shape[0]
    mid = n // 2  # one model-sized slice (of a tile) for the sweep and the latents
    # Temperature sweep (paper Fig. 5): the first available modality -> the others.
    source = targets[0]
    others = [t for t in targets if t != source]
    if others:
        sweep = {}
        for tau in (0.0, 0.3, 0.5, 0.7, 1.0):
            samples = [synthesize_slices(model, {source: pre.inputs[source][mid : mid + 1]}, tau,
                                         targets=[others[0]], seed=k)[others[0]][0] for k in range(3)]
            sweep[tau] = np.stack(samples)
        made.append(temperature_sweep(sweep, out_dir / f"temperature_{method}_{source}_to_{others[0]}.png",
                                      title=f"{method}: {source} -> {others[0]}",
                                      conditioning={source: pre.inputs[source][mid]},
                                      ground_truth=pre.targets[others[0]][mid]))
    # Latent alignment (paper Fig. 4): z_1 from all inputs and from each single modality.
    subsets = [tuple(avail)] + [tuple(m == t for m in modalities) for t in targets]
    latents = {}
    for s in dict.fromkeys(subsets):
        z = _latent_z1(model, {m: pre.inputs[m] for m, b in zip(modalities, s) if b}, mid)
        if z is None:
            return made
        latents[subset_name(s, modalities)] = z
    latent_pca(latents, out_dir / f"latent_pca_{method}.png")
    made.append(out_dir / f"latent_pca_{method}.png")
    return made


__all__ = ["EvaluationReport", "evaluate_checkpoints", "synthesize_slices"]

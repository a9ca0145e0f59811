"""Train and evaluate several methods under one budget, and tabulate them like the paper (Tables 1-4).

:func:`run_comparison` is what ``mmhvae benchmark compare`` runs:

1. every method (:mod:`mmhvae.methods`) is configured from the same preset (and overrides), cohort,
   step budget and seed, and trained into ``OUT/runs/<method>`` (a rerun resumes unfinished runs and
   skips finished ones); ``jobs > 1`` trains that many methods at once in separate processes; a method
   whose resolved model and training configuration is identical to an earlier one (``L7`` and ``L5``
   on the small preset are both the full ``mmhvae``) is not trained or evaluated twice: it shares
   that method's checkpoint and scores, and the report says so;
2. all best checkpoints are evaluated together on one split (``OUT/eval``: per-subject CSV and the
   evaluator's own tables);
3. ``OUT/comparison.md`` gathers: Table 1 (all methods, every input subset, Average rows, best in
   bold, Wilcoxon + Bonferroni daggers), the ablation tables in the layout of paper Tables 2-4
   (scores pooled over every input subset and subject, one row per variant), and the compute table
   (parameters, MACs, latency per method at the same image size), and the training curves
   (validation PSNR against step per method, table and ``OUT/training_curves.png``), which tell
   whether a method had converged within the budget.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from mmhvae.config import ExperimentConfig
from mmhvae.methods import METHODS, apply_method

# Ablation tables: (title, methods in row order, the method playing "ours" in that table).
ABLATIONS = (
    ("Table 2 - number of latent groups (depth ablation)", ("L1", "L2", "L3", "L5", "L7"), None),
    ("Table 3 - fusion of the modalities", ("concat-zeros", "average"), "mmhvae"),
    ("Table 4 - GAN loss", ("no-gan",), "mmhvae"),
)
METRIC_ORDER = ("psnr", "ssim", "lpips")


@dataclass
class ComparisonResult:
    """Where a comparison left its outputs."""

    out_dir: Path
    checkpoints: dict[str, Path]
    rows: list[dict[str, Any]]
    compute_rows: list[dict[str, Any]]
    markdown: Path
    train_seconds: dict[str, float] = field(default_factory=dict)
    same_as: dict[str, str] = field(default_factory=dict)


def config_key(cfg: ExperimentConfig) -> str:
    """What decides a trained model: the resolved config without its name (YAML text)."""
    import yaml

    data = cfg.to_dict()
    data.pop("name", None)
    return yaml.safe_dump(data, sort_keys=True)


def duplicate_methods(configs: Mapping[str, ExperimentConfig]) -> dict[str, str]:
    """``{method: earlier method with the identical configuration}`` for every repeated configuration."""
    first: dict[str, str] = {}
    same: dict[str, str] = {}
    for name, cfg in configs.items():
        key = config_key(cfg)
        if key in first:
            same[name] = first[key]
        else:
            first[key] = name
    return same


def _finished_step(run_dir: Path) -> int:
    """Training steps recorded in a run's ``last.safetensors`` (0 if none)."""
    last = Path(run_dir) / "checkpoints" / "last.safetensors"
    if not last.is_file():
        return 0
    from mmhvae.checkpoint import CheckpointError

    try:
        return _checkpoint_step(last)
    except CheckpointError:  # unreadable: let the trainer's resume report it
        return 0


def _train_one(cfg: ExperimentConfig, run_dir: str, threads: Optional[int], progress: bool) -> tuple[str, float]:
    """Train one method (in this process or a worker); returns (best checkpoint, training seconds).

    The training time is the trainer's, summed over resumed sessions (it lives in the training state),
    recorded in ``RUN/train_seconds.txt``; a finished run is not touched and reports its recorded time.
    """
    import torch

    from mmhvae.train.trainer import train

    run_dir_p = Path(run_dir)
    record = run_dir_p / "train_seconds.txt"
    best = run_dir_p / "checkpoints" / "best.safetensors"
    if _finished_step(run_dir_p) >= cfg.train.steps and best.is_file() and record.is_file():
        return str(best), float(record.read_text())
    if threads:
        torch.set_num_threads(threads)
    result = train(cfg, run_dir_p, resume=(run_dir_p / "checkpoints").is_dir(), progress=progress)
    from mmhvae.atomic import atomic_write_text

    atomic_write_text(record, f"{result.train_seconds:.3f}\n")
    return str(result.best_checkpoint), result.train_seconds


def method_configs(base: ExperimentConfig, methods: Sequence[str]) -> dict[str, ExperimentConfig]:
    """One config per method, all from ``base`` (same data, budget, seed and evaluation)."""
    return {m: apply_method(base, m) for m in methods}


def run_comparison(
    base: ExperimentConfig,
    methods: Sequence[str],
    out_dir: Path,
    split: str = "test",
    progress: bool = True,
    compute: bool = True,
    figures: bool = False,
    log=print,
    jobs: int = 1,
    threads: Optional[int] = None,
) -> ComparisonResult:
    """Train every method of ``methods`` on ``base`` (cohort, steps and seed already set), evaluate, tabulate.

    Args:
        base: the shared configuration; ``base.data.cohort`` names the cohort.
        methods: method names from :data:`mmhvae.methods.METHODS`.
        out_dir: comparison folder (created).
        split: cohort split to evaluate on.
        compute: also measure parameters, MACs and latency (on ``base.train.device``; auto = CUDA if present).
        figures: also draw the evaluator's qualitative figures for the first test subject.
        jobs: methods trained at once, each in its own process (CPU: give each ``threads`` threads,
            ``jobs * threads`` <= cores; one GPU is shared by all jobs).
        threads: torch threads per training process (default: torch's).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(base.train.device)
    configs = method_configs(base, methods)
    same_as = duplicate_methods(configs)
    for name, twin in same_as.items():
        log(f"[compare] {name} has the same configuration as {twin}: sharing its checkpoint and scores")
    todo = {n: c for n, c in configs.items() if n not in same_as}
    checkpoints, seconds = _train_all(todo, out_dir / "runs", jobs, threads, progress, log)
    scored = _evaluate(checkpoints, base, out_dir / "eval", split, figures, progress, device, log)
    rows = list(scored)
    for name, twin in same_as.items():
        rows += [{**r, "method": name} for r in scored if r["method"] == twin]
        checkpoints[name] = checkpoints[twin]
        seconds[name] = 0.0
    checkpoints = {n: checkpoints[n] for n in configs}
    compute_rows = _compute_rows(configs, device) if compute else []
    curves = read_curves({n: out_dir / "runs" / same_as.get(n, n) for n in configs})
    if any(curves.values()):
        from mmhvae.eval.figures import training_curves

        training_curves({n: c for n, c in curves.items() if n not in same_as}, out_dir / "training_curves.png",
                        title=f"{base.train.steps} steps, batch {base.train.batch_size}, seed {base.train.seed}")
    selected = {n: _checkpoint_step(checkpoints[n]) for n in configs}
    text = comparison_markdown(base, configs, rows, compute_rows, seconds, split, device, same_as, curves, selected)
    md = out_dir / "comparison.md"
    md.write_text(text)
    (out_dir / "compute.json").write_text(json.dumps(compute_rows, indent=2))
    return ComparisonResult(out_dir, checkpoints, rows, compute_rows, md, seconds, same_as)


def resolve_device(device: str) -> str:
    """``train.device`` with ``auto`` resolved: CUDA when present, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _end_with_parent(parent: int) -> None:
    """Initializer of the training workers: on Linux each one is sent SIGTERM when the comparison's
    process ends, even when it is killed, instead of training on unseen (and holding the run folder's
    lock, :mod:`mmhvae.train.run_lock`, against the rerun that would resume it). Checkpoints are
    written atomically, so a worker ended mid-step leaves its last one intact."""
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl to be had: the worker simply outlives a killed parent
        return
    if os.getppid() != parent:  # the parent ended before the request took effect
        os._exit(1)


def _train_all(configs: Mapping[str, ExperimentConfig], runs: Path, jobs: int, threads: Optional[int],
               progress: bool, log) -> tuple[dict[str, Path], dict[str, float]]:
    """Train each method into ``runs/<method>`` (``jobs`` at once in processes); its best checkpoint
    and training seconds per method, in the order of ``configs``."""
    checkpoints: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    if jobs <= 1:
        for name, cfg in configs.items():
            run_dir = runs / name
            log(f"[compare] training {name} ({cfg.train.steps} steps) -> {run_dir}")
            best, secs = _train_one(cfg, str(run_dir), threads, progress)
            checkpoints[name], seconds[name] = Path(best), secs
        return checkpoints, seconds
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    log(f"[compare] training {len(configs)} methods, {jobs} at a time (progress: OUT/runs/<method>/metrics.csv)")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_end_with_parent,
                             initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(_train_one, cfg, str(runs / name), threads, False): name for name, cfg in configs.items()}
        for fut in as_completed(futures):
            name = futures[fut]
            best, secs = fut.result()
            checkpoints[name], seconds[name] = Path(best), secs
            log(f"[compare] {name} trained in {secs:.0f} s")
    return {n: checkpoints[n] for n in configs}, seconds  # method order, not completion order


def _evaluate(checkpoints: Mapping[str, Path], base: ExperimentConfig, eval_dir: Path, split: str, figures: bool,
              progress: bool, device: str, log) -> list[dict[str, Any]]:
    """The evaluator's rows for ``checkpoints`` (those of an earlier evaluation when still valid)."""
    from mmhvae.eval.runner import evaluate_checkpoints

    scored = reusable_scores(eval_dir, checkpoints)
    if scored is not None and not figures:
        log(f"[compare] reusing {eval_dir / 'metrics.csv'} (newer than every checkpoint, same methods)")
        return scored
    log(f"[compare] evaluating {len(checkpoints)} checkpoints on split {split!r}")
    return [dict(r) for r in evaluate_checkpoints(
        checkpoints, base.data.cohort, split, eval_dir, base.eval, figures=figures, progress=progress, device=device,
    ).rows]


def _compute_rows(configs: Mapping[str, ExperimentConfig], device: str) -> list[dict[str, Any]]:
    """Parameters, MACs and latency of each method's generator (one slice), with its latent levels."""
    from mmhvae.compute import measure

    rows = []
    for name, cfg in configs.items():
        row = {"method": name, **measure(cfg.model, 1, None, device, warmup=1, repeats=3)}
        row["levels"] = cfg.model.num_levels if cfg.model.method in ("mmhvae", "mopoe") else 0
        rows.append(row)
    return rows


def reusable_scores(eval_dir: Path, checkpoints: Mapping[str, Path]) -> Optional[list[dict[str, Any]]]:
    """The rows of an earlier evaluation in ``eval_dir`` if it scored exactly these methods after their
    checkpoints were last written (a rerun of a finished comparison then only rewrites the report)."""
    from mmhvae.eval.tables import read_csv

    path = Path(eval_dir) / "metrics.csv"
    if not path.is_file():
        return None
    written = path.stat().st_mtime
    if any(not Path(c).is_file() or Path(c).stat().st_mtime > written for c in checkpoints.values()):
        return None
    rows = read_csv(path)
    if {r.get("method") for r in rows} != set(checkpoints):
        return None
    return rows


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------


def comparison_markdown(
    base: ExperimentConfig,
    configs: Mapping[str, ExperimentConfig],
    rows: Sequence[Mapping[str, Any]],
    compute_rows: Sequence[Mapping[str, Any]],
    seconds: Mapping[str, float],
    split: str,
    device: str = "cpu",
    same_as: Optional[Mapping[str, str]] = None,
    curves: Optional[Mapping[str, Sequence[tuple[int, float]]]] = None,
    selected: Optional[Mapping[str, int]] = None,
) -> str:
    """The whole comparison report (Markdown): settings, Table 1, ablations, compute."""
    from mmhvae.compute import machine_description, markdown_table
    from mmhvae.eval.tables import paper_table
    from mmhvae.train.trainer import selection_rule

    modalities = list(base.model.modalities)
    methods = list(configs)
    parts = [
        f"# Comparison: {', '.join(methods)}",
        "",
        f"Preset `{base.name}`, {base.model.image_size}² slices, cohort `{base.data.cohort}`, split `{split}`, "
        f"{base.train.steps} training steps per method, batch {base.train.batch_size}, seed {base.train.seed}, "
        f"evaluation temperature {base.eval.temperature}.",
        f"Trained, evaluated and timed on: {machine_description(device)}.",
        "",
        "| Method | Model | L | Source | Training time (s) |",
        "|---|---|---|---|---|",
    ]
    for name, cfg in configs.items():
        L = cfg.model.num_levels if cfg.model.method in ("mmhvae", "mopoe") else "-"
        time_cell = f"same model as {same_as[name]}" if same_as and name in same_as else f"{seconds.get(name, 0.0):.0f}"
        parts.append(f"| {name} | {cfg.model.method} | {L} | {METHODS[name].source} | {time_cell} |")
    parts += ["", "## Table 1 - every method, every input subset", ""]
    # Only metrics that were computed (LPIPS is absent when its weights are unavailable or disabled).
    metrics = [m for m in METRIC_ORDER if any(r["metric"] == m and r["value"] is not None for r in rows)]
    targets = [m for m in modalities if any(r["target"] == m for r in rows)]  # modality order, not first-seen
    table = paper_table(rows, modalities, targets=targets, metrics=metrics, methods=methods) if rows else "(no scores)\n"
    parts.append(table)
    if rows:
        parts += ["## Summary - every method, all input subsets pooled", "",
                  ablation_table(rows, methods, modalities, {m: _ablation_label(m, configs[m]) for m in methods})]
    for title, members, ours in ABLATIONS:
        present = [m for m in members if m in configs]
        if ours and ours in configs and present:
            present.append(ours)
        if len(present) < 2 and not (present and title.startswith("Table 2")):
            continue
        labels = {m: _ablation_label(m, configs[m]) for m in present}
        parts += [f"## {title}", "", ablation_table(rows, present, modalities, labels)]
    if compute_rows:
        parts += ["## Compute (one slice, random weights)", "", markdown_table(compute_rows)]
    if curves and any(curves.values()):
        parts += ["## Training curves", "", curves_table(curves, selected), "",
                  "Validation PSNR (dB; mean over every input subset and target, τ = 0, the trainer's model "
                  "selection score) at each validation step; **bold**: the checkpoint evaluated above "
                  f"(`train.selection={base.train.selection}`: "
                  + ", ".join(f"{m} {selection_rule(configs[m].train)}" for m in methods if m in configs) + "). "
                  "A curve still rising at the last step means the budget was too small for that method. "
                  "Plot: `training_curves.png`.", ""]
    return "\n".join(parts) + "\n"


def read_curves(run_dirs: Mapping[str, Path], key: str = "val_psnr") -> dict[str, list[tuple[int, float]]]:
    """``{method: [(step, value), ...]}`` of scalar ``key`` from each run's ``metrics.csv`` (empty if absent)."""
    from mmhvae.train.run_log import read_series

    return {name: read_series(run_dir, key) for name, run_dir in run_dirs.items()}


def _checkpoint_step(path: Path) -> int:
    """The training step recorded in a generator checkpoint's metadata (0 if absent)."""
    from mmhvae.checkpoint import read_metadata

    return int(read_metadata(path).get("step", 0))


def curves_table(
    curves: Mapping[str, Sequence[tuple[int, float]]],
    selected: Optional[Mapping[str, int]] = None,
    decimals: int = 2,
) -> str:
    """Markdown table: one row per method, one column per logged step; in bold the value at the
    ``selected`` step of each method (the evaluated checkpoint), else the row's best value."""
    steps = sorted({s for pts in curves.values() for s, _ in pts})
    lines = ["| Method | " + " | ".join(f"step {s}" for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for name, pts in curves.items():
        values = dict(pts)
        mark = (selected or {}).get(name)
        if mark not in values:
            mark = max(values, key=values.get) if values else None
        cells = []
        for s in steps:
            v = values.get(s)
            text = "" if v is None else f"{v:.{decimals}f}"
            cells.append(f"**{text}**" if s == mark else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ablation_label(name: str, cfg: ExperimentConfig) -> str:
    if METHODS[name].group == "depth":
        return f"{name} (L = {cfg.model.num_levels})"
    if name == "mmhvae":
        return "PoE + GAN (mmhvae)"
    return name


def ablation_table(
    rows: Iterable[Mapping[str, Any]],
    methods: Sequence[str],
    targets: Sequence[str],
    labels: Optional[Mapping[str, str]] = None,
    metrics: Sequence[str] = METRIC_ORDER,
    alpha: float = 0.05,
    decimals: int = 1,
) -> str:
    """Paper Tables 2-4 layout: one row per method, ``target x metric`` columns.

    Each cell is the mean (std) of every (input subset, subject) score of that target, as the
    paper's "averaged across all possible combinations of inputs". The best mean per column is
    bold; a dagger marks a method whose paired difference to the best (Wilcoxon signed-rank on
    the common (subset, subject) pairs) is significant after Bonferroni correction over the table.
    """
    from mmhvae.eval.metrics import METRICS, MetricAccumulator, summarize
    from mmhvae.eval.stats import align, bonferroni, paired_wilcoxon

    acc = MetricAccumulator.from_rows(r for r in rows if r["method"] in methods)
    labels = dict(labels or {})
    metrics = [m for m in metrics if any(r.metric == m and r.value is not None for r in acc.records)]
    targets = [t for t in targets if t in acc.targets]
    columns = [(t, m) for t in targets for m in metrics]
    values = {(meth, c): acc.values(meth, c[0], c[1], None) for meth in methods for c in columns}

    bold, tests = set(), []
    for c in columns:
        spec = METRICS[c[1]]
        means = {m: summarize(list(values[(m, c)].values()))[0] for m in methods}
        avail = {m: v for m, v in means.items() if v is not None}
        if not avail:
            continue
        best = (max if spec.higher_is_better else min)(avail.values())
        winner = next(m for m, v in avail.items() if v == best)
        bold.update((m, c) for m, v in avail.items() if v == best)
        for m in avail:
            if (m, c) not in bold:
                a, b = align(values[(winner, c)], values[(m, c)])
                tests.append(((m, c), paired_wilcoxon(a, b).pvalue))
    corrected = bonferroni([p for _, p in tests]) if tests else []
    dagger = {key for (key, _), p in zip(tests, corrected) if p < alpha}

    header = ["Method"] + [f"{t} {METRICS[m].label} {'↑' if METRICS[m].higher_is_better else '↓'}" for t, m in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for meth in methods:
        cells = [labels.get(meth, meth)]
        for c in columns:
            spec = METRICS[c[1]]
            mean, std = summarize(list(values[(meth, c)].values()))
            text = "n/a" if mean is None else f"{mean * spec.scale:.{decimals}f} ({std * spec.scale:.{decimals}f})"
            if (meth, c) in bold:
                text = f"**{text}**"
            if (meth, c) in dagger:
                text += "†"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean (std) over every (input subset, subject) pair. **Bold**: best per column. †: paired two-sided "
        f"Wilcoxon signed-rank test against the best significant at p < {alpha} after Bonferroni correction "
        f"over {len(tests)} tests.",
        "",
    ]
    return "\n".join(lines)

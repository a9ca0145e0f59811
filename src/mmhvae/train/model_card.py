"""A model card (``RUN/MODEL_CARD.md``) written by the trainer beside each trained run (issue 18).

It says what a checkpoint was trained on and how, so that nobody mistakes it for something else:
the training data (subjects per split, modalities and availability patterns, the licence line of
each subject when the cohort folder has a README table naming it), the geometry of the model's frame,
the preprocessing, the budget, the validation curve and best score, the intended use and the
limitations. Weights trained on cases with restrictive licences must not be redistributed as if
they were licence-free: the card names the licences it found and says when it found none.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from mmhvae.train.run_log import read_series

CARD_NAME = "MODEL_CARD.md"


def _readme_rows(cohort_source: Path) -> list[list[str]]:
    """Table rows (cells) of the README.md beside or above the cohort's files, if any."""
    folders = [cohort_source if cohort_source.is_dir() else cohort_source.parent]
    rows: list[list[str]] = []
    seen = set()
    for folder in folders:
        for candidate in (folder / "README.md", folder.parent / "README.md"):
            if candidate.is_file() and candidate not in seen:
                seen.add(candidate)
                for line in candidate.read_text(errors="replace").splitlines():
                    if line.startswith("|") and not set(line) <= set("|-: "):
                        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def _subject_dirs(manifest: Path) -> list[Path]:
    """Folders holding a manifest's images (a benchmark's manifest points into the real folder)."""
    out = []
    try:
        with open(manifest, newline="") as fh:
            for row in csv.DictReader(fh):
                for key, value in row.items():
                    if key not in ("subject", "split") and value:
                        out.append(Path(value).parent.parent)
                        break
    except (OSError, csv.Error):
        pass
    return list(dict.fromkeys(out))


def licence_of(subject: str, rows: list[list[str]]) -> Optional[str]:
    """The last cell (source, licence) of the README row naming ``subject`` (exactly, or as a
    ``Name-01, 02`` / ``Name-01 … 04`` family), else None."""
    best, best_len = None, 0
    for cells in rows:
        if len(cells) < 2:
            continue
        token = cells[0].replace("*", "").replace("`", "").split(",")[0].split("…")[0].strip()
        if not token:
            continue
        stem = token.rstrip("0123456789")
        if subject == token:
            length = len(token) + 1
        elif subject.startswith(token):
            length = len(token)
        elif stem and subject.startswith(stem) and len(stem) >= 4:
            length = len(stem)
        else:
            continue
        if length > best_len:
            best, best_len = cells[-1], length
    return best


def write_model_card(cfg, run_dir: Path, history: Optional[list] = None, best_step: Optional[int] = None,
                     best_score: Optional[float] = None, train_seconds: Optional[float] = None,
                     execution: Optional[str] = None) -> Path:
    """Write ``run_dir/MODEL_CARD.md`` for a finished (or stopped) run of ``cfg``; returns its path."""
    from mmhvae.data.cohort import Cohort

    run_dir = Path(run_dir)
    mods = list(cfg.model.modalities)
    source = Path(cfg.data.cohort)
    lines = [f"# Model card: `{run_dir.name}`", "",
             f"Written by the trainer on {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. "
             f"Method `{cfg.model.method}` (preset `{cfg.name}`), modalities {mods}, "
             f"{cfg.model.num_levels if cfg.model.method == 'mmhvae' else '-'} latent levels. "
             "Full configuration: `config.yaml` beside this card.", "", "## Training data", ""]
    licences: dict[str, Optional[str]] = {}
    try:
        cohort = Cohort.load(source, modalities=mods, aliases=cfg.data.modality_aliases or None)
        rows = _readme_rows(source)
        for folder in _subject_dirs(source) if source.is_file() else []:
            rows += _readme_rows(folder)
        lines += [f"Cohort `{source}`.", "", "| Subject | split | modalities | source, licence |", "|---|---|---|---|"]
        for s in cohort.subjects:
            if s.split == "test":
                continue
            licences[s.name] = licence_of(s.name, rows)
            lines.append(f"| {s.name} | {s.split} | {', '.join(m for m in mods if m in s.paths)} | "
                         f"{licences[s.name] or 'not stated'} |")
        patterns = Counter(tuple(m for m in mods if m in s.paths) for s in cohort.subjects if s.split == "train")
        lines += ["", "Availability patterns (training subjects): "
                  + "; ".join(f"{'+'.join(p) or 'none'} × {n}" for p, n in patterns.items()) + "."]
        n_test = sum(s.split == "test" for s in cohort.subjects)
        if n_test:
            lines.append(f"{n_test} test subject(s) of this cohort were not used for training or model selection.")
    except Exception as exc:  # a card must never make a finished training fail
        lines.append(f"Cohort `{source}` could not be described: {exc}")
    d = cfg.data
    lines += ["", "## Geometry and preprocessing", "",
              f"- Frame: orientation {d.orientation}, spacing {d.spacing or 'native'} mm, slices along axis "
              f"{d.slice_axis}, {cfg.model.image_size}² px per slice (field of view "
              + (f"{cfg.model.image_size * float(d.spacing[0]):.0f} mm" if d.spacing else "in voxels") +
              f"), wider foregrounds: `{d.fit}`; outputs masked to the inputs' foreground: {d.mask_outputs}.",
              f"- Inputs: `{d.input_normalization}` percentile min-max {d.input_percentiles} inside the foreground "
              "(not harmonized).",
              f"- Targets: harmonization `{d.harmonization}` (white-matter medians {d.wm_targets}); min-max for "
              f"{d.minmax_modalities}; crop to `{d.crop_to_modality or 'none'}`.",
              "", "## Budget", "",
              f"- {cfg.train.steps} steps, batch {cfg.train.batch_size}, {cfg.train.draws} subset draws per step "
              f"(policy `{cfg.train.subset_policy}`), objective `{getattr(cfg.train, 'objective', 'mixture')}`, "
              f"reconstruction `{cfg.train.reconstruction}`, "
              f"{cfg.train.optimizer} lr {cfg.train.lr} → {cfg.train.lr_min} (cosine), KL weight "
              f"{cfg.train.kl_weight} (warm-up fraction {cfg.train.kl_warmup_fraction}), GAN "
              f"{'weight ' + str(cfg.train.gan.weight) + ' from ' + str(cfg.train.gan.start_fraction) + ' of training' if cfg.train.use_gan else 'off'}, "
              f"seed {cfg.train.seed}, device {cfg.train.device}, precision {cfg.train.amp}"
              + (f" (ran as: {execution})" if execution else "") + "."]
    if train_seconds is not None:
        lines.append(f"- Training time: {train_seconds:.0f} s (wall time of the training loop, over every session).")
    curve, perceptual = read_series(run_dir, "val_psnr"), read_series(run_dir, "val_lpips")
    lines += ["", "## Metrics", ""]
    if curve:
        lines.append("Validation PSNR (dB, every input subset and target, τ = 0): "
                     + ", ".join(f"step {s}: {v:.2f}" for s, v in curve) + ".")
        if perceptual:
            lines.append("Validation LPIPS (%, the same outputs): "
                         + ", ".join(f"step {s}: {100 * v:.1f}" for s, v in perceptual) + ".")
    else:
        lines.append("No validation curve (no validation subjects).")
    if best_step is not None:
        known = best_score is not None and math.isfinite(best_score)
        if known and cfg.train.select_metric == "lpips":  # the selection score is minus the LPIPS
            value = f", selected on validation LPIPS: {-100 * best_score:.1f} %."
        elif known:
            value = f", selected on validation PSNR: {best_score:.2f} dB."
        else:
            value = "."
        lines.append(f"Selected checkpoint (`best.safetensors`): step {best_step}{value}")
    lines.append("Test scores are not part of training: see the evaluation or benchmark report that scored this run.")
    found = {v for v in licences.values() if v}
    lines += ["", "## Intended use and licences", "",
              "Research on multimodal synthesis only; not for clinical use or diagnosis. Synthesized images "
              "are plausible guesses, not measurements: they can miss or invent lesions.",
              ("Training-data licences found: " + "; ".join(sorted(found)) + ". The weights inherit the most "
               "restrictive of them (e.g. research only / non-commercial): do not redistribute them as licence-free.")
              if found else "No licence was found for the training data: check it before sharing these weights.",
              ""]
    path = run_dir / CARD_NAME
    from mmhvae.atomic import atomic_write_text

    atomic_write_text(path, "\n".join(lines))
    return path


__all__ = ["CARD_NAME", "licence_of", "write_model_card"]

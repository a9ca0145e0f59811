"""The real-data benchmark (issue 18): train on one cohort, score on a separately given test cohort.

:func:`run_realbench` is what ``mmhvae benchmark real`` runs:

1. **Split.** The training pool (``train_source``: a folder or manifest, optionally restricted to
   ``train_subjects``) and the test subjects (``test_source``, a separate cohort, or ``test_subjects``
   named in the pool) are written into one manifest ``OUT/cohort.csv`` with a ``split`` column
   (``train`` / ``val`` / ``test``); ``val_subjects`` (taken from the pool, never from the test
   subjects) select the checkpoint. Test subjects never enter training, validation, model selection
   or the reference baselines' fitting.
2. **Methods.** Every method is trained under one budget and seed by :func:`mmhvae.compare.run_comparison`
   (``OUT/runs/<method>``, resumable) and evaluated on the test split (``OUT/eval``).
3. **References.** The two baselines of :mod:`mmhvae.eval.reference` (predict-the-mean image,
   copy-the-nearest-contrast) are fitted on the *training* subjects and scored the same way.
4. **Report.** ``OUT/realbench.md``: the split, Table 1 (every input subset x target, PSNR / SSIM /
   LPIPS mean (std), paired Wilcoxon + Bonferroni) with the references as rows, the pooled summary,
   the training curves (``OUT/training_curves.png``), the KL per latent level of each hierarchical
   model (posterior collapse), and picture grids of real slices (``OUT/pictures/<subject>.png``:
   inputs | each method | ground truth, one row per target synthesized from all other contrasts).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from mmhvae.config import ExperimentConfig
from mmhvae.errors import CohortError

DEFAULT_REAL_METHODS = "mmhvae,mvae,mopoe,concat-zeros,average,mmgan,no-gan"


@dataclass
class RealSplit:
    """Subjects of the benchmark by role, and the manifest holding them."""

    manifest: Path
    train: list[str]
    val: list[str]
    test: list[str]
    availability: dict[str, list[str]] = field(default_factory=dict)  # subject -> its modalities
    screened: dict[str, str] = field(default_factory=dict)  # subject left out -> why (unreliable harmonization)


def _names(value: Optional[Sequence[str] | str]) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    return [v.strip() for v in value if v and v.strip()]


def build_split(
    out_dir: Path,
    train_source: str | Path,
    modalities: Sequence[str],
    aliases: Optional[Mapping[str, str]] = None,
    test_source: Optional[str | Path] = None,
    test_subjects: Optional[Sequence[str] | str] = None,
    val_subjects: Optional[Sequence[str] | str] = None,
    train_subjects: Optional[Sequence[str] | str] = None,
    exclude: Optional[Sequence[str] | str] = None,
) -> RealSplit:
    """Write ``out_dir/cohort.csv`` (absolute paths, one ``split`` per subject); see the module docstring.

    Subjects of the pool with none of ``modalities`` are left out (e.g. ultrasound cases for an MR
    model); a subject named in two roles, or a named subject that does not exist, is refused.
    """
    from mmhvae.data.cohort import Cohort

    mods = list(modalities)
    # Subjects without any of the model's modalities (MR-only cases for an ultrasound model) are not
    # errors here: they are simply not part of this benchmark (collected, not raised).
    skipped: list[str] = []
    pool = Cohort.load(train_source, modalities=mods, aliases=dict(aliases) if aliases else None, problems=skipped)
    by_name = {s.name: s for s in pool.subjects if any(m in s.paths for m in mods)}
    test_names, val_names = _names(test_subjects), _names(val_subjects)
    wanted, dropped = _names(train_subjects), set(_names(exclude))
    tests = _test_subjects(by_name, train_source, test_source, test_names, dropped, mods, aliases, skipped)
    _check_roles(by_name, train_source, mods, {s.name for s in tests}, val_names, wanted, dropped)
    test_set = {s.name for s in tests}
    rows: list[tuple[object, str]] = []
    train_names, vals = [], []
    for name, s in by_name.items():
        if name in test_set or name in dropped or (wanted and name not in wanted and name not in val_names):
            continue
        split = "val" if name in val_names else "train"
        (vals if split == "val" else train_names).append(name)
        rows.append((s, split))
    if not train_names:
        raise CohortError("no training subject left after the split")
    rows += [(s, "test") for s in tests]
    manifest, availability = _write_manifest(Path(out_dir), rows, mods)
    return RealSplit(manifest, train_names, vals, [s.name for s in tests], availability)


def _test_subjects(by_name, train_source, test_source, test_names, dropped, mods, aliases, skipped):
    """The test subjects: those of ``test_source`` (optionally only ``test_names``; none may be in the
    pool), else ``test_names`` from the pool."""
    from mmhvae.data.cohort import Cohort

    if test_source is not None:
        other = Cohort.load(test_source, modalities=mods, aliases=dict(aliases) if aliases else None, problems=skipped)
        tests = [s for s in other.subjects if any(m in s.paths for m in mods)
                 and (not test_names or s.name in test_names)]
        clash = sorted({s.name for s in tests} & (set(by_name) - dropped))
        if clash:
            raise CohortError(f"test subject(s) {clash} are also in the training pool {train_source}; "
                              "rename them or --exclude them from the pool")
    else:
        missing = [n for n in test_names if n not in by_name]
        if missing:
            raise CohortError(f"--test-subjects {missing} not found in {train_source} (with modalities {mods})")
        tests = [by_name[n] for n in test_names]
    if not tests:
        raise CohortError("no test subject: give --test COHORT or --test-subjects NAMES")
    return tests


def _check_roles(by_name, train_source, mods, test_set, val_names, wanted, dropped) -> None:
    """Every named subject exists in the pool, and no test subject is trained or selected on."""
    for label, names in (("--val-subjects", val_names), ("--train-subjects", wanted), ("--exclude", sorted(dropped))):
        missing = [n for n in names if n not in by_name]
        if missing:
            raise CohortError(f"{label} {missing} not found in {train_source} (with modalities {mods})")
    for label, names in (("--val-subjects", val_names), ("--train-subjects", wanted)):
        both = sorted(test_set & set(names))
        if both:
            raise CohortError(f"{label} {both} are test subjects: a test subject is never trained or selected on")


def _write_manifest(out_dir: Path, rows, mods) -> tuple[Path, dict[str, list[str]]]:
    """``out_dir/cohort.csv`` (absolute paths, a ``split`` column) and each subject's modalities."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "cohort.csv"
    header = ["subject", "split", *mods, "seg", "mask", "wm"]
    availability = {}
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for s, split in rows:
            files = s.files()
            w.writerow([s.name, split] + [str(Path(files[k]).resolve()) if k in files else "" for k in header[2:]])
            availability[s.name] = [m for m in mods if m in s.paths]
    return manifest, availability


# --------------------------------------------------------------------------------------------------


def unreliable_harmonization(manifest: Path, data_cfg, modalities: Sequence[str],
                              splits: Sequence[str] = ("train", "val")) -> dict[str, str]:
    """``{subject: warning}`` for the subjects of ``splits`` whose harmonization is doubtful.

    A head that is not skull-stripped and has no brain mask makes the white-matter estimate pick scalp
    or skull (``HarmonizationWarning``); its harmonized targets then sit on another scale and teach
    every model, and the references' training statistics, the wrong one. Test subjects are not
    screened (they are scored as given)."""
    import warnings

    from mmhvae.data.cohort import Cohort, load_subject
    from mmhvae.data.harmonize import HarmonizationWarning, harmonize_subject

    cohort = Cohort.load(manifest, modalities=list(modalities), aliases=data_cfg.modality_aliases or None)
    flagged: dict[str, str] = {}
    for split in splits:
        for subject in cohort.select(split):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", HarmonizationWarning)
                harmonize_subject(load_subject(subject), data_cfg)
            found = [str(w.message) for w in caught if issubclass(w.category, HarmonizationWarning)]
            if found:
                flagged[subject.name] = found[0]
    return flagged


def kl_per_level(model, planes_inputs: Mapping[str, np.ndarray], max_slices: int = 16) -> Optional[list[dict]]:
    """KL(q || p) per latent level (finest first) at temperature 1 on up to ``max_slices`` slices with
    every given input: ``[{"level", "elements", "kl_slice", "kl_element"}]`` (nats), or None for a
    model without a latent hierarchy. A level with ~0 nats is collapsed onto its prior (unused)."""
    import torch

    model = getattr(model, "network", model)  # a TrainedModel (mmhvae.infer.load_model) or a bare network
    mods = list(model.cfg.modalities)
    ref = next(iter(planes_inputs.values()))
    idx = np.linspace(0, ref.shape[0] - 1, min(max_slices, ref.shape[0])).round().astype(int)
    images = torch.zeros(len(idx), len(mods), *ref.shape[1:])
    observed = torch.zeros(len(idx), len(mods), dtype=torch.bool)
    for m, v in planes_inputs.items():
        images[:, mods.index(m)] = torch.from_numpy(np.ascontiguousarray(v[idx]))
        observed[:, mods.index(m)] = True
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        out = model(images.to(device), observed.to(device), temperature=1.0)
    model.train(was_training)
    kls = getattr(out, "kl", None)
    latents = getattr(out, "latents", None)
    if not isinstance(kls, (list, tuple)) or not kls or not latents or len(latents) != len(kls):
        return None
    rows = []
    for level, (kl, z) in enumerate(zip(kls, latents), start=1):
        elements = int(np.prod(z.shape[1:]))
        mean = float(kl.float().mean())
        rows.append({"level": level, "elements": elements, "kl_slice": mean, "kl_element": mean / max(elements, 1)})
    return rows


def _picture(path: Path, subject: str, modalities: Sequence[str], given: Mapping[str, np.ndarray],
             truth: Mapping[str, np.ndarray], preds: Mapping[str, Mapping[str, np.ndarray]], index: int) -> Path:
    """One row per target (synthesized from every other available contrast): inputs | methods | truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [t for t in modalities if t in truth]
    methods = list(preds)
    cols = len(modalities) + len(methods) + 1
    fig, axes = plt.subplots(len(targets), cols, figsize=(1.6 * cols, 1.7 * len(targets)), squeeze=False)
    for r, t in enumerate(targets):
        vmax = float(np.percentile(truth[t][index], 99.5)) or 1.0
        for c, m in enumerate(modalities):
            ax = axes[r, c]
            if m in given and m != t:
                img = given[m][index]
                ax.imshow(img, cmap="gray", vmin=0, vmax=float(np.percentile(img, 99.5)) or 1.0)
            ax.set_title(f"in: {m}" if r == 0 else "", fontsize=7)
        for c, name in enumerate(methods, start=len(modalities)):
            pred = preds[name].get(t)
            if pred is not None:
                axes[r, c].imshow(pred[index], cmap="gray", vmin=0, vmax=vmax)
            axes[r, c].set_title(name if r == 0 else "", fontsize=7)
        axes[r, -1].imshow(truth[t][index], cmap="gray", vmin=0, vmax=vmax)
        axes[r, -1].set_title("truth" if r == 0 else "", fontsize=7)
        axes[r, 0].set_ylabel(f"-> {t}", fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([]), ax.set_yticks([])
            for sp in ax.spines.values():
                sp.set_visible(False)
    fig.suptitle(f"{subject}: each target from every other available contrast (middle foreground slice)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------


@dataclass
class RealBenchResult:
    out_dir: Path
    split: RealSplit
    rows: list[dict]
    markdown: Path
    pictures: list[Path]
    kl: dict[str, list[dict]]
    seconds: float


def run_realbench(
    base: ExperimentConfig,
    methods: Sequence[str],
    out_dir: Path,
    train_source: str | Path,
    test_source: Optional[str | Path] = None,
    test_subjects: Optional[Sequence[str] | str] = None,
    val_subjects: Optional[Sequence[str] | str] = None,
    train_subjects: Optional[Sequence[str] | str] = None,
    exclude: Optional[Sequence[str] | str] = None,
    references: bool = True,
    pictures: bool = True,
    progress: bool = True,
    log=print,
    jobs: int = 1,
    threads: Optional[int] = None,
    screen: bool = True,
) -> RealBenchResult:
    """Split, train every method, score on the test subjects with the references; see the module docstring."""
    from mmhvae.checkpoint import load_trained
    from mmhvae.compare import resolve_device, run_comparison
    from mmhvae.data.cohort import Cohort
    from mmhvae.eval.tables import write_csv

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    mods = list(base.model.modalities)
    split = build_split(out_dir, train_source, mods, base.data.modality_aliases, test_source, test_subjects,
                        val_subjects, train_subjects, exclude)
    screened = unreliable_harmonization(split.manifest, base.data, mods) if screen else {}
    if screened:  # left out of training and validation, said in the log and the report
        for name, why in screened.items():
            log(f"[real] leaving {name} out: {why}")
        keep = [n for n in _names(val_subjects) if n not in screened], [n for n in _names(train_subjects) if n not in screened]
        split = build_split(out_dir, train_source, mods, base.data.modality_aliases, test_source, test_subjects,
                            keep[0], keep[1], sorted(set(_names(exclude)) | set(screened)))
        split.screened = screened
    log(f"[real] train {split.train}, val {split.val}, test {split.test} -> {split.manifest}")
    base.data.cohort = str(split.manifest)
    if not split.val:
        base.train.val_subjects = 0
    device = resolve_device(base.train.device)
    result = run_comparison(base, methods, out_dir, split="test", progress=progress, compute=False,
                            figures=False, log=log, jobs=jobs, threads=threads)
    rows = [dict(r) for r in result.rows]
    names = list(dict.fromkeys(methods))
    models = {n: load_trained(result.checkpoints[n], device) for n in names}
    trained_cfg = next(iter(models.values())).config  # data.spacing resolved by the trainer
    cohort = Cohort.load(split.manifest, modalities=mods, aliases=trained_cfg.data.modality_aliases or None)
    test = _planes_of(cohort.select("test"), trained_cfg, mods)
    refs = _References()
    if references:
        refs = _score_references(_planes_of(cohort.select("train"), trained_cfg, mods), test, mods, base.eval)
        rows += refs.rows
    write_csv(rows, out_dir / "realbench_metrics.csv")
    kl = _kl_per_model(models, cohort, trained_cfg, mods)
    (out_dir / "kl_per_level.json").write_text(json.dumps(kl, indent=2))
    made = _pictures(out_dir, models, test, refs, mods, base.eval, trained_cfg.data.mask_outputs) if pictures else []
    from mmhvae.compare import read_curves

    runs = {n: out_dir / "runs" / result.same_as.get(n, n) for n in names}
    curves = read_curves(runs)
    lpips_curves = read_curves(runs, key="val_lpips")  # logged by runs with train.validate_lpips
    seconds = time.perf_counter() - t0
    md = out_dir / "realbench.md"
    md.write_text(realbench_markdown(base, names, refs.names, split, rows, result, curves, kl, refs.ranking_md, made,
                                     seconds, device, lpips_curves))
    return RealBenchResult(out_dir, split, rows, md, made, kl, seconds)


def _planes_of(subjects, trained_cfg: ExperimentConfig, mods) -> list:
    """``[(preprocessed subject, its planes)]`` in the trained model's frame."""
    from mmhvae.data.dataset import preprocess_subject
    from mmhvae.eval import reference as refmod

    out = []
    for s in subjects:
        pre = preprocess_subject(s, trained_cfg.data, mods, trained_cfg.model.image_size)
        out.append((pre, refmod.subject_planes(pre)))
    return out


@dataclass
class _References:
    """The reference baselines' rows, pictures, names and ranking (empty without references)."""

    rows: list[dict] = field(default_factory=list)
    pictures: dict = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    ranking_md: str = ""


def _score_references(training, test, mods, eval_cfg) -> _References:
    """Fit the references on the training subjects' planes and score them on the test subjects."""
    from mmhvae.eval import reference as refmod
    from mmhvae.eval.lpips import load_lpips

    ref = refmod.fit_references([p for _, p in training], mods, eval_cfg.data_range or None)
    lp = load_lpips() if eval_cfg.lpips else None
    ref_rows, pictures = refmod.score_references(ref, [p for _, p in test], mods, eval_cfg, lp)
    names = [n for n in refmod.REFERENCES if any(r["method"] == n for r in ref_rows)]
    return _References(ref_rows, pictures, names, refmod.ranking_markdown(ref))


def _kl_per_model(models, cohort, trained_cfg: ExperimentConfig, mods) -> dict[str, list[dict]]:
    """KL per level of the hierarchical models, on training slices with every input (collapse check)."""
    from mmhvae.data.dataset import preprocess_subject

    train_subject = next((s for s in cohort.select("train") if all(m in s.paths for m in mods)),
                         cohort.select("train")[0])
    pre_train = preprocess_subject(train_subject, trained_cfg.data, mods, trained_cfg.model.image_size)
    kl: dict[str, list[dict]] = {}
    for n, model in models.items():
        levels = kl_per_level(model, pre_train.inputs)
        if levels:
            kl[n] = levels
    return kl


def _pictures(out_dir: Path, models, test, refs: _References, mods, eval_cfg, mask_outputs: bool) -> list[Path]:
    """One picture per test subject: each target from every other contrast, per method and reference."""
    from mmhvae.eval.runner import synthesize_slices

    made: list[Path] = []
    for pre, planes in test:
        inside = planes.foreground
        preds: dict[str, dict[str, np.ndarray]] = {}
        for n, model in models.items():
            preds[n] = {}
            for t in planes.targets:
                given = [m for m in planes.inputs if m != t] or [t]
                synth = synthesize_slices(model, {m: pre.inputs[m] for m in given}, eval_cfg.temperature,
                                          eval_cfg.batch_size, [t], seed=0)[t]
                plane = pre.slices.plane_stack(synth)
                preds[n][t] = np.where(inside, plane, 0) if mask_outputs else plane
        for n in refs.names:
            preds[n] = {key.split("->")[1]: v for key, v in refs.pictures.get(n, {}).get(planes.name, {}).items()}
        counts = inside.reshape(inside.shape[0], -1).sum(1)
        index = int(np.flatnonzero(counts > 0)[len(np.flatnonzero(counts > 0)) // 2]) if counts.any() else 0
        made.append(_picture(out_dir / "pictures" / f"{planes.name}.png", planes.name, mods, planes.inputs,
                             planes.targets, preds, index))
    return made


def realbench_markdown(base, methods, ref_names, split: RealSplit, rows, result, curves, kl, ranking_md,
                       pictures, seconds, device, lpips_curves=None) -> str:
    from mmhvae.compare import ablation_table, curves_table, _checkpoint_step
    from mmhvae.compute import machine_description
    from mmhvae.eval.tables import paper_table

    mods = list(base.model.modalities)
    all_methods = list(methods) + list(ref_names)
    metrics = [m for m in ("psnr", "ssim", "lpips") if any(r["metric"] == m and r["value"] not in (None, "") for r in rows)]
    targets = [m for m in mods if any(r["target"] == m for r in rows)]
    parts = [
        f"# Real-data benchmark: {', '.join(all_methods)}", "",
        f"Preset `{base.name}`, modalities {mods}, {base.model.image_size}² slices at spacing "
        f"{base.data.spacing or 'cohort median'} mm ({base.data.orientation}, slice axis {base.data.slice_axis}), "
        f"{base.train.steps} steps per method, batch {base.train.batch_size}, seed {base.train.seed}, "
        f"evaluation temperature {base.eval.temperature}, outputs masked to the inputs' foreground: "
        f"{base.data.mask_outputs}. Machine: {machine_description(device)}. Wall time of the whole "
        f"benchmark: {seconds / 60:.1f} min.", "",
        "## Split", "", "| Subject | role | modalities |", "|---|---|---|",
    ]
    for role, names in (("train", split.train), ("val (model selection)", split.val), ("test", split.test)):
        parts += [f"| {n} | {role} | {', '.join(split.availability.get(n, []))} |" for n in names]
    parts += [f"| {n} | left out: unreliable harmonization ({why}) | |" for n, why in split.screened.items()]
    parts += ["", "| Method | Training time (s) | evaluated checkpoint (step) |", "|---|---|---|"]
    for n in methods:
        secs = "same model as " + result.same_as[n] if n in result.same_as else f"{result.train_seconds.get(n, 0):.0f}"
        parts.append(f"| {n} | {secs} | {_checkpoint_step(result.checkpoints[n])} |")
    parts += ["", "## Table 1 - every input subset x target (test subjects)", ""]
    parts.append(paper_table(rows, mods, targets=targets, metrics=metrics, methods=all_methods) if rows else "(no scores)\n")
    parts += ["## Summary - all input subsets pooled", "", ablation_table(rows, all_methods, mods, metrics=metrics)]
    if ranking_md:
        parts += ["## The copy-the-nearest-contrast baseline", "",
                  "`mean-image`: the training subjects' mean harmonized target, position-matched to the test "
                  "subject's foreground box. `nearest-contrast`: the best-ranked given input, histogram-matched "
                  "to the target's training distribution; ranking on the training subjects only:", "", ranking_md]
    if kl:
        parts += ["## KL per latent level (finest first; nats, temperature 1, every input, training slices)", "",
                  "| Method | " + " | ".join(f"level {r['level']} (per slice / per element)" for r in next(iter(kl.values()))) + " |",
                  "|---|" + "---|" * len(next(iter(kl.values())))]
        for n, levels in kl.items():
            parts.append(f"| {n} | " + " | ".join(f"{r['kl_slice']:.3g} / {r['kl_element']:.2g}" for r in levels) + " |")
        parts += ["", "A level near 0 nats per element carries no information about the input (posterior collapse).", ""]
    logged = any((curves or {}).values()) or any((lpips_curves or {}).values())
    selected = {n: _checkpoint_step(result.checkpoints[n]) for n in methods} if logged else {}
    if curves and any(curves.values()):
        parts += ["## Training curves (validation PSNR, dB)", "", curves_table(curves, selected), "",
                  "Plot: `training_curves.png`. A curve still rising at the last step: the budget did not converge.", ""]
    if lpips_curves and any(lpips_curves.values()):
        parts += ["## Training curves (validation LPIPS, x100, lower is better)", "",
                  curves_table({n: [(s, 100 * v) for s, v in pts] for n, pts in lpips_curves.items() if pts},
                               selected, decimals=1), ""]
    if pictures:
        parts += ["## Pictures", ""] + [f"![{p.stem}](pictures/{p.name})" for p in pictures] + [""]
    return "\n".join(parts) + "\n"


__all__ = ["DEFAULT_REAL_METHODS", "RealBenchResult", "RealSplit", "build_split", "kl_per_level", "run_realbench"]

"""``mmhvae demo``: the main job end to end on the built-in cohort.

Generates the built-in cohort, trains the ``small`` preset on the short budget (the workflow),
synthesizes the held-out subjects from every input subset with that model and with the pretrained
built-in model shipped in :mod:`mmhvae.pretrained` (a converged one), and writes a report folder
(tables, PNG grids, temperature sweep, latent PCA) with a predict-the-mean baseline so the numbers can
be judged. When real cases are found (``--real``, or ``../shared/data/real`` beside the working
folder), the pretrained model also synthesizes one of them through ``mmhvae synthesize``.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="built-in cohort -> train (small preset) -> evaluate -> report")
    p.add_argument("--out", default="demo_out", help="output folder [demo_out]")
    p.add_argument("--subjects", type=int, default=60, help="subjects in the built-in cohort [60]")
    p.add_argument("--shape", type=int, nargs=3, default=[64, 64, 40], metavar=("X", "Y", "Z"))
    p.add_argument("--steps", type=int, help="training steps [the small preset's]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--real", help="folder of real cases (BraTS-style) for a sim-to-real synthesis "
                   "[../shared/data/real if present]")
    p.add_argument("--no-pretrained", action="store_true", help="skip the pretrained built-in model")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    p.set_defaults(func=run)


def mean_image_baseline(cohort_source, modalities, data_cfg, image_size, test_subjects) -> dict[str, float]:
    """PSNR of predicting, for every target, the mean training slice (the trivial baseline)."""
    import numpy as np

    from mmhvae.data.cohort import Cohort
    from mmhvae.data.dataset import preprocess_subject
    from mmhvae.eval.metrics import psnr

    cohort = Cohort.load(cohort_source, modalities=modalities)
    sums = {m: np.zeros((image_size, image_size)) for m in modalities}
    counts = {m: 0 for m in modalities}
    for subject in cohort.select("train"):
        pre = preprocess_subject(subject, data_cfg, modalities, image_size)
        for m, slices in pre.targets.items():
            sums[m] += slices.sum(axis=0)
            counts[m] += slices.shape[0]
    means = {m: sums[m] / max(counts[m], 1) for m in modalities}
    scores: dict[str, list[float]] = {m: [] for m in modalities}
    for subject in cohort.select("test")[: test_subjects or None]:
        pre = preprocess_subject(subject, data_cfg, modalities, image_size)
        for m, slices in pre.targets.items():
            pred = np.broadcast_to(means[m], slices.shape).astype(np.float32)
            scores[m].append(psnr(pred, slices))
    return {m: float(np.mean(v)) for m, v in scores.items() if v}


def find_real_cases(given: str | None):
    """The real-case folder: ``given``, else ``../shared/data/real`` beside the working folder, else None."""
    from pathlib import Path

    if given:
        return Path(given)
    candidate = Path.cwd().parent / "shared" / "data" / "real"
    return candidate if candidate.is_dir() else None


def pick_real_case(root, modalities: list[str], source: str = "t2"):
    """The first case of ``root`` with ``source`` and at least one other modality of the model."""
    import warnings

    from mmhvae.data.cohort import Cohort

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cohort = Cohort.load(root, modalities=modalities)
    for subject in sorted(cohort.subjects, key=lambda s: s.name):
        if source in subject.paths and len(set(subject.paths) & set(modalities)) >= 2:
            return subject
    return None


def synthesize_real_case(checkpoint, subject, modalities: list[str], out, source: str = "t2"):
    """``mmhvae synthesize`` of every modality from ``source`` of a real case; a PNG montage of the input,
    each synthesized modality and its real acquisition. Returns the PNG's path."""
    from mmhvae.cli import main as cli
    from mmhvae.data.cohort import load_subject
    from mmhvae.data.montage import make_montage, spacing_ras, to_ras
    from mmhvae.data.nifti import read_volume

    dest = out / subject.name
    code = cli(["synthesize", "--checkpoint", str(checkpoint), "--input", f"{source}={subject.paths[source]}",
                "--out", str(dest), "--overwrite"])
    if code != 0:
        return None
    real = load_subject(subject)
    rows = [(f"input {source}", to_ras(real.images[source], real.affine))]
    for m in modalities:
        if m == source or m not in real.images:
            continue
        synthesized, affine, _ = read_volume(dest / f"{m}.nii.gz")
        rows += [(f"synth {m}", to_ras(synthesized, affine)),
                 (f"real {m}", to_ras(real.images[m], real.affine))]
    seg = None if real.seg is None else to_ras(real.seg, real.affine)
    return make_montage([(rows, seg, spacing_ras(real.affine))], out / f"{subject.name}_from_{source}.png")


def summary_table(report, baseline: dict[str, float], methods: list[str], modalities: list[str]) -> str:
    header = "| target | " + " | ".join(f"{m} PSNR (all subsets)" for m in methods) + " | mean-image PSNR |"
    lines = [header, "|---" * (len(methods) + 2) + "|"]
    for t in modalities:
        cells = [f"{report.mean('psnr', method=m, target=t):.2f}" for m in methods]
        lines.append(f"| {t} | " + " | ".join(cells) + f" | {baseline.get(t, float('nan')):.2f} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from mmhvae.checkpoint import latest_state
    from mmhvae.config import apply_overrides, preset
    from mmhvae.data.phantom import make_cohort
    from mmhvae.eval.runner import evaluate_checkpoints
    from mmhvae.pretrained import builtin_path
    from mmhvae.train.trainer import train

    t0 = time.perf_counter()
    out = Path(args.out)
    manifest = out / "cohort" / "manifest.csv"
    if manifest.is_file():
        print(f"[1/5] using the built-in cohort in {manifest.parent}")
    else:
        print(f"[1/5] generating the built-in cohort: {args.subjects} subjects at {tuple(args.shape)}")
        manifest = make_cohort(out / "cohort", subjects=args.subjects, seed=args.seed, shape=tuple(args.shape))
    cfg = preset("small")
    overrides = [f"data.cohort={manifest.resolve()}", f"train.seed={args.seed}"] + list(args.overrides)
    if args.steps:
        overrides.append(f"train.steps={args.steps}")
    cfg = apply_overrides(cfg, overrides)
    run_dir = out / "run"
    print(f"[2/5] training the small preset for {cfg.train.steps} steps (the workflow) -> {run_dir}")
    result = train(cfg, run_dir, resume=latest_state(run_dir) is not None)
    checkpoints = {f"demo ({cfg.train.steps} steps)": result.best_checkpoint}
    pretrained = None if args.no_pretrained else builtin_path(required=False)
    if pretrained is not None:
        checkpoints["pretrained"] = pretrained
    names = " and the pretrained built-in model" if pretrained is not None else ""
    print(f"[3/5] evaluating every input subset on the test split with this model{names} -> {out / 'report'}")
    report = evaluate_checkpoints(checkpoints, manifest, "test", out / "report", cfg.eval)
    print("[4/5] predict-the-mean baseline")
    baseline = mean_image_baseline(manifest, cfg.model.modalities, cfg.data, cfg.model.image_size, None)
    summary = summary_table(report, baseline, list(checkpoints), cfg.model.modalities)
    from mmhvae.atomic import atomic_write_text

    atomic_write_text(out / "report" / "baseline.md", "# Models vs predict-the-mean\n\n" + summary + "\n")
    print(report.table_markdown)
    print("\n" + summary)
    real_root = find_real_cases(args.real)
    if pretrained is not None and real_root is not None:
        subject = pick_real_case(real_root, list(cfg.model.modalities))
        if subject is not None:
            print(f"[5/5] sim-to-real: the pretrained model synthesizes {subject.name} from its T2 -> {out / 'real'}")
            png = synthesize_real_case(pretrained, subject, list(cfg.model.modalities), out / "real")
            if png is not None:
                print(f"wrote {png}")
    else:
        print("[5/5] sim-to-real skipped (" + ("no pretrained model" if pretrained is None else
              "no real cases: pass --real FOLDER") + ")")
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; report in {out / 'report'}")
    return 0

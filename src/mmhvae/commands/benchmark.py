"""``mmhvae benchmark``: compute cost of the methods, and a full method comparison (paper Tables 1-4).

    mmhvae benchmark compute [--preset paper] [--methods mmhvae,mvae,mmgan,resvit] [--batch-size 1]
                             [--device cpu] [--append BENCHMARKS.md]
    mmhvae benchmark compare --methods mmhvae,mvae,mmgan,resvit,L1,L3,no-gan --cohort COHORT
                             --budget-steps 300 --preset small --out DIR [--seed 0] [key=value ...]

``compute`` prints a Markdown table of parameters, MACs (all inputs / one input) and forward latency
per slice; ``--append`` adds it, with a line naming the machine, to a Markdown file.
``compare`` trains every method with the same preset, cohort, step budget and seed, evaluates them
on one split, and writes ``DIR/comparison.md`` (Table 1 with all methods, the ablation tables in the
layout of paper Tables 2-4, and the compute table). Methods: ``mmhvae benchmark compare --help``.
"""

from __future__ import annotations

import argparse
import importlib
from datetime import date
from pathlib import Path

DEFAULT_COMPUTE_METHODS = "mmhvae,mvae,concat-zeros,average,mmgan,resvit"
DEFAULT_COMPARE_METHODS = "mmhvae,mvae,mopoe,mhvae,mmgan,resvit,concat-zeros,average,L1,L3,L7,no-gan"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from mmhvae.methods import METHODS

    parser = subparsers.add_parser(
        "benchmark",
        help="compute cost of the methods; train+evaluate several methods under one budget",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="<action>")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    method_help = "comma-separated methods, or 'all': " + ", ".join(METHODS)

    compute = actions.add_parser(
        "compute", help="parameters, MACs and latency per method (Markdown table)",
        description="Measure parameters, MACs (FLOPs/2, torch FlopCounterMode) for all inputs and for one "
        "input, and forward latency per slice, for method presets on a config preset.",
    )
    compute.add_argument("--preset", default="paper", help="config preset: paper, small, tiny (default paper)")
    compute.add_argument("--methods", default=DEFAULT_COMPUTE_METHODS, help=method_help)
    compute.add_argument("--batch-size", type=int, default=1, help="slices per timed forward pass (default 1)")
    compute.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    compute.add_argument("--warmup", type=int, default=2, help="untimed passes (default 2)")
    compute.add_argument("--repeats", type=int, default=5, help="timed passes, median reported (default 5)")
    compute.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    compute.add_argument("--append", type=Path, default=None, metavar="FILE.md",
                         help="also append the table and a machine description to this Markdown file")
    compute.set_defaults(func=run_compute)

    compare = actions.add_parser(
        "compare", help="train + evaluate methods with one budget; paper Tables 1-4 and compute table",
        description="Train every method with the same preset, cohort, step budget and seed, evaluate all on "
        "one split, and write OUT/comparison.md. A rerun with the same OUT resumes unfinished runs.",
    )
    compare.add_argument("--methods", default=DEFAULT_COMPARE_METHODS, help=method_help)
    compare.add_argument("--cohort", required=True, type=Path, help="cohort manifest CSV or folder")
    compare.add_argument("--subjects", type=int, default=None,
                         help="if --cohort does not exist, generate the built-in cohort there with this many subjects")
    compare.add_argument("--budget-steps", type=int, required=True, help="training steps per method")
    compare.add_argument("--preset", default="small", help="config preset or YAML file (default small)")
    compare.add_argument("--out", required=True, type=Path, help="comparison folder")
    compare.add_argument("--seed", type=int, default=0, help="training seed shared by all methods (default 0)")
    compare.add_argument("--split", default="test", help="cohort split to evaluate (default test)")
    compare.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    compare.add_argument("--threads", type=int, default=None,
                         help="CPU threads for torch, per training process (default: torch's)")
    compare.add_argument("--jobs", type=int, default=1,
                         help="methods trained at once in separate processes (default 1); on a CPU keep "
                         "jobs x threads <= cores")
    compare.add_argument("--no-compute", action="store_true", help="skip the compute table")
    compare.add_argument("--figures", action="store_true",
                         help="also draw the evaluator's figures (grids, temperature sweep, latent PCA)")
    compare.add_argument("--no-progress", action="store_true", help="no progress bars")
    compare.add_argument("overrides", nargs="*", metavar="key=value",
                         help="config overrides applied before each method, e.g. train.batch_size=8")
    compare.set_defaults(func=run_compare)

    _add_real_subcommand(actions, method_help)
    _add_downstream_subcommands(actions)


def _add_downstream_subcommands(actions: argparse._SubParsersAction) -> None:
    # The downstream benchmarks (segmentation, registration) live with their own command module.
    try:
        module = importlib.import_module("mmhvae.commands.downstream")
    except ModuleNotFoundError as exc:
        if exc.name == "mmhvae.commands.downstream":
            return
        raise
    hook = getattr(module, "add_benchmark_subcommands", None)
    if hook is not None:
        hook(actions)


# --------------------------------------------------------------------------------------------------


def run_compute(args: argparse.Namespace) -> int:
    import torch

    from mmhvae.compute import machine_description, markdown_table, measure_methods
    from mmhvae.methods import parse_methods

    if args.threads:
        torch.set_num_threads(args.threads)
    methods = parse_methods(args.methods)
    rows = measure_methods(args.preset, methods, args.batch_size, args.device, args.warmup, args.repeats)
    table = markdown_table(rows)
    machine = machine_description(args.device)
    print(table)
    print(f"Measured on: {machine}")
    if args.append is not None:
        block = (
            f"\n### Compute, preset `{args.preset}`, batch {args.batch_size}, {args.device} ({date.today().isoformat()})\n\n"
            f"Measured on: {machine}. MACs = FLOPs/2 (torch FlopCounterMode), per slice; latency = median of "
            f"{args.repeats} forward passes after {args.warmup} warm-up passes, per slice.\n\n{table}"
        )
        with open(args.append, "a") as fh:
            fh.write(block)
        print(f"appended to {args.append}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    import torch

    from mmhvae.cli import UserError
    from mmhvae.compare import run_comparison
    from mmhvae.config import resolve
    from mmhvae.methods import parse_methods

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.budget_steps < 1:
        raise UserError("--budget-steps must be >= 1")
    if args.jobs < 1:
        raise UserError("--jobs must be >= 1")
    methods = parse_methods(args.methods)
    base = resolve(args.preset, [
        *args.overrides,
        f"train.steps={args.budget_steps}",
        f"train.seed={args.seed}",
        f"train.device={args.device}",
    ])
    cohort = args.cohort
    if not cohort.exists():
        if args.subjects is None:
            raise UserError(
                f"{cohort}: cohort not found; give an existing manifest/folder, or --subjects N to generate "
                "the built-in cohort there (or run `mmhvae make-cohort`)"
            )
        from mmhvae.data.phantom import make_cohort

        size = base.model.image_size
        # Slices (along data.slice_axis = 2) at the model's size, so none is resampled or cropped.
        shape = (size, size, max(16, size // 2))
        print(f"[compare] generating the built-in cohort ({args.subjects} subjects, {shape}) in {cohort}")
        cohort = make_cohort(cohort, subjects=args.subjects, seed=args.seed, shape=shape)
    base.data.cohort = str(cohort)
    result = run_comparison(
        base, methods, args.out, split=args.split, progress=not args.no_progress,
        compute=not args.no_compute, figures=args.figures, jobs=args.jobs, threads=args.threads,
    )
    print(result.markdown.read_text())
    print(f"[compare] written {result.markdown}")
    return 0


# --------------------------------------------------------------------------------------------------
# benchmark real (issue 18): train on a cohort, score on separately given test subjects


def _add_real_subcommand(actions: argparse._SubParsersAction, method_help: str) -> None:
    from mmhvae.realbench import DEFAULT_REAL_METHODS

    real = actions.add_parser(
        "real", help="real-data benchmark: train on a cohort, Table 1 on separate test subjects, with references",
        description="Train MMHVAE and the comparisons under one budget and seed on --train (minus the test "
        "subjects), score them and the predict-the-mean / copy-the-nearest-contrast references on the test "
        "subjects (--test COHORT, or --test-subjects named in --train), and write OUT/realbench.md (split, "
        "Table 1, summary, KL per level, training curves, pictures). See docs/real_data.md.",
    )
    real.add_argument("--train", required=True, type=Path, help="training cohort: manifest CSV or folder")
    real.add_argument("--test", type=Path, default=None, help="separate test cohort (manifest CSV or folder)")
    real.add_argument("--test-subjects", default=None, help="comma-separated test subjects (of --test, else of --train)")
    real.add_argument("--val-subjects", default=None,
                      help="comma-separated subjects of --train used for model selection only (never test ones)")
    real.add_argument("--train-subjects", default=None, help="comma-separated: train only on these subjects of --train")
    real.add_argument("--exclude", default=None, help="comma-separated subjects of --train left out entirely")
    real.add_argument("--keep-unreliable", action="store_true",
                      help="keep training/validation subjects whose harmonization is doubtful (e.g. heads that "
                      "are not skull-stripped, without a brain mask); by default they are left out and listed")
    real.add_argument("--methods", default=DEFAULT_REAL_METHODS, help=method_help)
    real.add_argument("--budget-steps", type=int, required=True, help="training steps per method")
    real.add_argument("--preset", default="real-cpu", help="config preset or YAML file (default real-cpu)")
    real.add_argument("--out", required=True, type=Path, help="benchmark folder (a rerun resumes)")
    real.add_argument("--seed", type=int, default=0, help="training seed shared by all methods (default 0)")
    real.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    real.add_argument("--threads", type=int, default=None, help="CPU threads for torch, per training process")
    real.add_argument("--jobs", type=int, default=1, help="methods trained at once in separate processes")
    real.add_argument("--no-references", action="store_true", help="skip the mean-image / nearest-contrast rows")
    real.add_argument("--no-pictures", action="store_true", help="skip the picture grids")
    real.add_argument("--no-progress", action="store_true", help="no progress bars")
    real.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. model.modalities=[us,t1]")
    real.set_defaults(func=run_real)


def run_real(args: argparse.Namespace) -> int:
    import torch

    from mmhvae.cli import UserError
    from mmhvae.config import resolve
    from mmhvae.methods import parse_methods
    from mmhvae.realbench import run_realbench

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.budget_steps < 1:
        raise UserError("--budget-steps must be >= 1")
    base = resolve(args.preset, [*args.overrides, f"train.steps={args.budget_steps}", f"train.seed={args.seed}",
                                 f"train.device={args.device}"])
    result = run_realbench(
        base, parse_methods(args.methods), args.out, args.train, args.test, args.test_subjects,
        args.val_subjects, args.train_subjects, args.exclude, references=not args.no_references,
        pictures=not args.no_pictures, progress=not args.no_progress, jobs=args.jobs, threads=args.threads,
        screen=not args.keep_unreliable,
    )
    print(result.markdown.read_text())
    print(f"[real] written {result.markdown} ({result.seconds / 60:.1f} min)")
    return 0

"""``mmhvae evaluate``: every input subset x every target, paper-style tables and figures."""

from __future__ import annotations

import argparse

from mmhvae.commands.arguments import add_overwrite, positive_float, positive_int, temperature


def _checkpoint(value: str) -> tuple[str, str]:
    if "=" in value:
        name, path = value.split("=", 1)
        return name.strip(), path.strip()
    from pathlib import Path

    p = Path(value)
    return (p.parent.parent.name if p.suffix == ".safetensors" else p.name) or "model", value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score synthesis from every input subset (PSNR, SSIM, LPIPS) on a cohort split",
        description=(
            "Evaluate one or several checkpoints: for every non-empty subset of each subject's available "
            "modalities and every target, PSNR / SSIM / LPIPS, mean (std) over subjects, in CSV and a "
            "Markdown table like the paper's Table 1. With several checkpoints (NAME=PATH), paired Wilcoxon "
            "signed-rank tests with Bonferroni correction mark significant differences to the best."
        ),
    )
    p.add_argument("--checkpoint", action="append", type=_checkpoint, required=True, metavar="[NAME=]PATH",
                   help="run folder or .safetensors; repeat to compare methods")
    p.add_argument("--cohort", required=True, help="manifest CSV or cohort folder")
    p.add_argument("--split", default="test", help="split to evaluate [test]")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--temperature", type=temperature, help="tau >= 0 for synthesis [the model's eval.temperature]")
    p.add_argument("--data-range", type=positive_float, help="fixed PSNR/SSIM data range [per-volume max - min]")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--max-subjects", type=positive_int)
    p.add_argument("--device", default="auto")
    add_overwrite(p, "an existing report in --out")
    p.set_defaults(func=run)


#: What a report folder holds; an existing one needs --overwrite.
REPORT_FILES = ("table.md", "metrics.csv", "summary.csv")


def run(args: argparse.Namespace) -> int:
    import copy

    from mmhvae.errors import UserError, check_device
    from mmhvae.eval.runner import evaluate_checkpoints
    from mmhvae.infer import load_model
    from mmhvae.outputs import OutputFolder

    checkpoints = dict(args.checkpoint)
    if len(checkpoints) != len(args.checkpoint):
        raise UserError("two checkpoints share one name; name them NAME=PATH")
    device = check_device(args.device)
    # All or nothing: the report is written beside --out and moved in when complete.
    with OutputFolder(args.out, overwrite=args.overwrite) as out:
        out.expect(REPORT_FILES)
        models = {name: load_model(path) for name, path in checkpoints.items()}  # every checkpoint checked first
        eval_cfg = copy.deepcopy(next(iter(models.values())).config.eval)
        del models
        if args.temperature is not None:
            eval_cfg.temperature = args.temperature
        if args.data_range is not None:
            eval_cfg.data_range = args.data_range
        if args.no_lpips:
            eval_cfg.lpips = False
        report = evaluate_checkpoints(checkpoints, args.cohort, args.split, out.staging, eval_cfg,
                                      max_subjects=args.max_subjects, figures=not args.no_figures,
                                      device=str(device))
    print(report.table_markdown)
    print(f"\nwrote {out.target / 'table.md'}, metrics.csv, summary.csv and {len(report.figures)} figures")
    return 0

"""``mmhvae evaluate``: every input subset x every target, paper-style tables and figures."""

from __future__ import annotations

import argparse


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
    p.add_argument("--temperature", type=float, help="tau for synthesis [the model's eval.temperature]")
    p.add_argument("--data-range", type=float, help="fixed PSNR/SSIM data range [per-volume max - min]")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--max-subjects", type=int)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import copy

    import torch

    from mmhvae.eval.runner import evaluate_checkpoints
    from mmhvae.infer import load_model

    checkpoints = dict(args.checkpoint)
    if len(checkpoints) != len(args.checkpoint):
        raise ValueError("two checkpoints share one name; name them NAME=PATH")
    eval_cfg = copy.deepcopy(load_model(next(iter(checkpoints.values()))).config.eval)
    if args.temperature is not None:
        eval_cfg.temperature = args.temperature
    if args.data_range is not None:
        eval_cfg.data_range = args.data_range
    if args.no_lpips:
        eval_cfg.lpips = False
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    report = evaluate_checkpoints(checkpoints, args.cohort, args.split, args.out, eval_cfg,
                                  max_subjects=args.max_subjects, figures=not args.no_figures, device=device)
    print(report.table_markdown)
    print(f"\nwrote {report.out_dir / 'table.md'}, metrics.csv, summary.csv and {len(report.figures)} figures")
    return 0

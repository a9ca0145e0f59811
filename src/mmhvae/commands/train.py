"""``mmhvae train``: Algorithm 1 on a cohort, resumable, single process or torchrun/DDP."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on a cohort (manifest CSV or folder)",
        description=(
            "Train MMHVAE (or a baseline via --method) on the 'train' split of a cohort, selecting the best "
            "checkpoint on the 'val' split. Multi-GPU: torchrun --nproc_per_node=K --no-python mmhvae train ..."
        ),
    )
    p.add_argument("--config", default="small", help="preset name (paper, small, tiny) or a YAML file [small]")
    p.add_argument("--cohort", help="manifest CSV or cohort folder (sets data.cohort)")
    p.add_argument("--out", required=True, help="run folder: config.yaml, checkpoints/, metrics.csv, tensorboard/")
    p.add_argument("--method", help="model family or ablation (mmhvae, mvae, mopoe, mhvae, mmgan, resvit, "
                   "concat-zeros, average, L1-L7, no-gan; uhved / uhemis for the 3D segmentation models)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still written)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. train.steps=2000 model.image_size=96")
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace):
    from pathlib import Path

    from mmhvae.config import ExperimentConfig, apply_overrides, resolve

    run_cfg = Path(args.out) / "config.yaml"
    if getattr(args, "resume", False) and run_cfg.is_file():
        cfg = ExperimentConfig.load(run_cfg)  # a resumed run keeps its own resolved config
        return apply_overrides(cfg, list(args.overrides or []))
    cfg = resolve(args.config, [])
    if args.method:
        from mmhvae.methods import apply_method

        cfg = apply_method(cfg, args.method)
    overrides = list(args.overrides or [])
    if args.cohort:
        overrides.append(f"data.cohort={Path(args.cohort).resolve()}")
    return apply_overrides(cfg, overrides)


UHVED_METHODS = ("uhved", "uhemis")


def _run_uhved(args: argparse.Namespace) -> int:
    """``--method uhved|uhemis``: the 3D patch trainer of U-HVED (same as ``mmhvae uhved train``)."""
    from mmhvae.commands.uhved import run_train

    if not args.cohort:
        raise ValueError("--cohort is required with --method uhved")
    config = None if args.config in ("small",) else args.config  # "small" is the MMHVAE default
    ns = argparse.Namespace(
        cohort=args.cohort, out=args.out, config=config, split="train", resume=args.resume,
        no_progress=args.no_progress, overrides=[*args.overrides, f"model.method={args.method}"],
    )
    return run_train(ns)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmhvae.train.trainer import train

    if args.method in UHVED_METHODS:
        return _run_uhved(args)

    cfg = resolve_config(args)
    result = train(cfg, Path(args.out), resume=args.resume, progress=not args.no_progress)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        best = result.history and max(h["val_psnr"] for h in result.history)
        print(f"best checkpoint: {result.best_checkpoint}" + (f" (val PSNR {best:.2f} dB)" if best else ""))
    return 0

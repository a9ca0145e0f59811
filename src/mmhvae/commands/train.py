"""``mmhvae train``: Algorithm 1 on a cohort, resumable, single process or torchrun/DDP.

``--method uhved|uhemis`` trains the 3D U-HVED family (its presets: uhved-tiny, uhved-cpu,
uhved-paper) with the same run folder, checkpoints, logger and exact resume.
"""

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
    p.add_argument("--config", default=None,
                   help="preset name (paper, small, tiny, real-cpu; with --method uhved/uhemis: uhved-tiny, "
                   "uhved-cpu, uhved-paper) or a YAML file [small / uhved-cpu; with --resume: the run's]")
    p.add_argument("--cohort", help="manifest CSV or cohort folder (sets data.cohort)")
    p.add_argument("--out", required=True, help="run folder: config.yaml, checkpoints/, metrics.csv, tensorboard/")
    p.add_argument("--method", help="model family or ablation (mmhvae, mvae, mopoe, mhvae, mmgan, resvit, "
                   "concat-zeros, average, L1-L7, no-gan; uhved / uhemis for the 3D segmentation models)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (with the run's own settings: a "
                   "different --config, --cohort, --method or data/model setting is refused)")
    p.add_argument("--strict", action="store_true",
                   help="refuse a folder cohort with files that match no modality or empty subject folders")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still written)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. train.steps=2000 model.image_size=96")
    p.set_defaults(func=run)


def _override_keys(overrides: list[str]) -> set[str]:
    return {o.split("=", 1)[0].strip() for o in overrides if "=" in o}


def _fresh_config(args: argparse.Namespace, base=None):
    """The config this command line gives: ``--config`` (or ``base``), ``--method``, ``--cohort``, overrides."""
    from pathlib import Path

    from mmhvae.config import apply_overrides, resolve

    cfg = base if base is not None and args.config is None else resolve(args.config or "small", [])
    if args.method and not (base is not None and args.config is None and _same_method(base, args.method)):
        from mmhvae.methods import apply_method

        cfg = apply_method(cfg, args.method)
    overrides = list(args.overrides or [])
    if args.cohort:
        overrides.append(f"data.cohort={Path(args.cohort).expanduser().resolve()}")
    return apply_overrides(cfg, overrides)


def _same_method(cfg, method: str) -> bool:
    """Was the run configured as ``method`` (``apply_method`` names it ``<preset>-<method>``)?"""
    return cfg.name.endswith(f"-{method}") or (cfg.model.method == method and "-" not in cfg.name)


def resolve_config(args: argparse.Namespace):
    from pathlib import Path

    from mmhvae.config import ConfigError, ExperimentConfig
    from mmhvae.checkpoint import check_resume_config

    run_cfg = Path(args.out) / "config.yaml"
    if not (getattr(args, "resume", False) and run_cfg.is_file()):
        return _fresh_config(args)
    saved = ExperimentConfig.load(run_cfg)  # a resumed run keeps its own resolved config
    if args.method and args.config is None and not _same_method(saved, args.method):
        raise ConfigError(
            f"--resume: {args.out} was trained as {saved.name!r} (model.method {saved.model.method!r}), "
            f"not with --method {args.method}; drop --method or train into a new --out"
        )
    given = _fresh_config(args, base=saved)
    source = _source(args, _override_keys(list(args.overrides or [])))
    changed = check_resume_config(Path(args.out), saved.to_dict(), given.to_dict(), source)
    for key, old, new in changed:
        if key != "name":
            print(f"resuming with {key} = {new!r} (was {old!r})")
    given.name = saved.name
    for key in ("spacing", "trained_with_masks"):  # recorded when the run started: keep the run's frame
        if hasattr(saved.data, key) and not getattr(given.data, key):
            setattr(given.data, key, getattr(saved.data, key))
    return given


UHVED_METHODS = ("uhved", "uhemis")


def _source(args: argparse.Namespace, keys: set[str]):
    """``source(key)``: where the command line's value of a setting came from (for resume refusals)."""

    def source(key: str) -> str:
        if key in keys:
            return f"override {key}"
        if key == "data.cohort" and args.cohort:
            return "--cohort"
        if key == "model.method" and args.method:
            return f"--method {args.method}"
        if args.config:
            return f"--config {args.config}" + (f" --method {args.method}" if args.method else "")
        return f"--method {args.method}" if args.method else "the command line"

    return source


def uhved_config(args: argparse.Namespace):
    """The U-HVED config of this command line (``--config``, ``--method``, ``--cohort``, overrides); a
    resumed run keeps its own settings and refuses different ones."""
    from pathlib import Path

    from mmhvae.checkpoint import check_resume_config
    from mmhvae.models.uhved import UHVEDConfig, resolve_uhved_config

    overrides = list(args.overrides or [])
    if args.method:
        overrides.append(f"model.method={args.method}")
    if args.cohort:
        overrides.append(f"data.cohort={Path(args.cohort).expanduser().resolve()}")
    run_cfg = Path(args.out) / "config.yaml"
    if not (args.resume and run_cfg.is_file()):
        return resolve_uhved_config(args.config, overrides)
    saved = UHVEDConfig.load(run_cfg)
    cfg = resolve_uhved_config(args.config, overrides) if args.config else saved.with_overrides(overrides)
    source = _source(args, _override_keys(list(args.overrides or [])))
    check_resume_config(Path(args.out), saved.to_dict(), cfg.to_dict(), source)
    cfg.name = saved.name
    return cfg


def _check_cohort(cohort: str, modalities, aliases, strict: bool) -> None:
    """Warnings about the cohort (files matching no modality, empty folders) before any work; strict refuses."""
    from mmhvae.data.cohort import Cohort
    from mmhvae.errors import ConfigError

    if not cohort:
        raise ConfigError("no cohort: pass --cohort (a manifest CSV or a cohort folder) or set data.cohort")
    Cohort.load(cohort, modalities=modalities, aliases=aliases or None, strict=strict)


def run_uhved(args: argparse.Namespace) -> int:
    """``--method uhved|uhemis`` (and ``mmhvae uhved train``): the 3D patch trainer on the shared stack."""
    import warnings
    from pathlib import Path

    from mmhvae.data.cohort import CohortWarning
    from mmhvae.errors import check_device
    from mmhvae.train.uhved import train_uhved

    cfg = uhved_config(args)
    check_device(cfg.train.device)
    _check_cohort(cfg.data.cohort, cfg.model.modalities, cfg.data.modality_aliases, getattr(args, "strict", False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CohortWarning)  # shown once above
        train_uhved(cfg, Path(args.out), split=getattr(args, "split", "train"), resume=args.resume,
                    progress=not args.no_progress)
    return 0


def _refuse_uhved_preset(config) -> None:
    from mmhvae.config import PRESETS, ConfigError
    from mmhvae.models.uhved import UHVED_PRESETS

    if config in UHVED_PRESETS:
        raise ConfigError(
            f"--config {config} is a U-HVED preset: add --method uhved (or uhemis), or choose an MMHVAE "
            f"preset: {', '.join(PRESETS)}"
        )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmhvae.train.trainer import train

    if args.method in UHVED_METHODS:
        return run_uhved(args)
    _refuse_uhved_preset(args.config)

    import warnings

    from mmhvae.data.cohort import CohortWarning
    from mmhvae.errors import check_device

    cfg = resolve_config(args)
    check_device(cfg.train.device)
    _check_cohort(cfg.data.cohort, cfg.model.modalities, cfg.data.modality_aliases, args.strict)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CohortWarning)  # shown once above
        result = train(cfg, Path(args.out), resume=args.resume, progress=not args.no_progress)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        best = result.history and max(h["val_psnr"] for h in result.history)
        print(f"best checkpoint: {result.best_checkpoint}" + (f" (val PSNR {best:.2f} dB)" if best else ""))
    return 0

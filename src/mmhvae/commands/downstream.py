"""Downstream verbs (DESIGN §6): ``mmhvae export-nnunet``, ``mmhvae register`` and the
``mmhvae benchmark registration`` / ``mmhvae benchmark segmentation`` actions.

    mmhvae export-nnunet --checkpoint RUN --cohort COHORT --out Dataset501_Name [--channels observed+synth]
    mmhvae export-nnunet --checkpoint RUN --cohort COHORT --out Dataset502_SynthUS --synthetic-only us
    mmhvae register --fixed us.nii.gz --moving t2.nii.gz --out DIR [--via-synthesis RUN --synth-modality t2]
    mmhvae benchmark registration --cohort COHORT [--checkpoint RUN] --split test --out DIR
    mmhvae benchmark segmentation --cohort COHORT --checkpoint RUN --out DIR
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

from mmhvae.commands.arguments import add_overwrite
from mmhvae.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    _add_export(sub)
    _add_register(sub)


def add_benchmark_subcommands(actions: argparse._SubParsersAction) -> None:
    """Register ``registration`` and ``segmentation`` under ``mmhvae benchmark``."""
    _add_registration_benchmark(actions)
    _add_segmentation_benchmark(actions)


# --------------------------------------------------------------------------------------------------
# Arguments shared by several verbs
# --------------------------------------------------------------------------------------------------


def _comma_list(text: str) -> list[str]:
    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 2,1; got {text!r}") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 2,1; got {text!r}") from None


def _add_synthesis_options(p: argparse.ArgumentParser) -> None:
    from mmhvae.commands.arguments import positive_int, temperature

    p.add_argument("--temperature", type=temperature, default=None,
                   help="sampling temperature tau >= 0 (0 = deterministic mean; paper 0.5) [checkpoint's eval.temperature]")
    p.add_argument("--batch-size", type=positive_int, default=16, help="slices per synthesis batch (default 16)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


# Defaults of RigidSettings and SegmentationSettings, repeated here so that building the parser
# (``--help``) imports neither SimpleITK nor torch; tests/test_downstream_cli.py checks they agree.
REGISTRATION_DEFAULTS = dict(
    shrink_factors=(2, 1), smoothing_sigmas=(2.0, 1.0), radius=2, iterations=100, learning_rate=2.0
)
SEGMENTATION_DEFAULTS = dict(target="whole", steps=400, batch_size=16)
SEGMENTATION_TARGETS = ("core", "enhancing", "whole")


def _add_registration_options(p: argparse.ArgumentParser) -> None:
    d = REGISTRATION_DEFAULTS
    g = p.add_argument_group("registration (SimpleITK, Euler3D, ANTs neighbourhood correlation)")
    g.add_argument("--shrink-factors", type=_int_list, default=list(d["shrink_factors"]),
                   help=f"pyramid shrink factors, coarsest first (default {','.join(map(str, d['shrink_factors']))})")
    g.add_argument("--smoothing-sigmas", type=_float_list, default=list(d["smoothing_sigmas"]),
                   help=f"Gaussian smoothing per level, mm (default {','.join(f'{s:g}' for s in d['smoothing_sigmas'])})")
    g.add_argument("--radius", type=int, default=d["radius"],
                   help=f"correlation neighbourhood radius, voxels (default {d['radius']})")
    g.add_argument("--iterations", type=int, default=d["iterations"],
                   help=f"iterations per level (default {d['iterations']})")
    g.add_argument("--learning-rate", type=float, default=d["learning_rate"],
                   help=f"initial step, mm (default {d['learning_rate']:g})")
    g.add_argument("--threads", type=int, default=0, help="ITK threads (default: all cores)")


def _settings(args: argparse.Namespace):
    from mmhvae.downstream.registration import RigidSettings

    settings = RigidSettings(
        shrink_factors=tuple(args.shrink_factors), smoothing_sigmas=tuple(args.smoothing_sigmas),
        radius=args.radius, iterations=args.iterations, learning_rate=args.learning_rate,
        threads=args.threads, seed=getattr(args, "seed", 0),
    )
    settings.validate()
    return settings


def _synthesizer(args: argparse.Namespace, checkpoint):
    from mmhvae.downstream import model_synthesizer
    from mmhvae.errors import check_device

    check_device(args.device)

    return model_synthesizer(
        checkpoint, temperature=args.temperature, batch_size=args.batch_size, seed=args.seed, device=args.device
    )


def _load_cohort(path: Path, modalities=None):
    from mmhvae.data.cohort import Cohort

    return Cohort.load(path, modalities=modalities)


def _verb(sub: argparse._SubParsersAction, name: str, func, help: str) -> argparse.ArgumentParser:
    """The parser of a verb (or action) that runs ``func``; ``func``'s docstring is its description."""
    p = sub.add_parser(name, help=help, description=inspect.cleandoc(func.__doc__ or ""))
    p.set_defaults(func=func)
    return p


def _add_outputs(p: argparse.ArgumentParser, out_help: str = "output folder", what: str = "existing outputs") -> None:
    p.add_argument("--out", type=Path, required=True, help=out_help)
    add_overwrite(p, f"{what} in --out")


def _cohort_and_model(args: argparse.Namespace):
    """The cohort (on the model's modalities when ``--checkpoint`` is given) and the synthesizer or None."""
    synthesize, modalities = (None, None)
    if args.checkpoint is not None:
        synthesize, modalities = _synthesizer(args, args.checkpoint)
    return _load_cohort(args.cohort, modalities), synthesize


def _require_modalities(flag: str, names, cohort, source) -> None:
    """Refuse ``names`` (given with ``flag``) that are not modalities of the cohort read from ``source``."""
    unknown = [m for m in names if m not in cohort.modalities]
    if unknown:
        raise UserError(f"{flag} {unknown} are not modalities of {source} ({cohort.modalities})")


def _write_all(args: argparse.Namespace, files: dict) -> None:
    """Every file of ``files`` (name -> ``write(path)``) into ``--out``, or none of them."""
    from mmhvae.outputs import OutputFolder

    with OutputFolder(args.out, overwrite=args.overwrite) as out:
        out.expect(tuple(files))
        for name, write in files.items():
            write(out.staging / name)


# --------------------------------------------------------------------------------------------------
# export-nnunet
# --------------------------------------------------------------------------------------------------


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = _verb(sub, "export-nnunet", run_export, help="write observed + synthesized channels as an nnU-Net v2 dataset")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="trained run folder or .safetensors (needed unless every channel is observed)")
    p.add_argument("--cohort", type=Path, required=True, help="cohort manifest CSV or folder")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--channels", default="observed+synth",
                      help="'observed+synth' (all model modalities) or a comma list such as us,t2 "
                      "(default observed+synth)")
    mode.add_argument("--synthetic-only", type=_comma_list, default=None, metavar="MODS",
                      help="channels always synthesized from the other observed modalities, e.g. us")
    p.add_argument("--labels", choices=["regions", "whole"], default="regions",
                   help="regions: necrotic/oedema/enhancing (1/2/3, BraTS 4 -> 3); whole: one tumour class "
                   "(default regions)")
    p.add_argument("--test-split", default="test", help="cohort split written to imagesTs (default test)")
    _add_outputs(p, "dataset folder, named DatasetXXX_Name", what="an existing dataset")
    _add_synthesis_options(p)


def run_export(args: argparse.Namespace) -> int:
    """Export a cohort as an nnU-Net v2 raw dataset (imagesTr/, labelsTr/, imagesTs/, dataset.json).
    With --channels observed+synth (default) every model modality is a channel: the acquired image when
    present, else its synthesis from the subject's observed modalities. With --synthetic-only us the only
    channel is ultrasound synthesized from the other modalities (paper Table 6: train an ultrasound
    segmenter from MR labels). The dataset is validated after writing.
    """
    from mmhvae.downstream.nnunet_export import TUMOUR_REGIONS, WHOLE_TUMOUR, check_dataset_name, export_nnunet

    from mmhvae.outputs import check_writable

    check_dataset_name(args.out)  # before loading a model: a wrong name is the cheapest error
    check_writable(args.out, overwrite=args.overwrite, replace=True)  # and before any synthesis
    cohort, synthesize = _cohort_and_model(args)
    if args.synthetic_only:
        channels = synthetic = list(args.synthetic_only)
        if synthesize is None:
            raise UserError("--synthetic-only needs --checkpoint (a model to synthesize with)")
    else:
        channels = list(cohort.modalities) if args.channels == "observed+synth" else _comma_list(args.channels)
        synthetic = []
    _require_modalities("channels", channels, cohort, args.cohort)
    print(f"exporting {len(cohort.subjects)} subjects of {args.cohort} to {args.out} with channels {channels}"
          + (f" (always synthetic: {synthetic})" if synthetic else ""))
    summary = export_nnunet(
        cohort.subjects, args.out, channels=channels, synthesize=synthesize, synthetic=synthetic,
        labels=WHOLE_TUMOUR if args.labels == "whole" else TUMOUR_REGIONS, test_splits=(args.test_split,),
        description=f"mmhvae export of {args.cohort}",
        provenance={"checkpoint": str(args.checkpoint) if args.checkpoint else None, "cohort": str(args.cohort),
                    "temperature": args.temperature},
        overwrite=args.overwrite,
    )
    print(f"wrote {args.out}: {len(summary.training)} training and {len(summary.test)} test cases, "
          f"{len(channels)} channel(s); validated as an nnU-Net v2 dataset")
    for name, reason in summary.skipped.items():
        print(f"  skipped {name}: {reason}")
    return 0


# --------------------------------------------------------------------------------------------------
# register
# --------------------------------------------------------------------------------------------------


def _add_register(sub: argparse._SubParsersAction) -> None:
    p = _verb(sub, "register", run_register, help="rigid MR-to-ultrasound registration, directly or via a synthesized MR")
    p.add_argument("--fixed", type=Path, required=True, help="fixed image, e.g. the intra-operative ultrasound")
    p.add_argument("--moving", type=Path, required=True, help="moving image, e.g. the pre-operative T2")
    p.add_argument("--via-synthesis", type=Path, default=None, metavar="CHECKPOINT",
                   help="register to the MR synthesized from the fixed image with this trained model")
    p.add_argument("--synth-modality", default=None, help="modality to synthesize (the moving image's), e.g. t2")
    p.add_argument("--fixed-modality", default="us", help="modality name of the fixed image for the model (default us)")
    p.add_argument("--fixed-mask", default="fov",
                   help="metric region: fov (non-zero sector, for ultrasound), foreground (for MR), none, "
                   "or a mask file (default fov)")
    _add_outputs(p)
    _add_registration_options(p)
    _add_synthesis_options(p)


def run_register(args: argparse.Namespace) -> int:
    """Rigid 6-DoF registration of --moving onto --fixed (SimpleITK Euler3D, ANTs neighbourhood
    correlation, multi-resolution, regular-step gradient descent). With --via-synthesis the MR modality
    --synth-modality is synthesized from the fixed image and the moving image is registered to it
    (mono-modal). Writes OUT/transform.tfm (fixed-to-moving), OUT/moving_registered.nii.gz (on the fixed
    grid) and OUT/registration.json.
    """
    from mmhvae.downstream.registration import register_files

    from mmhvae.errors import InputDataError
    from mmhvae.outputs import check_writable

    for path in (args.fixed, args.moving):
        if not path.is_file():
            raise InputDataError(f"{path}: image file not found")
    protect = [args.fixed, args.moving] + ([Path(args.fixed_mask)] if Path(args.fixed_mask).is_file() else [])
    names = [*REGISTRATION_OUTPUTS] + ([f"synthetic_{args.synth_modality}.nii.gz"] if args.via_synthesis else [])
    # Before any work: writable, and no output over an input or (without --overwrite) an earlier result.
    check_writable(args.out, overwrite=args.overwrite, names=names, protect=protect)
    synthesize = None
    if args.via_synthesis is not None:
        if not args.synth_modality:
            raise UserError("--via-synthesis needs --synth-modality (the moving image's modality, e.g. t2)")
        synthesize, modalities = _synthesizer(args, args.via_synthesis)
        for name, flag in ((args.synth_modality, "--synth-modality"), (args.fixed_modality, "--fixed-modality")):
            if name not in modalities:
                raise UserError(f"{flag} {name!r} is not a modality of {args.via_synthesis} ({modalities})")
    register_files(
        args.fixed, args.moving, args.out, synthesize=synthesize, fixed_modality=args.fixed_modality,
        synth_modality=args.synth_modality, fixed_mask=args.fixed_mask, settings=_settings(args),
    )
    return 0


REGISTRATION_OUTPUTS = ("transform.tfm", "moving_registered.nii.gz", "registration.json")


# --------------------------------------------------------------------------------------------------
# benchmark registration
# --------------------------------------------------------------------------------------------------


def _add_registration_benchmark(actions: argparse._SubParsersAction) -> None:
    p = _verb(actions, "registration", run_registration_benchmark,
              help="TRE of MR-to-ultrasound registration under simulated displacements (paper Table 5)")
    p.add_argument("--cohort", type=Path, required=True, help="cohort manifest CSV or folder")
    p.add_argument("--checkpoint", type=Path, default=None, help="trained model: adds the via-synthesis rows")
    p.add_argument("--split", default="test", help="cohort split (train, val, test or all; default test)")
    p.add_argument("--modalities", type=_comma_list, default=None,
                   help="moving MR modalities (default: every cohort modality but --fixed-modality)")
    p.add_argument("--fixed-modality", default="us", help="the ultrasound modality name (default us)")
    p.add_argument("--ranges", default="0-4,4-8,8-12,12-16",
                   help="displacement ranges in mm (default 0-4,4-8,8-12,12-16)")
    p.add_argument("--repeats", type=int, default=1, help="displacements per range, subject and modality (default 1)")
    p.add_argument("--max-subjects", type=int, default=None, help="use only the first N subjects of the split")
    p.add_argument("--upper-bound", action="store_true",
                   help="also register to the undisplaced acquired MR (a perfect synthesis): the floor of the error")
    p.add_argument("--landmark-step", type=int, default=2,
                   help="TRE landmarks: every N-th brain voxel per axis (default 2)")
    _add_outputs(p)
    _add_registration_options(p)
    _add_synthesis_options(p)


def run_registration_benchmark(args: argparse.Namespace) -> int:
    """For each subject of --split with an ultrasound and MR: displace each MR by random rigid
    transforms whose median displacement over the brain lies in each range, register it back to the
    acquired ultrasound and (with --checkpoint) to the MR synthesized from the ultrasound, and report the
    target registration error over brain landmarks. Writes OUT/registration_tre.csv and
    OUT/registration_table.md.
    """
    from mmhvae.atomic import atomic_write_text
    from mmhvae.downstream.registration import benchmark_registration, parse_ranges, tre_table, write_tre_csv

    from mmhvae.outputs import check_writable

    check_writable(args.out, overwrite=args.overwrite, names=REGISTRATION_BENCHMARK_OUTPUTS)  # before hours of work
    ranges = parse_ranges(args.ranges)
    cohort, synthesize = _cohort_and_model(args)
    if args.fixed_modality not in cohort.modalities:
        raise UserError(
            f"--fixed-modality {args.fixed_modality!r} is not a modality of {args.cohort} ({cohort.modalities})"
        )
    moving = args.modalities or [m for m in cohort.modalities if m != args.fixed_modality]
    _require_modalities("--modalities", moving, cohort, args.cohort)
    subjects = cohort.select(args.split)[: args.max_subjects]
    if not subjects:
        raise UserError(f"{args.cohort}: no subject in split {args.split!r}")
    print(f"registration benchmark: {len(subjects)} subjects ({args.split}), moving {moving}, "
          f"ranges {args.ranges} mm, {args.repeats} draw(s) per range"
          + ("" if synthesize else "; no checkpoint: acquired-ultrasound rows only"))
    rows = benchmark_registration(
        subjects, fixed_modality=args.fixed_modality, modalities=moving, synthesize=synthesize, ranges=ranges,
        repeats=args.repeats, seed=args.seed, settings=_settings(args), landmark_step=args.landmark_step,
        upper_bound=args.upper_bound,
    )
    if not rows:
        raise UserError(f"no subject of split {args.split!r} has both {args.fixed_modality} and one of {moving}")
    table = tre_table(rows, ranges)
    header = (
        f"# Registration TRE (paper Table 5 layout)\n\ncohort `{args.cohort}`, split `{args.split}`, "
        f"checkpoint `{args.checkpoint}`, seed {args.seed}; rigid Euler3D, ANTs neighbourhood correlation "
        f"(radius {args.radius} voxels), shrink {args.shrink_factors}, sigmas {args.smoothing_sigmas} mm; TRE over "
        f"brain landmarks (a grid of one voxel in {args.landmark_step} per axis), mean (std) over registrations.\n\n"
    )
    _write_all(args, {"registration_tre.csv": lambda path: write_tre_csv(rows, path),
                      "registration_table.md": lambda path: atomic_write_text(path, header + table)})
    print(table)
    print(f"wrote {args.out / 'registration_tre.csv'} and {args.out / 'registration_table.md'}")
    return 0


REGISTRATION_BENCHMARK_OUTPUTS = ("registration_tre.csv", "registration_table.md")


# --------------------------------------------------------------------------------------------------
# benchmark segmentation
# --------------------------------------------------------------------------------------------------


def _add_segmentation_benchmark(actions: argparse._SubParsersAction) -> None:
    d = SEGMENTATION_DEFAULTS
    p = _verb(actions, "segmentation", run_segmentation_benchmark,
              help="U-Net trained on synthetic vs acquired ultrasound, tested on acquired (paper Table 6)")
    p.add_argument("--cohort", type=Path, required=True, help="cohort manifest CSV or folder")
    p.add_argument("--checkpoint", type=Path, required=True, help="trained model synthesizing the ultrasound")
    p.add_argument("--train-split", default="train", help="split to train on (default train)")
    p.add_argument("--test-split", default="test", help="split to test on (default test)")
    p.add_argument("--ultrasound", default="us", help="the ultrasound modality name (default us)")
    p.add_argument("--target", choices=SEGMENTATION_TARGETS, default=d["target"],
                   help="tumour region: whole (labels 1-4), core (1, 3, 4) or enhancing (3, 4) (default whole)")
    p.add_argument("--steps", type=int, default=d["steps"], help=f"training steps per condition (default {d['steps']})")
    p.add_argument("--unet-batch-size", type=int, default=d["batch_size"],
                   help=f"slices per step (default {d['batch_size']})")
    p.add_argument("--max-subjects", type=int, default=None, help="use only the first N subjects of each split")
    p.add_argument("--sector-control", action="store_true",
                   help="also train on the ultrasound sector mask alone (no image): the score due to geometry")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    _add_outputs(p)
    _add_synthesis_options(p)


def run_segmentation_benchmark(args: argparse.Namespace) -> int:
    """Train a small MONAI 2D U-Net on ultrasound synthesized from the MR of the training subjects
    (their MR tumour labels), and the same U-Net on their acquired ultrasound; test both on the acquired
    ultrasound of the test subjects. Reports Dice and ASSD (MONAI), median [IQR]. Writes
    OUT/segmentation_scores.csv and OUT/segmentation_table.md.
    """
    import json

    import torch

    from mmhvae.atomic import atomic_write_text
    from mmhvae.downstream.segmentation import (
        SegmentationSettings,
        benchmark_segmentation,
        segmentation_table,
        write_scores_csv,
    )

    from mmhvae.errors import check_device
    from mmhvae.outputs import check_writable

    check_writable(args.out, overwrite=args.overwrite, names=SEGMENTATION_OUTPUTS)  # before hours of training
    if args.threads:
        torch.set_num_threads(args.threads)
    synthesize, modalities = _synthesizer(args, args.checkpoint)
    if args.ultrasound not in modalities:
        raise UserError(f"--ultrasound {args.ultrasound!r} is not a modality of {args.checkpoint} ({modalities})")
    cohort = _load_cohort(args.cohort, modalities)
    train = cohort.select(args.train_split)[: args.max_subjects]
    test = cohort.select(args.test_split)[: args.max_subjects]
    device = str(check_device(args.device))
    settings = SegmentationSettings(target=args.target, steps=args.steps, batch_size=args.unet_batch_size,
                                    seed=args.seed, device=device)
    print(f"segmentation benchmark: train on {len(train)} ({args.train_split}), "
          f"test on {len(test)} ({args.test_split}), "
          f"target {args.target}, {args.steps} steps per condition")
    result = benchmark_segmentation(train, test, synthesize, ultrasound=args.ultrasound, settings=settings,
                                    sector_control=args.sector_control)
    table = segmentation_table(result, title=f"{args.cohort.name} ({args.test_split}, n = {len(result.test_subjects)})")
    header = (
        f"# Ultrasound tumour segmentation (paper Table 6 layout)\n\ncohort `{args.cohort}`, checkpoint "
        f"`{args.checkpoint}`, target `{args.target}`, MONAI 2D U-Net {list(settings.channels)}, {args.steps} steps, "
        f"seed {args.seed}; trained on {len(result.train_subjects)} subjects; Dice and ASSD in 3D inside the "
        f"ultrasound field of view, median [Q1 - Q3] over test subjects.\n\n"
    )
    run = json.dumps({
        "train_subjects": result.train_subjects, "test_subjects": result.test_subjects,
        "skipped": result.skipped, "training_seconds": result.seconds,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.__dict__.items()},
    }, indent=2) + "\n"
    _write_all(args, {"segmentation_scores.csv": lambda path: write_scores_csv(result, path),
                      "segmentation_table.md": lambda path: atomic_write_text(path, header + table),
                      "segmentation_run.json": lambda path: atomic_write_text(path, run)})
    print(table)
    for name, reason in result.skipped.items():
        print(f"  skipped {name}: {reason}")
    print(f"wrote {args.out / 'segmentation_scores.csv'} and {args.out / 'segmentation_table.md'}")
    return 0


SEGMENTATION_OUTPUTS = ("segmentation_scores.csv", "segmentation_table.md", "segmentation_run.json")

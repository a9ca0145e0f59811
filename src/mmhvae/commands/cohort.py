"""``mmhvae make-cohort`` (the built-in phantom cohort) and ``mmhvae cohort summary|montage``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    make = subparsers.add_parser(
        "make-cohort",
        help="write the built-in phantom cohort (NIfTI files + manifest.csv)",
        description=(
            "Generate a deterministic cohort of brain-tumour phantoms with ultrasound, T2, ceT1 and FLAIR "
            "(same seed -> identical files), tumour labels and brain masks, and write OUT/manifest.csv. "
            "Missingness 'remind' mimics the ReMIND cohort (US 100%%, ceT1 94%%, T2 63%%, FLAIR 20%%)."
        ),
    )
    make.add_argument("out", type=Path, help="output folder")
    make.add_argument("--subjects", type=int, default=100, help="number of subjects (default 100)")
    make.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    make.add_argument("--shape", type=int, nargs=3, default=[128, 128, 64], metavar=("X", "Y", "Z"),
                      help="volume shape (default 128 128 64); match it to the model image size")
    make.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("SX", "SY", "SZ"),
                      help="voxel size in mm (default: a 192 x 192 x 160 mm field of view)")
    make.add_argument("--missingness", choices=["remind", "complete"], default="remind",
                      help="which modalities each subject has (default remind)")
    make.add_argument("--workers", type=int, default=None, help="parallel processes (default: all cores, max 8)")
    make.set_defaults(func=run_make_cohort)

    cohort = subparsers.add_parser(
        "cohort",
        help="inspect a cohort (summary, montage)",
        description=(
            "Inspect a cohort given as a manifest CSV or a <root>/<subject>/<subject>-<modality>.nii.gz folder."
        ),
    )
    actions = cohort.add_subparsers(dest="cohort_action", metavar="<action>", required=True)
    summary = actions.add_parser("summary", help="per-modality counts and availability patterns")
    _cohort_arguments(summary)
    summary.set_defaults(func=run_summary)

    montage = actions.add_parser(
        "montage", help="PNG montage of one subject (rows = modalities, columns = slices)",
        description="Draw a subject's modalities and tumour labels, optionally above a real case for comparison.",
    )
    _cohort_arguments(montage)
    montage.add_argument("--subject", required=True, help="subject name")
    montage.add_argument("--out", type=Path, required=True, help="PNG file to write")
    montage.add_argument("--real", type=Path, default=None,
                         help="a real case folder (<case>/<case>-<suffix>.nii.gz) drawn below for comparison")
    montage.add_argument("--columns", type=int, default=5, help="slices per row (default 5)")
    montage.set_defaults(func=run_montage)


def _cohort_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="manifest CSV, or a cohort folder")
    parser.add_argument("--modalities", nargs="+", default=None, help="modality names to use (default: all found)")
    parser.add_argument("--alias", action="append", default=[], metavar="SUFFIX=NAME",
                        help="map a file suffix / column to a modality name, e.g. t2w=t2 (repeatable; "
                             "adds to the built-in BraTS aliases)")


def parse_aliases(items: list[str]) -> dict[str, str]:
    """``["t2w=t2", ...]`` on top of the default aliases of :class:`~mmhvae.config.DataConfig`."""
    from mmhvae.data.cohort import default_aliases

    aliases = default_aliases()
    for item in items:
        suffix, sep, name = item.partition("=")
        if not sep or not suffix.strip() or not name.strip():
            raise ValueError(f"--alias {item!r}: expected SUFFIX=NAME, e.g. t2w=t2")
        aliases[suffix.strip().lower()] = name.strip().lower()
    return aliases


def run_make_cohort(args: argparse.Namespace) -> int:
    import time

    from mmhvae.data.cohort import Cohort
    from mmhvae.data.phantom import make_cohort

    start = time.perf_counter()
    manifest = make_cohort(
        args.out, subjects=args.subjects, seed=args.seed, shape=tuple(args.shape),
        spacing=tuple(args.spacing) if args.spacing else None, missingness=args.missingness,
        workers=args.workers,
    )
    elapsed = time.perf_counter() - start
    print(Cohort.load(manifest).summary())
    print(f"wrote {manifest} in {elapsed:.1f} s")
    return 0


def run_summary(args: argparse.Namespace) -> int:
    from mmhvae.data.cohort import Cohort

    cohort = Cohort.load(args.source, modalities=args.modalities, aliases=parse_aliases(args.alias))
    print(cohort.summary())
    return 0


def run_montage(args: argparse.Namespace) -> int:
    from mmhvae.data.montage import cohort_montage

    if args.columns < 1:
        raise ValueError("--columns must be >= 1")
    out = cohort_montage(
        args.source, args.subject, args.out, real=args.real, modalities=args.modalities,
        aliases=parse_aliases(args.alias), columns=args.columns,
    )
    print(f"wrote {out}")
    return 0

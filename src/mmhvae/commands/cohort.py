"""``mmhvae make-cohort`` (the built-in phantom cohort) and ``mmhvae cohort summary|montage``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    make = subparsers.add_parser(
        "make-cohort",
        help="write the built-in phantom cohort (NIfTI files + manifest.csv)",
        description=(
            "Generate a deterministic cohort of brain-tumour phantoms (anatomy from the MNI152 template "
            "shipped with nilearn, deformed per subject) with ultrasound, T1, T2, ceT1 and FLAIR "
            "(same seed -> identical files), tumour labels and brain masks, and write OUT/manifest.csv. "
            "Missingness 'remind' mimics the ReMIND cohort (US 100%%, ceT1 94%%, T2 63%%, FLAIR 20%%); "
            "'brats' has BraTS's four MR contrasts with random missing ones."
        ),
    )
    make.add_argument("out", type=Path, help="output folder")
    make.add_argument("--subjects", type=int, default=100, help="number of subjects (default 100)")
    make.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    make.add_argument("--shape", type=int, nargs=3, default=[128, 128, 64], metavar=("X", "Y", "Z"),
                      help="volume shape (default 128 128 64); match it to the model image size")
    make.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("SX", "SY", "SZ"),
                      help="voxel size in mm (default: a 192 x 192 x 160 mm field of view)")
    make.add_argument("--missingness", choices=["remind", "brats", "complete"], default="remind",
                      help="which modalities each subject has: remind (us, t2, cet1, flair with ReMIND's "
                           "availability; the default), brats (t1, t2, cet1, flair, each subject missing 0-3 "
                           "at random) or complete (everything)")
    make.add_argument("--modalities", nargs="+", default=None, choices=["us", "t1", "t2", "cet1", "flair"],
                      help="modalities to generate with --missingness brats or complete (default: the "
                           "preset's), e.g. us t1 flair like the RESECT cases")
    make.add_argument("--workers", type=int, default=None, help="parallel processes (default: all cores, max 8)")
    make.add_argument("--overwrite", action="store_true",
                      help="write into a folder that already holds a manifest.csv or NIfTI files")
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
    summary.add_argument("--strict", action="store_true",
                         help="refuse files that match no modality and empty subject folders (default: warn)")
    summary.set_defaults(func=run_summary)

    check = actions.add_parser(
        "check", help="read every file and report every problem at once (exit 1 if any)",
        description="Integrity check: reads every file of the cohort and lists every problem (missing, "
        "truncated or corrupt files, NaN/Inf voxels, 4D images, shape or affine mismatches within a subject, "
        "files matching no modality, empty subject folders, bad manifest rows). Exit status 1 if any.",
    )
    _cohort_arguments(check)
    check.add_argument("--affine-tolerance", type=float, default=1e-3,
                       help="max difference between the affines of one subject's images (default 1e-3)")
    check.set_defaults(func=run_check)

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
            from mmhvae.errors import UserError

            raise UserError(f"--alias {item!r}: expected SUFFIX=NAME, e.g. t2w=t2")
        aliases[suffix.strip().lower()] = name.strip().lower()
    return aliases


def run_make_cohort(args: argparse.Namespace) -> int:
    import time

    from mmhvae.data.cohort import Cohort
    from mmhvae.data.phantom import make_cohort
    from mmhvae.outputs import OutputFolder

    overwrite = getattr(args, "overwrite", False)
    _refuse_existing_cohort(Path(args.out), overwrite)
    start = time.perf_counter()
    # All or nothing: generated beside the target, moved in once every subject is written.
    with OutputFolder(args.out, overwrite=overwrite, flag="make-cohort OUT") as staged:
        make_cohort(
            staged.staging, subjects=args.subjects, seed=args.seed, shape=tuple(args.shape),
            spacing=tuple(args.spacing) if args.spacing else None, missingness=args.missingness,
            workers=args.workers, modalities=args.modalities,
        )
    manifest = Path(args.out) / "manifest.csv"
    elapsed = time.perf_counter() - start
    print(Cohort.load(manifest).summary())
    print(f"wrote {manifest} in {elapsed:.1f} s")
    return 0


def _refuse_existing_cohort(out: Path, overwrite: bool) -> None:
    """A folder that already holds a manifest or NIfTI files is the user's: replaced only with --overwrite."""
    from mmhvae.errors import OutputError

    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: is a file; give a folder for the cohort")
    if overwrite or not out.is_dir():
        return
    held = [p for p in [out / "manifest.csv"] if p.exists()]
    held += [p for p in sorted(out.rglob("*.nii*"))[:3]]
    if held:
        raise OutputError(
            f"{out}: already holds {held[0].name if held[0].name == 'manifest.csv' else 'NIfTI files'} "
            f"({held[0]}); pass --overwrite to write the cohort there anyway, or choose an empty folder"
        )


def run_summary(args: argparse.Namespace) -> int:
    from mmhvae.data.cohort import Cohort

    cohort = Cohort.load(args.source, modalities=args.modalities, aliases=parse_aliases(args.alias),
                         strict=args.strict)
    print(cohort.summary())
    return 0


def run_check(args: argparse.Namespace) -> int:
    from mmhvae.data.cohort import check_cohort

    result = check_cohort(args.source, modalities=args.modalities, aliases=parse_aliases(args.alias),
                          affine_tolerance=args.affine_tolerance)
    print(result.report())
    return 0 if result.ok else 1


def run_montage(args: argparse.Namespace) -> int:
    from mmhvae.data.montage import cohort_montage

    if args.columns < 1:
        from mmhvae.errors import UserError

        raise UserError("--columns must be >= 1")
    out = cohort_montage(
        args.source, args.subject, args.out, real=args.real, modalities=args.modalities,
        aliases=parse_aliases(args.alias), columns=args.columns,
    )
    print(f"wrote {out}")
    return 0

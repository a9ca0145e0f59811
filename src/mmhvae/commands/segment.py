"""``mmhvae segment``: tumour segmentation (and modality completion) with a U-HVED checkpoint.

The same as ``mmhvae uhved predict``; kept as a verb of its own because segmenting a subject from
whatever modalities it has is a user-facing action in itself.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="segment the tumour from any subset of MR modalities (U-HVED checkpoint)",
        description="Sliding-window U-HVED inference on whole volumes: writes seg.nii.gz in the input "
        "geometry plus every completed modality.",
    )
    p.add_argument("--checkpoint", required=True, help="U-HVED run folder or its model.safetensors")
    p.add_argument("--input", action="append", required=True, metavar="MODALITY=PATH",
                   help="an observed modality, repeatable: --input t2=t2.nii.gz --input flair=flair.nii.gz")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--brain-mask", default=None, help="optional brain mask NIfTI for harmonization")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never an input)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="eval.* overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmhvae.commands.uhved import run_predict

    return run_predict(args)

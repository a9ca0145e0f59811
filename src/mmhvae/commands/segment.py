"""``mmhvae segment``: tumour segmentation (and modality completion) with a U-HVED checkpoint.

The same as ``mmhvae uhved predict``; kept as a verb of its own because segmenting a subject from
whatever modalities it has is a user-facing action in itself.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from mmhvae.commands.uhved import add_predict_arguments, run_predict

    p = sub.add_parser(
        "segment",
        help="segment the tumour from any subset of MR modalities (U-HVED checkpoint)",
        description="Sliding-window U-HVED inference on whole volumes: writes seg.nii.gz in the input "
        "geometry plus every completed modality.",
    )
    add_predict_arguments(p)
    p.set_defaults(func=run_predict)

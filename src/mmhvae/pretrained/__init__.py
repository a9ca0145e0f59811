"""The pretrained built-in model: MMHVAE (``small`` preset) trained at length on the built-in cohort.

The built-in cohort (:mod:`mmhvae.data.phantom`, MNI152 anatomy) has no licence restriction, so a
model trained on it can ship with the package: ``builtin-small.safetensors`` (generator weights and
resolved config, ~2.6 MB) and its model card ``builtin-small.md``, which gives the exact commands that
reproduce it (``benchmarks/pretrain_builtin.sh``) and its scores. ``make demo`` shows synthesis from it
beside the model its own short training produces.

Nothing trained on the real cases of ``shared/data/real`` is shipped here (their licences differ).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from mmhvae.errors import CheckpointNotFoundError

HERE = Path(__file__).resolve().parent
BUILTIN_NAME = "builtin-small"


def builtin_path(required: bool = True) -> Optional[Path]:
    """The packaged generator file of the pretrained built-in model (None if absent and not required)."""
    path = HERE / f"{BUILTIN_NAME}.safetensors"
    if path.is_file():
        return path
    if required:
        raise CheckpointNotFoundError(
            f"{path}: the pretrained built-in model is not installed with this copy of mmhvae; "
            "rebuild it with benchmarks/pretrain_builtin.sh"
        )
    return None


def builtin_card() -> Path:
    return HERE / f"{BUILTIN_NAME}.md"


def export_generator(run: str | Path, dest: str | Path, cohort_note: str, which: str = "best") -> Path:
    """Copy a run's ``best`` (or ``last``) generator to ``dest`` for distribution.

    The embedded config keeps every setting of the run except ``data.cohort``, a local path on the
    machine that trained it, which becomes ``cohort_note`` (how to regenerate the cohort). The file is
    re-checked by loading it back.
    """
    from mmhvae.checkpoint import load_trained, read_generator, resolve_checkpoint, save_generator
    from mmhvae.models import build_model

    source = resolve_checkpoint(run, which)
    state, config, metadata = read_generator(source)
    config.data.cohort = cohort_note
    model = build_model(config.model)
    model.load_state_dict(state)
    save_generator(Path(dest), model, config, int(metadata.get("step", 0)), exported_from=source.name)
    load_trained(dest)  # the exported file loads as any checkpoint does
    return Path(dest)


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m mmhvae.pretrained RUN DEST NOTE``: export a run's best generator (see the card)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mmhvae.pretrained", description=export_generator.__doc__)
    parser.add_argument("run", help="run folder written by `mmhvae train`")
    parser.add_argument("dest", help="output .safetensors file")
    parser.add_argument("note", help="replaces data.cohort: how the training cohort is regenerated")
    parser.add_argument("--which", default="best", choices=["best", "last"])
    args = parser.parse_args(argv)
    print(export_generator(args.run, args.dest, args.note, args.which))
    return 0

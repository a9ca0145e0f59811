"""The ``mmhvae`` command: one verb per user-facing action (``mmhvae <verb> --help``).

Each verb lives in ``mmhvae.commands.<module>``, which exposes ``add_parser(subparsers)`` and keeps
its heavy imports inside the command function so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules under mmhvae.commands that register verbs, in the order they appear in --help.
COMMAND_MODULES = [
    "demo",
    "cohort",
    "train",
    "synthesize",
    "evaluate",
    "benchmark",
    "downstream",
    "uhved",
    "segment",
]


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmhvae",
        description="Synthesize missing image modalities from any subset of observed ones (MMHVAE).",
    )
    parser.add_argument("--version", action="version", version=f"mmhvae {_version()}")
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"mmhvae.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"mmhvae.commands.{name}":
                continue  # verb not shipped in this build
            raise
        module.add_parser(sub)
    return parser


def _version() -> str:
    from mmhvae import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, FileNotFoundError) as exc:
        # Input problems (bad file, bad config, unknown modality, ...) are reported, not traced.
        print(f"mmhvae {args.verb}: error: {exc}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

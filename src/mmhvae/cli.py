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


# Kept importable from here (commands raise it for invalid option combinations).
from mmhvae.errors import UserError  # noqa: E402,F401


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmhvae",
        description="Synthesize missing image modalities from any subset of observed ones (MMHVAE).",
    )
    parser.add_argument("--version", action="version", version=f"mmhvae {_version()}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of any error (for bug reports)")
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
    with _one_line_warnings():
        try:
            result = args.func(args)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # noqa: BLE001 - sorted into user errors (one line) and bugs (traceback)
            line = user_error_line(exc)
            if line is None or args.debug:
                raise
            verb = " ".join(v for v in (args.verb, _action(args)) if v)
            print(f"mmhvae {verb}: error: {line}", file=sys.stderr)
            return 1
    return int(result or 0)


def user_error_line(exc: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug (keep the traceback).

    Project errors (:class:`~mmhvae.errors.MmhvaeError`) and operating-system errors (permission,
    existing file, full disk, missing file) are the user's to fix; so is a CUDA device that torch
    cannot find. Plain ``ValueError`` is reported too (library code validates arguments with it),
    with a pointer to ``--debug`` in case it is a bug.
    """
    from mmhvae.errors import MmhvaeError, cuda_unavailable_message, describe_os_error

    if isinstance(exc, MmhvaeError):
        return _one_line(str(exc))
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    text = str(exc)
    if isinstance(exc, (AssertionError, RuntimeError)) and any(
        s in text for s in ("not compiled with CUDA", "No CUDA GPUs", "no NVIDIA driver", "CUDA driver")
    ):
        return cuda_unavailable_message("cuda")
    if type(exc) is ValueError:
        return _one_line(text) + " (run with --debug for the traceback if this looks like a bug)"
    return None


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip()) or "failed"


def _action(args: argparse.Namespace) -> str:
    for key in ("cohort_action", "action", "benchmark_action"):
        value = getattr(args, key, None)
        if isinstance(value, str):
            return value
    return ""


class _one_line_warnings:
    """Print warnings as ``mmhvae: warning: <message>`` (no file and line) while a verb runs."""

    def __enter__(self):
        import warnings

        self._saved = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            print(f"mmhvae: warning: {_one_line(str(message))}", file=file or sys.stderr)

        warnings.showwarning = show
        return self

    def __exit__(self, *exc):
        import warnings

        warnings.showwarning = self._saved
        return False


if __name__ == "__main__":
    sys.exit(main())

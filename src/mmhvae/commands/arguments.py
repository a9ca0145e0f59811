"""Checked argument types shared by the verbs: a bad number is refused by argparse, in one line."""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    """An integer >= 1 (samples, batch sizes, steps, draws, counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def temperature(text: str) -> float:
    """A finite number >= 0 (tau: 0 = deterministic mean output)."""
    return _finite_number(text, ">= 0", "a finite number >= 0 (0 = deterministic)", lambda value: value >= 0)


def positive_float(text: str) -> float:
    """A finite number > 0 (data ranges, sizes)."""
    return _finite_number(text, "> 0", "a finite number > 0", lambda value: value > 0)


def _finite_number(text: str, bound: str, must: str, accept) -> float:
    """``text`` as a finite float that ``accept`` takes; the messages say ``a number {bound}`` and ``must``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number {bound}, got {text!r}") from None
    if not math.isfinite(value) or not accept(value):
        raise argparse.ArgumentTypeError(f"must be {must}, got {text}")
    return value


def add_overwrite(parser: argparse.ArgumentParser, what: str = "existing outputs") -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace {what} (inputs are never overwritten)")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K [auto]")


def add_verb_group(subparsers, name: str, doc: str, help: str):
    """A verb with actions (``mmhvae <name> <action>``): its parser shows ``doc`` and prints its help
    when no action is given. Returns the actions' subparsers."""
    parser = subparsers.add_parser(name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", metavar="<action>")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    return actions

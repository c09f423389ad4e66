"""``argparse`` value types shared by the ``dfine`` subcommands: each parses one command-line
value or raises ``argparse.ArgumentTypeError`` with a message that says what was expected."""

from __future__ import annotations

import argparse

SWEEP_RUNTIMES = ("torch", "onnxruntime", "openvino")
"""Runtimes the decoder-budget sweep can time (:mod:`dfine.budget`)."""
SWEEP_IMAGES = 100  # images of a report's sweep by default (a report stays quick)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from e


def positive_int(text: str) -> int:
    """An integer > 0."""
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    try:
        value = float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from e
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value


def add_budget_arguments(parser: argparse.ArgumentParser, many: bool = False) -> None:
    """``--decoder-layers K`` and ``--num-queries Q``: the decoder's inference budget
    (:meth:`dfine.model.DFINE.set_decoder_budget`); ``many``: lists of values to sweep."""
    what = "values to sweep" if many else "value"
    parser.add_argument(
        "--decoder-layers",
        type=positive_int,
        nargs="+" if many else None,
        metavar="K",
        help=f"run only the first K decoder layers (the reference's eval_idx + 1); {what} "
        "(default: every layer)",
    )
    parser.add_argument(
        "--num-queries",
        type=positive_int,
        nargs="+" if many else None,
        metavar="Q",
        help=f"keep the top Q encoder proposals; {what} (default: the model's, 300)",
    )

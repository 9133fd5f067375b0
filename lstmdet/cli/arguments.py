"""Argument parsing of the ``lstmdet`` command: the parser class and the value types of its options.

Every sub-command's parser is a :class:`Parser`, which reports a usage mistake as one line
(``lstmdet detect: error: --batch-size: expected a positive integer, got 'x'; see lstmdet detect
--help``) and exits with status 2. The type functions here check a value where argparse reads it,
so a rejected value is reported with the flag the user typed, never with an internal field name.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import NoReturn

__all__ = ["Parser", "non_negative_int", "non_negative_number", "positive_int", "positive_number", "unit_interval"]


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr, exit status 2.

    argparse's own report (the whole usage text, then ``argument --images: invalid _positive
    value: 'x'``) is replaced by the error alone, the option it concerns, and where the help is.
    Sub-parsers made by :meth:`add_subparsers` are of this class too.
    """

    def error(self, message: str) -> NoReturn:
        """Print ``message`` as one line naming the command and exit with status 2."""
        message = re.sub(r"^argument (\S+): ", r"\1: ", message)
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def _fail(kind: str, text: str) -> NoReturn:
    raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}")


def _int(text: str, kind: str) -> int:
    try:
        return int(text)
    except ValueError:
        _fail(kind, text)


def _float(text: str, kind: str) -> float:
    try:
        value = float(text)
    except ValueError:
        _fail(kind, text)
    if not math.isfinite(value):
        _fail(kind, text)
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text, "a positive integer")
    if value < 1:
        _fail("a positive integer", text)
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text, "an integer >= 0")
    if value < 0:
        _fail("an integer >= 0", text)
    return value


def positive_number(text: str) -> float:
    """A finite number > 0."""
    value = _float(text, "a number > 0")
    if value <= 0:
        _fail("a number > 0", text)
    return value


def non_negative_number(text: str) -> float:
    """A finite number >= 0."""
    value = _float(text, "a number >= 0")
    if value < 0:
        _fail("a number >= 0", text)
    return value


def unit_interval(text: str) -> float:
    """A number in [0, 1] (a score or IoU threshold)."""
    value = _float(text, "a number in [0, 1]")
    if not 0.0 <= value <= 1.0:
        _fail("a number in [0, 1]", text)
    return value

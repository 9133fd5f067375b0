"""Exceptions that lstmdet raises for mistakes a user can fix, and the warnings it gives.

Every error here is a :class:`LstmdetError`. The CLI prints such errors as one line and exits
with status 2 instead of showing a traceback, so each message says what was wrong and what to do.
Any other exception is a bug: the CLI prints its traceback and exits with status 1. Code that
calls a library which fails on a user's input (a file, a URL, an argument) converts that failure
into an ``LstmdetError`` where it happens, naming the input.

Warnings about a user's data are :class:`LstmdetWarning`; the CLI prints each as one line.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LstmdetError(Exception):
    """Base class of every user-facing lstmdet error."""


class UnknownComponentError(LstmdetError, KeyError):
    """A component name that no loaded plugin registered."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


class UnknownOptionError(LstmdetError):
    """A component was given an option its factory does not take.

    Args:
        option: The unknown option's name.
        message: What was wrong, the closest accepted option and the accepted ones.
    """

    def __init__(self, option: str, message: str) -> None:
        self.option = option
        super().__init__(message)

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # picklable across processes
        return type(self), (self.option, str(self))


class DuplicateComponentError(LstmdetError):
    """Two plugins registered the same name for the same kind of component."""


class ConfigError(LstmdetError, ValueError):
    """A configuration value is missing, of the wrong type or not allowed.

    Args:
        field: Dotted path of the offending field, e.g. ``model.encoder.hidden``.
        message: What is wrong and what is allowed instead.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"config field {field}: {message}")


class OptionError(LstmdetError, ValueError):
    """An option of a component, command or job spec has a value of the wrong type or out of range.

    It is a ``ValueError`` too, so the registry reports it on the component's config section like
    any value a component refuses. :mod:`lstmdet.options` raises it; plugins may raise it for checks
    of their own.

    Args:
        owner: Who takes the option, e.g. ``fcos head``, ``detect job spec``.
        option: The option's name, e.g. ``score_thresh``.
        message: What is wrong and what to pass instead, read after the option's name:
            ``"must be a number in [0, 1], got 1.5"``.
    """

    def __init__(self, owner: str, option: str, message: str) -> None:
        self.owner = owner
        self.option = option
        self.message = message
        super().__init__(f"{owner}: {option} {message}")

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:  # picklable across processes
        return type(self), (self.owner, self.option, self.message)


class AssemblyError(LstmdetError, ValueError):
    """Two parts of a model do not fit together (channels, levels, input size)."""


class CheckpointError(LstmdetError):
    """A checkpoint file is missing, corrupt, of the wrong format or unsafe to load."""


class Cancelled(LstmdetError):
    """A run stopped because its caller asked it to (a cancelled job); it wrote no final files."""


class LstmdetWarning(UserWarning):
    """A warning about the user's data or settings (a clipped box, a skipped file); one line in the CLI."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` with the choice closest to ``name``, or ``""`` when none is close.

    Args:
        name: What the user wrote.
        choices: What is accepted there.
    """
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class ExportError(LstmdetError):
    """A model cannot be exported (ONNX / TorchScript), or an exported file cannot be used; names the part and why."""

"""Exceptions that lstmdet raises for mistakes a user can fix.

Every error here is a :class:`LstmdetError`. The CLI prints such errors as one line and exits
with status 2 instead of showing a traceback, so each message says what was wrong and what to do.
"""

from __future__ import annotations


class LstmdetError(Exception):
    """Base class of every user-facing lstmdet error."""


class UnknownComponentError(LstmdetError, KeyError):
    """A component name that no loaded plugin registered."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


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


class AssemblyError(LstmdetError, ValueError):
    """Two parts of a model do not fit together (channels, levels, input size)."""


class CheckpointError(LstmdetError):
    """A checkpoint file is missing, corrupt, of the wrong format or unsafe to load."""


class Cancelled(LstmdetError):
    """A run stopped because its caller asked it to (a cancelled job); it wrote no final files."""

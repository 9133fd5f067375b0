"""Feature-level names: ``cK`` is the feature map of stride ``2**K`` (``c3``: stride 8).

Backbones name the maps they return this way (``FeatureInfo.name``), and configs choose maps by
these names: ``backbone: {levels: [c3, c4]}``, ``encoder: {levels: [c3]}``, ``head: {levels: ...}``.
:func:`parse_levels` reads such a ``levels`` option, the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lstmdet.options import check_list

__all__ = ["level_name", "parse_levels"]


def level_name(stride: int) -> str:
    """The name of the level of ``stride``, a power of two: ``level_name(8) == "c3"``.

    Raises:
        ValueError: ``stride`` is not a positive power of two.
    """
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1 or stride & (stride - 1):
        raise ValueError(f"a feature level's stride must be a power of two (1, 2, 4, ...), got {stride!r}")
    return f"c{stride.bit_length() - 1}"


def parse_levels(
    value: Any, option: str, owner: str | None = None, *, default: Sequence[str] | None = None
) -> list[str] | None:
    """A ``levels`` option as a list of names; a single name is a list of one.

    Only the form is checked here; whether the levels exist is for the part that provides them.

    Args:
        value: The option as given: ``None``, a name, or a list of names.
        option: Its name (a dotted config field when ``owner`` is ``None``).
        owner: Who takes it, e.g. ``"small_cnn backbone"``; ``None`` for a config field.
        default: What ``None`` stands for; ``None``: ``None`` is returned (all levels).

    Returns:
        The names, in the order given, or ``None``.

    Raises:
        OptionError: Not a non-empty list of names, or a name is repeated (``ConfigError`` when
            ``owner`` is ``None``).
    """
    if value is None:
        return None if default is None else list(default)
    if isinstance(value, str):
        return [value]
    return check_list(
        value, option, owner, of="level names such as ['c3', 'c4']", item=lambda v: isinstance(v, str), unique=True
    )

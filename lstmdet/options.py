"""Checks of option values: one home for lstmdet's components, commands and job specs, and for plugins.

Every checker takes the value, the option's name and its *owner* (who takes the option, e.g.
``"fcos head"``, ``"lstm encoder"``, ``"detect job spec"``), and returns the value (converted where
it says so) or raises an error whose message names the owner, the option, the bad value and what
to pass instead::

    from lstmdet.options import check_choice, check_float, check_int

    class MyHead(nn.Module):
        def __init__(self, in_channels: int, num_classes: int, *, pool: str = "mean", dropout: float = 0.0):
            super().__init__()
            owner = "my_head head"
            self.in_channels = check_int(in_channels, "in_channels", owner, minimum=1)
            self.pool = check_choice(pool, "pool", owner, choices=("mean", "max"))
            self.dropout = check_float(dropout, "dropout", owner, low=0.0, high=1.0, high_open=True)

    # MyHead(8, 3, pool="avg") raises OptionError:
    #   my_head head: pool must be one of mean, max, got 'avg'

Errors:

* With an owner, :class:`~lstmdet.errors.OptionError` (an ``LstmdetError`` and a ``ValueError``):
  ``"{owner}: {option} must be ..., got {value!r}"``. The registry reports it on the component's
  config section (``config field model.head: fcos: ...``); the CLI prints it as one line.
* With ``owner=None`` the option is a dotted config field (``model.neck.channels``) and the error
  is a :class:`~lstmdet.errors.ConfigError` for that field:
  ``"config field model.neck.channels: must be ..., got 0"``.

Numbers: integers are ``int`` or NumPy integers, never ``bool``; numbers are integers or floats
(NumPy's too), never ``bool``, and must be finite.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from lstmdet.errors import ConfigError, LstmdetError, OptionError, did_you_mean

__all__ = [
    "check_bool",
    "check_choice",
    "check_float",
    "check_int",
    "check_list",
    "check_type",
    "is_int",
    "is_number",
]


def is_int(value: Any, *, minimum: int | None = None, maximum: int | None = None) -> bool:
    """Whether ``value`` is an integer (not a ``bool``) in ``[minimum, maximum]``.

    Args:
        value: Anything.
        minimum: Smallest allowed value; ``None``: no lower bound.
        maximum: Largest allowed value; ``None``: no upper bound.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return False
    return bool((minimum is None or value >= minimum) and (maximum is None or value <= maximum))


def is_number(
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> bool:
    """Whether ``value`` is a finite real number (not a ``bool``) within the bounds.

    Args:
        value: Anything.
        low: Lower bound; ``None``: none.
        high: Upper bound; ``None``: none.
        low_open: Exclude ``low`` itself (``value > low``).
        high_open: Exclude ``high`` itself (``value < high``).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return False
    above = low is None or (value > low if low_open else value >= low)
    below = high is None or (value < high if high_open else value <= high)
    return bool(above and below)


def check_int(
    value: Any,
    option: str,
    owner: str | None = None,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    hint: str | None = None,
) -> int:
    """``value`` as an ``int`` if it is an integer in ``[minimum, maximum]``.

    Args:
        value: The option as given.
        option: Its name (a dotted config field when ``owner`` is ``None``).
        owner: Who takes it, e.g. ``"fcos head"``; ``None`` for a config field.
        minimum: Smallest allowed value; ``None``: no lower bound.
        maximum: Largest allowed value; ``None``: no upper bound.
        hint: Appended to the message after ``"; "``.

    Returns:
        ``int(value)``.

    Raises:
        OptionError: Not an integer, or out of range (``ConfigError`` when ``owner`` is ``None``).
    """
    if not is_int(value, minimum=minimum, maximum=maximum):
        raise _error(value, option, owner, _int_requirement(minimum, maximum), hint)
    return int(value)


def check_float(
    value: Any,
    option: str,
    owner: str | None = None,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    hint: str | None = None,
) -> float:
    """``value`` as a ``float`` if it is a finite number within the bounds.

    Args:
        value: The option as given.
        option: Its name (a dotted config field when ``owner`` is ``None``).
        owner: Who takes it, e.g. ``"fcos head"``; ``None`` for a config field.
        low: Lower bound; ``None``: none.
        high: Upper bound; ``None``: none.
        low_open: Exclude ``low`` itself.
        high_open: Exclude ``high`` itself.
        hint: Appended to the message after ``"; "``.

    Returns:
        ``float(value)``.

    Raises:
        OptionError: Not a finite number, or out of range (``ConfigError`` when ``owner`` is ``None``).
    """
    if not is_number(value, low=low, high=high, low_open=low_open, high_open=high_open):
        raise _error(value, option, owner, _number_requirement(low, high, low_open, high_open), hint)
    return float(value)


def check_choice(
    value: Any, option: str, owner: str | None = None, *, choices: Sequence[str], hint: str | None = None
) -> str:
    """``value`` if it is one of ``choices``.

    Args:
        value: The option as given.
        option: Its name (a dotted config field when ``owner`` is ``None``).
        owner: Who takes it, e.g. ``"fcos head"``; ``None`` for a config field.
        choices: The allowed names, listed in the message in this order.
        hint: Appended to the message after ``"; "`` (e.g. what each choice means).

    Returns:
        ``value``.

    Raises:
        OptionError: Any other value (``ConfigError`` when ``owner`` is ``None``).
    """
    if not isinstance(value, str) or value not in choices:
        close = did_you_mean(value, choices) if isinstance(value, str) else ""
        raise _error(value, option, owner, f"one of {', '.join(choices)}", hint, close)
    return value


def check_bool(value: Any, option: str, owner: str | None = None, *, hint: str | None = None) -> bool:
    """``value`` if it is ``True`` or ``False`` (not 0, 1 or a string).

    Args:
        value: The option as given.
        option: Its name (a dotted config field when ``owner`` is ``None``).
        owner: Who takes it; ``None`` for a config field.
        hint: Appended to the message after ``"; "``.

    Returns:
        ``value``.

    Raises:
        OptionError: Not a ``bool`` (``ConfigError`` when ``owner`` is ``None``).
    """
    if not isinstance(value, bool):
        raise _error(value, option, owner, "true or false", hint)
    return value


def check_type(
    value: Any,
    option: str,
    owner: str | None = None,
    *,
    types: type | tuple[type, ...],
    what: str | None = None,
    hint: str | None = None,
) -> Any:
    """``value`` if it is an instance of ``types`` (a ``bool`` only when ``bool`` is listed).

    Args:
        value: The option as given.
        option: Its name (a dotted config field when ``owner`` is ``None``).
        owner: Who takes it; ``None`` for a config field.
        types: Accepted types; ``type(None)`` accepts ``None``.
        what: The accepted values in words; default: the type names joined by ``or``
            (``None`` as ``null``), e.g. ``int or null``.
        hint: Appended to the message after ``"; "``.

    Returns:
        ``value``.

    Raises:
        OptionError: ``value`` has another type (``ConfigError`` when ``owner`` is ``None``).
    """
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        if what is None:
            what = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise _error(value, option, owner, what, hint)
    return value


def check_list(
    value: Any,
    option: str,
    owner: str | None = None,
    *,
    of: str,
    item: Callable[[Any], bool] | None = None,
    length: int | None = None,
    unique: bool = False,
    hint: str | None = None,
) -> list[Any]:
    """``value`` as a list if it is a non-empty sequence (not a string) whose items all pass ``item``.

    Args:
        value: The option as given.
        option: Its name (a dotted config field when ``owner`` is ``None``).
        owner: Who takes it; ``None`` for a config field.
        of: The items in words, plural, e.g. ``"positive numbers"``.
        item: Test of one item, e.g. ``lambda v: is_number(v, low=0, low_open=True)``; default: any.
        length: Exact number of items; default: any number from 1.
        unique: Refuse a list that repeats an item.
        hint: Appended to the message after ``"; "``.

    Returns:
        ``list(value)``.

    Raises:
        OptionError: Not such a list (``ConfigError`` when ``owner`` is ``None``).
    """
    ok = isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) > 0
    ok = ok and (length is None or len(value) == length) and (item is None or all(item(v) for v in value))
    ok = ok and not (unique and len({repr(v) for v in value}) != len(value))
    if not ok:
        shape = f"a list of {length}" if length is not None else "a non-empty list of"
        raise _error(value, option, owner, f"{shape} {of}{' without repeats' if unique else ''}", hint)
    return list(value)


def _error(
    value: Any, option: str, owner: str | None, requirement: str, hint: str | None, close: str = ""
) -> LstmdetError:
    message = f"must be {requirement}, got {value!r}{close}" + (f"; {hint}" if hint else "")
    return ConfigError(option, message) if owner is None else OptionError(owner, option, message)


def _int_requirement(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an integer in [{minimum}, {maximum}]"
    if minimum == 1:
        return "a positive integer"
    if minimum is not None:
        return f"an integer >= {minimum}"
    return "an integer" if maximum is None else f"an integer <= {maximum}"


def _number_requirement(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"a number {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"a number {'<' if high_open else '<='} {high:g}"
    return "a number"

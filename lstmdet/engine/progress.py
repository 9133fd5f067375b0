"""Progress displays of every long CLI step (train, eval, detect, data): one decision, one place.

:func:`progress` looks at the stream the display goes to (stderr by default):

* a **terminal** gets a live tqdm bar, redrawn in place with ``\\r``;
* anything else (a log file, a pipe, a CI console) gets **plain lines**, one every
  :data:`PLAIN_EVERY_FRACTION` of the total or every :data:`PLAIN_EVERY_SECONDS` seconds,
  whichever comes first, and never a ``\\r``::

      digits-det: 250/1000 images (25%), 12.3 images/s, 61 s left

Both objects offer the part of tqdm's interface the engine uses: iteration over a wrapped
iterable, ``update(n)``, ``set_postfix(**values)``, ``close()`` and use as a context manager.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

#: Plain-line mode prints a line each time this share of the total is passed ...
PLAIN_EVERY_FRACTION = 0.1
#: ... or when this many seconds passed since the last line (also when the total is unknown).
PLAIN_EVERY_SECONDS = 30.0


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes and closed streams)."""
    isatty = getattr(stream, "isatty", None)
    if isatty is None:
        return False
    try:
        return bool(isatty())
    except (ValueError, OSError):  # closed or detached stream
        return False


class PlainProgress:
    """Progress as plain, periodic lines: for logs, pipes and files (see the module docstring).

    Args:
        iterable: Iterated over by ``for x in progress``; each item counts one ``unit``.
        total: Units expected (``len(iterable)`` when it has one); ``None``: lines by time only.
        desc: What is progressing, the start of every line (``"digits-det"``, ``"epoch 2/5"``).
        unit: Plural name of a unit (``"images"``, ``"batches"``).
        initial: Units already done before this display started (e.g. a resumed run).
        stream: Where lines go.
        every_fraction: Share of ``total`` between two lines.
        every_seconds: Longest time between two lines while something advances.
        clock: Monotonic time source in seconds (tests pass a fake).
    """

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None = None,
        desc: str,
        unit: str,
        initial: int = 0,
        stream: TextIO,
        every_fraction: float = PLAIN_EVERY_FRACTION,
        every_seconds: float = PLAIN_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.initial = initial
        self.stream, self.every_fraction, self.every_seconds, self.clock = stream, every_fraction, every_seconds, clock
        self.postfix: dict[str, Any] = {}
        self.started = self.last_time = clock()
        self.last_n = initial
        self.closed = False
        self._next_mark = self._mark_after(initial)

    def _mark_after(self, n: int) -> float:
        """The count at which the next share-of-total line is due."""
        if not self.total:
            return float("inf")
        step = self.total * self.every_fraction
        return (int(n / step) + 1) * step

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress display wraps no iterable; call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done; print a line when one is due."""
        self.n += n
        now = self.clock()
        if self.n >= self._next_mark or now - self.last_time >= self.every_seconds:
            self._print(now)

    def set_postfix(self, **values: Any) -> None:
        """Values appended to the following lines as ``key=value`` (``loss=0.1234``), as tqdm shows them."""
        self.postfix = {k: v for k, v in values.items() if v is not None}

    def line(self, now: float | None = None) -> str:
        """The progress line for the current state."""
        now = self.clock() if now is None else now
        elapsed = now - self.started
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: {self.n}"
        if self.total:
            text += f"/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f", {rate:.1f} {self.unit}/s"
        if self.total and rate > 0 and self.n < self.total:
            text += f", {(self.total - self.n) / rate:.0f} s left"
        for key, value in self.postfix.items():
            text += f", {key}={value}"
        return text

    def _print(self, now: float) -> None:
        self.stream.write(self.line(now) + "\n")
        self.stream.flush()
        self.last_time, self.last_n = now, self.n
        self._next_mark = self._mark_after(self.n)

    def close(self) -> None:
        """Print a last line when something advanced since the previous one (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if self.n != self.last_n:
            self._print(self.clock())


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str,
    initial: int = 0,
    enabled: bool = True,
    leave: bool = True,
    stream: TextIO | None = None,
) -> Any:
    """The progress display of a long step: a tqdm bar on a terminal, else :class:`PlainProgress`.

    Args:
        iterable: Wrapped and iterated over (each item one unit); ``None``: call ``update()``.
        total: Units expected (default ``len(iterable)``).
        desc: What is progressing (``"detect"``, ``"epoch 1/5"``).
        unit: Plural name of a unit (``"images"``, ``"batches"``).
        initial: Units already done (a resumed run).
        enabled: False gives a silent display with the same interface.
        leave: Terminal bar only: keep the finished bar on screen.
        stream: Where the display goes (default: ``sys.stderr`` at call time).

    Returns:
        An object with ``update``, ``set_postfix``, ``close``, iteration and ``with`` support.
    """
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return tqdm(iterable, total=total, initial=initial, disable=True)
    if is_terminal(stream):
        return tqdm(
            iterable, total=total, desc=desc, unit=unit, initial=initial, file=stream, leave=leave,
            dynamic_ncols=True, smoothing=0.1,
        )  # fmt: skip
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, stream=stream)

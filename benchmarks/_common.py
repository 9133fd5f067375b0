"""Helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``: this folder is on sys.path)."""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence


def _cpu_counters() -> tuple[int, int] | None:
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return values[3] + values[4], sum(values)


def wait_until_idle(threshold: float = 0.9, window: float = 0.25, timeout: float = 20.0) -> bool:
    """Wait until the CPU was idle for ``threshold`` of a ``window`` (Linux); False on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        before = _cpu_counters()
        if before is None:
            return True
        time.sleep(window)
        after = _cpu_counters()
        if after is None or (after[0] - before[0]) / max(1, after[1] - before[1]) >= threshold:
            return True
    return False


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, interpolated linearly (as ``numpy.percentile``)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

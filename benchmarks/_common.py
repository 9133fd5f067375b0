"""Helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``: this folder is on sys.path)."""

from __future__ import annotations

import time


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

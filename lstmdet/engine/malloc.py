"""Keep freed memory in the process during inference (glibc only).

glibc's ``malloc`` serves blocks above a threshold (128 KiB at first) with their own ``mmap`` and
gives them back to the system on ``free``, and it trims the heap once 128 KiB at its top are free.
A detector allocates and frees activations of a few MB on every batch, so each batch maps fresh
pages and faults them in again, which costs a large share of the model's time on CPU; the
thresholds below avoid it (figures: ``benchmarks/RESULTS.md``, "Batch detection", the
"Allocator" step). The cost is that freed memory up to those thresholds stays with the process,
which is then reused by the next batch.

Set ``LSTMDET_MALLOC_TUNING=0`` to leave the allocator alone. Elsewhere than glibc nothing happens.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks below this come from the heap and are reused (glibc's largest allowed value on 64 bit).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free memory at the top of the heap kept before it is returned to the system.
TRIM_THRESHOLD = 64 * 1024 * 1024

_tuned: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); True when they are set.

    Called by batch detection before its first batch. Process-wide and harmless to repeat.
    """
    global _tuned
    if _tuned is None:
        _tuned = _tune()
    return _tuned


def _tune() -> bool:
    if os.environ.get("LSTMDET_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols, libc's among them (no ldconfig run)
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1

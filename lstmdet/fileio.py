"""Atomic file writes: a reader sees the old file or the complete new one, never half a file.

Each write goes to a temporary file in the target's folder (so the final ``os.replace`` is a rename
on one file system) and is renamed over the target only when it is complete; on any error the
temporary file is removed and the target is left as it was. Temporary names are unique per process,
thread and call (``.{name}.{pid}.{thread}.{random}.tmp``), so concurrent writers of the same target
(two workers, two threads) never write into each other's temporary file: the last rename wins.

The parent folder must exist. Nothing is ``fsync``-ed: the rename protects readers and crashed
writers, not against a power failure.

:func:`remove_outputs` removes the named outputs of an earlier run from a folder (``--exist-ok``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_open",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "remove_outputs",
]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that takes a file name (``torch.save``, ...).

    On leaving the block without an error the temporary file is renamed to ``path``; on an error
    it is removed (if it was created at all) and the error propagates.

    Args:
        path: The final file.

    Yields:
        The temporary path; it does not exist yet.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; renamed to ``path`` when the block succeeds.

    Args:
        path: The final file.
        mode: ``"w"`` (text, UTF-8) or ``"wb"``.

    Yields:
        The open temporary file.
    """
    with atomic_path(path) as tmp, tmp.open(mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
        yield f


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically, as UTF-8."""
    with atomic_open(path) as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 2) -> None:
    """Write ``data`` as JSON (``indent`` spaces; ``None``: one line) and a newline, atomically."""
    atomic_write_text(path, json.dumps(data, indent=indent) + "\n")


def remove_outputs(folder: str | os.PathLike, names: tuple[str, ...] | list[str]) -> list[str]:
    """Remove the entries ``names`` (files, or folders with their contents) directly inside ``folder``.

    What ``--exist-ok`` does before a command writes into a folder again: only the outputs the
    command itself writes are named, so anything else in the folder stays. A symbolic link is
    removed, not followed.

    Args:
        folder: The output folder (may be missing).
        names: Entry names inside it, e.g. ``("annotations.json", "images")``.

    Returns:
        The names that existed and were removed.
    """
    removed = []
    for name in names:
        path = Path(folder) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed

"""Output paths: atomic file writes, and the checks of output folders and files given by a user.

:func:`prepare_folder` and :func:`prepare_file` are the one place a command readies a path it was
told to write to (``--out``, ``OUT``): a file where a folder belongs, a folder where a file belongs
or a path the system refuses to create is an :class:`~lstmdet.errors.LstmdetError` naming the path,
not an ``OSError`` from deep inside a writer.

Atomic writes: a reader sees the old file or the complete new one, never half a file.

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

from lstmdet.errors import LstmdetError

__all__ = [
    "atomic_open",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "prepare_file",
    "prepare_folder",
    "remove_outputs",
]


def prepare_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create the output folder ``path`` (and its parents) unless it exists; refuse a path that cannot be one.

    Args:
        path: The folder.
        what: How the user named it, for messages: ``"--out"``, ``"output folder"``.

    Returns:
        ``Path(path)``, an existing folder.

    Raises:
        LstmdetError: ``path`` or one of its parents is an existing file, or the folder cannot be
            created (no permission, a read-only or virtual file system such as ``/proc``).
    """
    path = Path(path)
    problem = _folder_problem(path)
    if problem:
        raise LstmdetError(f"{what} {path}: {problem}; choose a folder you can write to (it is created when missing)")
    return path


def prepare_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Check that ``path`` can be written as a file and create its parent folders.

    Args:
        path: The file to be written (it may exist: it will be replaced).
        what: How the user named it, for messages: ``"--out"``, ``"OUT_JSON"``.

    Returns:
        ``Path(path)``.

    Raises:
        LstmdetError: ``path`` is an existing folder, or its folder cannot be made (see :func:`prepare_folder`).
    """
    path = Path(path)
    if path.is_dir():
        raise LstmdetError(f"{what} {path} is a folder; name the file to write, e.g. {path / 'out.json'}")
    problem = _folder_problem(path.parent)
    if problem:
        raise LstmdetError(f"{what} {path} cannot be written: its folder {path.parent}: {problem}; choose another path")
    return path


def _folder_problem(path: Path) -> str | None:
    """Create folder ``path`` (with parents); ``None`` when it is a writable folder, else what is wrong."""
    blocker = next((p for p in (path, *path.parents) if p.exists() or p.is_symlink()), None)
    if blocker is not None and not blocker.exists():
        return f"{'it' if blocker == path else blocker} is a broken symbolic link"
    if blocker is not None and not blocker.is_dir():
        return f"{'it' if blocker == path else blocker} is an existing file, not a folder"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create it ({exc.strerror or exc})"
    if not os.access(path, os.W_OK | os.X_OK):
        return "it is not writable by this user"
    return None


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

"""Job specs: the JSON a job carries, validated, with every path checked against the data roots.

A spec is checked twice: by the client before it is queued and by the worker before it runs, so a
spec that reached Redis some other way is refused too. Every path (inputs, outputs, weights, the
data paths inside a training config) must resolve, after following symbolic links, inside one of
``LSTMDET_DATA_ROOTS``; paths are stored resolved, so a worker on another host with the same
mounts reads exactly what was checked.

Specs by kind:

* ``train``: ``{"config": {...}, "out": DIR, "resume": false}``: the config as a dict (read and
  ``--set`` applied by the client), so the worker needs no config file.
* ``detect``: ``{"src": DIR, "out": DIR, "weights": CKPT or null (``"default"`` becomes null: the
  shipped model), "options": {DetectOptions}, "shard_size": 256, "chunk_frames": 256,
  "warmup_frames": 16}``: images in shards of ``shard_size``, video files in chunks of
  ``chunk_frames`` frames (:mod:`lstmdet.engine.video_chunks`).
* ``eval``: ``{"weights": CKPT or "default", "data": {...} or null, "out": FILE or null, "batch_size": 16,
  "device": "auto"}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lstmdet.errors import LstmdetError
from lstmdet.options import check_bool, check_int, check_type
from lstmdet.pretrained import is_pretrained_name

KINDS = ("train", "detect", "eval")
#: Images per detect shard: each shard pays for starting its loader processes (a few tenths of a
#: second), so shards should hold a few seconds of work; smaller ones spread better over workers.
DEFAULT_SHARD_SIZE = 256
#: ``--weights`` name of the model shipped with lstmdet (``lstmdet.checkpoint.DEFAULT_WEIGHTS``; not imported:
#: the client side runs without torch). It is no path, so it is not checked against the data roots.
SHIPPED = "default"
#: Keys of dataset options whose string values are file or folder paths.
DATA_PATH_KEYS = frozenset({"root", "annotations", "images", "names", "mnist_root", "path"})


class PathRefused(LstmdetError):
    """A job names a path outside the allowed data roots."""


def check_path(path: str | os.PathLike, roots: Sequence[Path], what: str) -> str:
    """``path`` resolved (symbolic links followed); refused unless inside one of ``roots``.

    Args:
        path: The path as the user gave it.
        roots: Allowed folders (resolved).
        what: What the path is, for the message (e.g. ``detect src``).

    Raises:
        PathRefused: No roots are configured, or the path lies outside all of them.
    """
    if not roots:
        raise PathRefused(
            f"{what} {path}: no data roots are configured, so jobs may not touch any path; set LSTMDET_DATA_ROOTS "
            "to the colon-separated folders jobs may read and write (the same on clients and workers)"
        )
    resolved = Path(path).expanduser().resolve()
    if not any(resolved == root or root in resolved.parents for root in roots):
        raise PathRefused(
            f"{what} {path} resolves to {resolved}, which is outside the allowed data roots "
            f"({':'.join(str(r) for r in roots)}); move it under a root or add its folder to LSTMDET_DATA_ROOTS"
        )
    return str(resolved)


def _data_paths(section: Any, field: str) -> Iterator[tuple[str, dict, str]]:
    """``(field, owner dict, key)`` of every path-valued dataset option under ``section``."""
    if isinstance(section, dict):
        for key, value in section.items():
            if key in DATA_PATH_KEYS and isinstance(value, str):
                yield f"{field}.{key}", section, key
            else:
                yield from _data_paths(value, f"{field}.{key}")


def _path(spec: dict[str, Any], key: str, job: str) -> str:
    """The path string ``spec[key]``; missing or of another type is an error naming ``job`` and the key."""
    return check_type(spec.get(key), key, job, types=str, what="a path (a string)")


def validate_spec(kind: str, spec: dict[str, Any], roots: Sequence[Path]) -> dict[str, Any]:
    """A checked copy of ``spec`` with every path resolved inside ``roots``.

    Raises:
        LstmdetError: Unknown kind, a missing or mistyped field, or an option the engine refuses.
        PathRefused: A path outside the data roots.
    """
    if kind not in KINDS:
        raise LstmdetError(f"unknown job kind {kind!r}; use one of {', '.join(KINDS)}")
    if not isinstance(spec, dict):
        raise LstmdetError(f"a {kind} job spec must be a JSON object, got {type(spec).__name__}")
    spec = json.loads(json.dumps(spec))  # a deep copy that is sure to be JSON
    job = f"{kind} job spec"
    if kind == "train":
        from lstmdet.config import load_config

        config = load_config(check_type(spec.get("config"), "config", job, types=dict, what="a mapping"))
        for field, owner, key in _data_paths(config.get("data"), "data"):
            owner[key] = check_path(owner[key], roots, f"train config {field}")
        return {
            "config": config,
            "out": check_path(_path(spec, "out", job), roots, "train --out"),
            "resume": check_bool(spec.get("resume", False), "resume", job),
        }
    if kind == "detect":
        from lstmdet.engine.detect_options import DetectOptions
        from lstmdet.engine.video_chunks import DEFAULT_CHUNK_FRAMES, DEFAULT_WARMUP_FRAMES

        weights = spec.get("weights")
        shipped = weights is None or weights == SHIPPED
        return {
            "src": check_path(_path(spec, "src", job), roots, "detect SRC"),
            "out": check_path(_path(spec, "out", job), roots, "detect --out"),
            "weights": None if shipped else _weights(str(weights), roots, "detect --weights"),
            "options": DetectOptions.from_json(spec.get("options") or {}).to_json(),
            "shard_size": check_int(spec.get("shard_size", DEFAULT_SHARD_SIZE), "shard_size", job, minimum=1),
            "chunk_frames": check_int(_given(spec, "chunk_frames", DEFAULT_CHUNK_FRAMES), "chunk_frames", job,
                                      minimum=1),
            "warmup_frames": check_int(_given(spec, "warmup_frames", DEFAULT_WARMUP_FRAMES), "warmup_frames", job,
                                       minimum=0),
        }  # fmt: skip
    data = spec.get("data")
    if data is not None:
        if not isinstance(data, dict) or "name" not in data:
            raise LstmdetError("eval job spec: data must be a dataset spec with a name, e.g. {name: mnist_idx}")
        for field, owner, key in _data_paths(data, "data"):
            owner[key] = check_path(owner[key], roots, f"eval {field}")
    out = spec.get("out")
    weights = _path(spec, "weights", job)
    return {
        "weights": weights if weights == SHIPPED else _weights(weights, roots, "eval --weights"),
        "data": data,
        "out": None if out is None else check_path(str(out), roots, "eval --out"),
        "batch_size": check_int(spec.get("batch_size", 16), "batch_size", job, minimum=1),
        "device": str(spec.get("device", "auto")),
    }


def _given(spec: dict[str, Any], key: str, default: Any) -> Any:
    """``spec[key]``, or ``default`` when it is missing or ``None``."""
    value = spec.get(key)
    return default if value is None else value


def _weights(value: str, roots: Sequence[Path], what: str) -> str:
    """A checkpoint path checked against the data roots, or a ``torchvision:<builder>`` name as it is (its
    weights come from the worker's torch hub cache, not from the data)."""
    if is_pretrained_name(value):
        return value
    return check_path(value, roots, what)

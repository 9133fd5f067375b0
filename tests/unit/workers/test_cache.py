"""The model cache of a worker process: loaded once, reloaded when rewritten, least recently used dropped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import save_tiny

from lstmdet.workers.cache import ModelCache

# --- model cache ----------------------------------------------------------------------------------------------------


def test_cache_default_model_loaded_once():
    cache = ModelCache(size=1)
    first = cache.get(None, "cpu")
    assert cache.get(None, "cpu") is first
    assert cache.loads == 1


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("cache")
    return save_tiny(folder / "a.pt"), save_tiny(folder / "b.pt"), save_tiny(folder / "c.pt")


def test_cache_reloads_rewritten_checkpoint(checkpoints, tmp_path):
    path = tmp_path / "a.pt"
    path.write_bytes(checkpoints[0].read_bytes())
    cache = ModelCache(size=2)
    first = cache.get(str(path), "cpu")
    assert cache.get(str(path), "cpu") is first and cache.loads == 1
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert cache.get(str(path), "cpu") is not first
    assert cache.loads == 2


def test_cache_evicts_least_recently_used(checkpoints):
    a, b, c = (str(p) for p in checkpoints)
    cache = ModelCache(size=1)
    cache.get(a, "cpu")
    cache.get(b, "cpu")
    assert cache.loads == 2
    cache.get(a, "cpu")  # evicted by b: loaded again
    assert cache.loads == 3
    lru = ModelCache(size=2)
    for weights in (a, b, a, c):  # a was used after b, so c evicts b
        lru.get(weights, "cpu")
    assert lru.loads == 3
    lru.get(a, "cpu")
    assert lru.loads == 3
    lru.get(b, "cpu")
    assert lru.loads == 4


def test_cache_key_includes_device(checkpoints):
    cache = ModelCache(size=4)
    cache.get(str(checkpoints[0]), "cpu")
    cache.get(str(checkpoints[0]), "auto")
    assert cache.loads == 2

"""Shared fixtures: the real MNIST-10k split, seeds and threads."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from helpers import RedisServer

from lstmdet.data.mnist import mnist_split


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def mnist():
    """The MNIST-10k protocol split: {"train": (uint8 (8000,28,28), labels), "test": (2000 ...)}."""
    return mnist_split()


def pytest_collection_modifyitems(config, items):
    """Tests that start (or share) the private Redis server are marked ``redis``; tests marked ``gpu``
    need CUDA: on a machine without it they are reported as skipped."""
    for item in items:
        if "redis_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.redis)
    if torch.cuda.is_available():
        return
    no_cuda = pytest.mark.skip(reason="marked gpu and this machine has no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(no_cuda)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private ``redis-server`` on a free loopback port for the session (callers empty its databases)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()

"""Fixtures of the workers' unit tests: a private ``redis-server`` and settings that point at it.

Tests that use :func:`redis_server` (directly or through :func:`redis_settings`) are marked
``redis``: they need the ``redis-server`` binary, but start no worker processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import RedisServer

from lstmdet.workers.settings import Settings


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that starts (or shares) the private Redis server as ``redis``."""
    for item in items:
        if "redis_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.redis)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One ``redis-server`` for the session (emptied by :func:`redis_settings` before each test)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_settings(redis_server: RedisServer, tmp_path) -> Settings:
    """Broker in db 0 and job records in db 1 of the private server (both emptied); ``tmp_path`` is the data root."""
    import redis

    for db in (0, 1):
        client = redis.Redis.from_url(redis_server.url(db))
        client.flushdb()
        client.close()
    return Settings(
        broker_url=redis_server.url(0),
        result_url=redis_server.url(1),
        data_roots=(tmp_path.resolve(),),
        soft_time_limit=20,
        time_limit=25,
        visibility_timeout=30,
        result_expires=3600,
    )


@pytest.fixture
def take() -> Iterator[Callable[..., Any]]:
    """``take(app, queue="cpu")``: deliver one message of ``queue`` without acknowledging it (a worker that took it).

    The message then sits in kombu's ``unacked`` hash exactly as one a worker holds. The consumers
    stay open until the test ends (closing one would restore its message, as kombu does when a
    worker shuts down cleanly), and are closed then, while the server still runs.
    """
    opened: list[Any] = []

    def deliver(app: Any, queue: str = "cpu") -> Any:
        connection = app.connection_for_read()
        simple = connection.SimpleQueue(queue, no_ack=False)
        opened.append((connection, simple))
        return simple.get(timeout=5)

    yield deliver
    for connection, simple in reversed(opened):
        try:
            simple.close()
            connection.release()
        except Exception:  # the test may have stopped the server
            pass

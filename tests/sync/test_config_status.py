"""Bad configuration fails at start; unreachable servers do not; status from the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from localbroker import Broker, ConfigurationError
from localbroker.sync import (
    MemoryTarget,
    MongoStore,
    NatsJetStream,
    PostgresStore,
    RedisStreams,
    SyncConfigurationError,
    SyncTarget,
    from_env,
)
from tests.servers.mongo import MongoServer
from tests.servers.nats import NatsServer
from tests.servers.postgres import PostgresServer
from tests.servers.redis import RedisServer
from tests.sync.conftest import FAST
from tests.sync.helpers import cli_sync_status, invoke, publish_n


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: RedisStreams("http://localhost:6379"), "cannot use URL"),
        (lambda: RedisStreams("redis://h:6379", batch_size=0), "batch_size"),
        (lambda: RedisStreams("redis://h:6379", inbound_start="middle"), "inbound_start"),
        (lambda: MongoStore("mongodb://localhost:notaport/"), "cannot use URL"),
        (lambda: MongoStore("postgres://localhost"), "cannot use URL"),
        # Unacknowledged writes would let the cursor move past events the server never stored.
        (lambda: MongoStore("mongodb://h/", write_concern=0), "write_concern"),
        (lambda: PostgresStore("mongodb://h/x"), "cannot use DSN"),
        (lambda: PostgresStore("host=h port=5432 dbname"), "cannot use DSN"),
        # A server that crashes would lose commits the mirror counted as stored.
        (lambda: PostgresStore("postgresql://h/x", synchronous_commit="off"), "synchronous_commit"),
        (lambda: PostgresStore(), "dsn: Field required"),
        (lambda: NatsJetStream("redis://localhost"), "cannot use URL"),
        (lambda: NatsJetStream("nats://h", stream="A.B"), "stream"),
        (lambda: NatsJetStream("nats://h", subject_prefix="events"), "subject_prefix"),
        (lambda: NatsJetStream("nats://h", inbound_topics=["pay..x"]), "inbound_topics"),
        (lambda: NatsJetStream("nats://h", max_deliver=0), "max_deliver"),
    ],
)
def test_unusable_options_raise_at_construction(make, needle: str) -> None:
    with pytest.raises(SyncConfigurationError, match=needle) as info:
        make()
    assert isinstance(info.value, ConfigurationError)


@pytest.mark.redis
async def test_key_that_is_not_a_stream_fails_start_and_frees_the_directory(
    data_dir: Path, redis_server: RedisServer, rclient: redis.Redis
) -> None:
    async with Broker(data_dir) as broker:
        await broker.publish("order.placed", {"n": 1})
    rclient.set("events:order.placed", "not a stream")
    with pytest.raises(SyncConfigurationError, match=r"'events:order\.placed' holds a string"):
        async with Broker(data_dir, sync=[RedisStreams(redis_server.url)]):
            pass
    rclient.delete("events:order.placed")
    rclient.hset("events:payment.done", "a", "b")
    with pytest.raises(SyncConfigurationError, match="WRONGTYPE"):
        async with Broker(
            data_dir, sync=[RedisStreams(redis_server.url, inbound_topics=["payment.done"])]
        ):
            pass
    async with Broker(data_dir) as broker:  # the failed starts left no lock behind
        assert broker.log.next_offset == 1


@pytest.mark.redis
async def test_wrong_credentials_fail_start(
    data_dir: Path, redis_server: RedisServer, rclient: redis.Redis
) -> None:
    rclient.acl_setuser("app", enabled=True, passwords=["+right"], commands=["+@all"], keys=["*"])
    url = f"redis://app:wrong@127.0.0.1:{redis_server.port}/0"
    with pytest.raises(SyncConfigurationError, match="authentication failed") as info:
        async with Broker(data_dir, sync=[RedisStreams(url)]):
            pass
    assert "wrong" not in str(info.value)  # the password is not shown


async def test_no_sync_configured_needs_no_server(data_dir: Path) -> None:
    async with Broker(data_dir) as broker:
        await broker.publish("a.b", {})
        assert broker.sync_status() == {}
    result = await invoke("sync", "status", "--data", str(data_dir))
    assert result.exit_code == 0
    assert "no sync target" in result.output


@pytest.mark.redis
@pytest.mark.mongo
@pytest.mark.postgres
@pytest.mark.nats
async def test_sync_status_shows_every_target(
    data_dir: Path,
    redis_server: RedisServer,
    mongo_server: MongoServer,
    mongo_db: Any,
    postgres_server: PostgresServer,
    pg_schema: str,
    nats_server: NatsServer,
) -> None:
    targets: list[SyncTarget[Any]] = [
        RedisStreams(redis_server.url, **FAST),
        MongoStore(mongo_server.url, database=mongo_db.name, **FAST),
        PostgresStore(postgres_server.url, db_schema=pg_schema, **FAST),
        NatsJetStream(nats_server.url, **FAST),
        MemoryTarget(**FAST),
    ]
    async with Broker(data_dir, sync=targets) as broker:
        await publish_n(broker, "every.target", 20)
        for target in targets:
            await target.wait_mirrored()
            await target.save()
        status = await cli_sync_status(data_dir)
        table = (await invoke("sync", "status", "--data", str(data_dir))).output
    assert {name: (s["kind"], s["target"]) for name, s in status.items()} == {
        t.name: (t.kind, t.describe()) for t in targets
    }
    states = {name: (s["running"], s["connected"], s["cursor"]) for name, s in status.items()}
    assert states == dict.fromkeys(
        ("memory", "mongo", "nats", "postgres", "redis"), (True, True, 20)
    )
    for target in targets:
        assert target.name in table


def test_targets_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert from_env() == []
    monkeypatch.setenv("LOCALBROKER_REDIS_URL", "redis://cache:6379/1")
    monkeypatch.setenv("LOCALBROKER_REDIS_INBOUND_TOPICS", '["payment.done"]')
    monkeypatch.setenv("LOCALBROKER_MONGO_URL", "mongodb://db:27017/shop")
    monkeypatch.setenv("LOCALBROKER_MONGO_EVENTS_TTL", "3600")
    monkeypatch.setenv("LOCALBROKER_POSTGRES_DSN", "postgresql://app:secret@db:5433/shop")
    monkeypatch.setenv("LOCALBROKER_POSTGRES_DB_SCHEMA", "billing")
    monkeypatch.setenv("LOCALBROKER_NATS_URL", "nats://hub:4222")
    monkeypatch.setenv("LOCALBROKER_NATS_INBOUND_TOPICS", '["refund.*"]')
    monkeypatch.setenv("LOCALBROKER_NATS_STREAM", "SHOP")
    redis_target, mongo_target, postgres_target, nats_target = from_env()
    assert isinstance(redis_target, RedisStreams)
    assert redis_target.config.inbound_topics == ("payment.done",)
    assert isinstance(mongo_target, MongoStore)
    assert mongo_target.config.events_ttl == 3600
    # A None keyword is a value where the option takes None (no TTL), not "use the default".
    assert MongoStore("mongodb://db:27017/shop", events_ttl=None).config.events_ttl is None
    assert mongo_target.db.name == "shop"
    assert isinstance(postgres_target, PostgresStore)
    assert postgres_target.describe() == "postgres db:5433/shop schema billing"  # no password
    assert isinstance(nats_target, NatsJetStream)
    assert nats_target.describe() == "nats nats://hub:4222 stream SHOP"
    assert nats_target.config.inbound_topics == ("refund.*",)

"""Bad configuration fails at start; unreachable servers do not; status from the CLI."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from localbroker import Broker, ConfigurationError
from localbroker.sync import MongoStore, RedisStreams, SyncConfigurationError, from_env
from tests.servers.ports import free_port
from tests.servers.redis import RedisServer
from tests.sync.conftest import FAST
from tests.sync.helpers import invoke, publish_n, stream_ids
from tests.waiting import wait_until


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


@pytest.mark.redis
async def test_unreachable_at_start_then_catches_up(
    data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    binary = RedisServer.binary_path()
    assert binary is not None or pytest.skip("no redis-server")
    server = RedisServer(binary, tmp_path / "late-redis", port=free_port())
    target = RedisStreams(server.url, connect_timeout=0.3, **FAST)
    with caplog.at_level(logging.WARNING, logger="localbroker.sync"):
        async with Broker(data_dir, sync=[target]) as broker:
            ids = await publish_n(broker, "late.start", 50)  # publish does not wait for Redis
            status = broker.sync_status()["redis"]
            assert status["connected"] is False
            assert status["backlog"] == 50
            assert status["last_error"]
            server.start()
            try:
                await wait_until(lambda: target.status()["backlog"] == 0, what="catch up")
                client = redis.Redis.from_url(server.url)
                assert stream_ids(client, "events:late.start") == ids
                client.close()
            finally:
                server.stop()
    assert sum("failed" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.redis
async def test_cli_sync_status(data_dir: Path, redis_server: RedisServer) -> None:
    target = RedisStreams(redis_server.url, **FAST)
    async with Broker(data_dir, sync=[target]) as broker:
        await publish_n(broker, "cli.status", 30)
        await wait_until(lambda: target.status()["backlog"] == 0)
        await target.save()
        # From another process, beside the running broker:
        script = Path(sys.executable).parent / "localbroker"
        result = await asyncio.to_thread(
            subprocess.run,
            [str(script), "sync", "status", "--data", str(data_dir), "--json"],
            capture_output=True,
            check=True,
        )
        status = json.loads(result.stdout)["redis"]
        assert status["connected"] is True
        assert status["running"] is True
        assert status["cursor"] == 30
        assert status["backlog"] == 0
        table = await invoke("sync", "status", "--data", str(data_dir))
        assert "connected" in table.output
    # Events published while no target runs show up as backlog.
    async with Broker(data_dir) as broker:
        await publish_n(broker, "cli.status", 5)
    result = await invoke("sync", "status", "--data", str(data_dir), "--json")
    status = json.loads(result.output)["redis"]
    assert status["backlog"] == 5
    assert status["running"] is False


async def test_no_sync_configured_needs_no_server(data_dir: Path) -> None:
    async with Broker(data_dir) as broker:
        await broker.publish("a.b", {})
        assert broker.sync_status() == {}
    result = await invoke("sync", "status", "--data", str(data_dir))
    assert result.exit_code == 0
    assert "no sync target" in result.output


def test_targets_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert from_env() == []
    monkeypatch.setenv("LOCALBROKER_REDIS_URL", "redis://cache:6379/1")
    monkeypatch.setenv("LOCALBROKER_REDIS_INBOUND_TOPICS", '["payment.done"]')
    monkeypatch.setenv("LOCALBROKER_MONGO_URL", "mongodb://db:27017/shop")
    monkeypatch.setenv("LOCALBROKER_MONGO_EVENTS_TTL", "3600")
    redis_target, mongo_target = from_env()
    assert isinstance(redis_target, RedisStreams)
    assert redis_target.config.inbound_topics == ("payment.done",)
    assert isinstance(mongo_target, MongoStore)
    assert mongo_target.config.events_ttl == 3600
    assert mongo_target.db.name == "shop"

"""Redis Streams: the sync target contract, and what only Redis has (stream entry fields,
XACK-less redelivery after a crash, reused ids)."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from localbroker import Broker
from localbroker.sync import RedisStreams
from tests.servers.redis import RedisServer
from tests.sync.conftest import FAST
from tests.sync.contract import Backend, SyncTargetContract
from tests.sync.helpers import log_ids
from tests.waiting import wait_until

pytestmark = pytest.mark.redis

GROUP = "shop"


def inbound(url: str, topic: str = "payment.done", **options: Any) -> RedisStreams:
    """A target of service ``shop`` consuming ``topic``, reading often."""
    return RedisStreams(
        url, service=GROUP, inbound_topics=[topic], block=0.1, **{**FAST, **options}
    )


class RedisBackend(Backend):
    has_inbound = True

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.url = server.url

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def target(self, **options: Any) -> RedisStreams:
        return RedisStreams(self.url, **{**FAST, **options})

    def child_target(self, **options: Any) -> tuple[str, dict[str, Any]]:
        return "RedisStreams", {"url": self.url, **options}

    def events(self) -> list[dict[str, Any]]:
        """The entries of every ``events:*`` stream written by a mirror (those with a
        ``producer`` field), in entry id order."""
        entries = []
        with self.client() as client:
            for key in client.scan_iter("events:*", _type="stream"):
                for entry_id, raw in client.xrange(key):
                    fields = {k.decode(): v.decode() for k, v in raw.items()}
                    if "producer" in fields:
                        entries.append((tuple(map(int, entry_id.split(b"-"))), fields))
        return [
            {
                **{k: fields.get(k) for k in ("id", "topic", "key", "correlation_id",
                                              "causation_id", "service", "producer")},
                "time": datetime.fromisoformat(fields["time"]),
                "version": int(fields["version"]),
                "headers": orjson.loads(fields["headers"]),
                "data": orjson.loads(fields["data"]),
                "offset": int(fields["offset"]),
            }
            for _, fields in sorted(entries, key=lambda e: e[0])
        ]  # fmt: skip

    def inbound_target(self, topic: str, **options: Any) -> RedisStreams:
        return inbound(self.url, topic, **options)

    def produce(self, topic: str, data: dict[str, Any], event_id: str | None = None) -> str:
        fields = {"data": json.dumps(data), **({"id": event_id} if event_id else {})}
        with self.client() as client:
            return client.xadd(f"events:{topic}", fields).decode()  # type: ignore[arg-type]

    def produce_malformed(self, topic: str) -> str:
        with self.client() as client:
            return client.xadd(f"events:{topic}", {"order_id": "o3", "amount": "5"}).decode()

    def pending(self, topic: str) -> int:
        with self.client() as client:
            return int(client.xpending(f"events:{topic}", GROUP)["pending"])

    def readers(self, topic: str) -> int:
        with self.client() as client:
            try:
                return len(client.xinfo_consumers(f"events:{topic}", GROUP))
            except redis.ResponseError:  # no group yet
                return 0

    def abandon(self, topic: str, count: int) -> None:
        with self.client() as client:
            client.xgroup_create(f"events:{topic}", GROUP, id="0", mkstream=True)
            taken = client.xreadgroup(GROUP, "dead-instance", {f"events:{topic}": ">"}, count=count)
            assert len(taken[0][1]) == count


class TestRedisContract(SyncTargetContract):
    @pytest.fixture
    def backend(self, redis_server: RedisServer) -> RedisBackend:
        return RedisBackend(redis_server)


STREAM = "events:payment.done"


async def test_entry_fields_as_a_plain_client_reads_them(
    data_dir: Path, redis_server: RedisServer, rclient: redis.Redis
) -> None:
    target = RedisStreams(redis_server.url, **FAST)
    async with Broker(data_dir, sync=[target]) as broker:
        one = await broker.publish(
            "user.created", {"name": "Ann"}, key="u1", headers={"trace": "t-1"}
        )
        await target.wait_mirrored()
    ((_entry_id, raw),) = rclient.xrange("events:user.created")
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    assert fields == {
        "id": one.id,
        "topic": "user.created",
        "time": fields["time"],
        "version": "1",
        "key": "u1",
        "correlation_id": one.id,  # no causation_id: a field that is None is left out
        "headers": '{"trace":"t-1"}',
        "data": '{"name":"Ann"}',
        "service": target.service,
        "producer": target.producer,
        "offset": str(one.offset),
    }
    assert datetime.fromisoformat(fields["time"]).tzinfo is not None


async def test_redelivery_after_crash_before_xack_is_not_appended_twice(
    data_dir: Path, redis_server: RedisServer, rclient: redis.Redis
) -> None:
    target = inbound(redis_server.url)
    hang = asyncio.Event()

    async def never_ack() -> None:  # the process "dies" between the append and the XACK
        if target.inbound.unacked:
            await hang.wait()

    target.inbound._ack_unacked = never_ack
    async with Broker(data_dir, sync=[target]):
        for i in range(20):
            rclient.xadd(STREAM, {"id": f"p{i}", "data": json.dumps({"n": i})})
        await wait_until(lambda: target.inbound.ledger.received == 20)
    assert rclient.xpending(STREAM, "shop")["pending"] == 20

    target = inbound(redis_server.url)
    async with Broker(data_dir, sync=[target]):
        await wait_until(lambda: rclient.xpending(STREAM, "shop")["pending"] == 0)
        rclient.xadd(STREAM, {"id": "p20", "data": "{}"})
        await wait_until(lambda: target.inbound.ledger.received == 1)
        assert target.inbound.ledger.duplicates == 20
    assert log_ids(data_dir) == [f"p{i}" for i in range(21)]


async def test_reused_id_with_other_data_is_logged_and_dropped(
    data_dir: Path,
    redis_server: RedisServer,
    rclient: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def conflicts() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and "reuses event id" in r.getMessage()
        ]

    def add(n: int) -> str:
        return rclient.xadd(STREAM, {"id": "pay-7", "data": json.dumps({"n": n})}).decode()

    with caplog.at_level(logging.WARNING, logger="localbroker.sync"):
        target = inbound(redis_server.url)
        async with Broker(data_dir, sync=[target]):
            await wait_until(lambda: RedisBackend(redis_server).readers("payment.done"))
            first = add(1)
            await wait_until(lambda: target.inbound.ledger.received == 1)
            add(1)  # the same event sent again: a duplicate, silently dropped
            other = add(2)  # another event under the same id
            # Entries not read yet are not pending either: wait for both to be counted.
            await wait_until(lambda: target.inbound.ledger.duplicates == 2, what="both counted")
            await wait_until(lambda: rclient.xpending(STREAM, "shop")["pending"] == 0)
            status = target.status()["inbound"]
        assert status["duplicates_dropped"] == 2
        assert status["conflicts"] == 1
        (warning,) = conflicts()
        assert f"entry {other} of {STREAM} reuses event id 'pay-7'" in warning
        assert f"{STREAM}/{first}" in warning  # where the event of that id came from
        # After a restart the id is still known (read back from the log).
        target = inbound(redis_server.url)
        async with Broker(data_dir, sync=[target]):
            again = add(3)
            await wait_until(lambda: target.inbound.ledger.conflicts == 1, what="the reuse noticed")
    assert f"entry {again} of {STREAM}" in conflicts()[-1]
    assert log_ids(data_dir) == ["pay-7"]

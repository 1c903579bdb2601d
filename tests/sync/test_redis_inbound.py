"""Inbound from Redis Streams: consumer groups, XACK after the durable append, no duplicates."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from localbroker import Broker, Event
from localbroker.sync import RedisStreams
from tests.servers.redis import RedisServer
from tests.sync.conftest import FAST
from tests.sync.helpers import log_ids
from tests.waiting import wait_until

pytestmark = pytest.mark.redis

STREAM = "events:payment.done"


def inbound(url: str, **options: Any) -> RedisStreams:
    return RedisStreams(
        url, service="shop", inbound_topics=["payment.done"], block=0.1, **FAST, **options
    )


async def test_plain_producer_event_is_received_once_and_acked_after_append(
    data_dir: Path, redis_server: RedisServer, rclient: redis.Redis
) -> None:
    target = inbound(redis_server.url)
    broker = Broker(data_dir, sync=[target])
    received: list[Event] = []

    @broker.subscriber("payment.done", name="orders")
    async def on_payment(event: Event) -> None:
        received.append(event)

    async with broker:
        pending_at_append: list[int] = []
        original = broker.publish_many

        async def spy(events: Any) -> Any:
            # When the append starts, Redis must still hold the entries as pending (not acked).
            pending_at_append.append(rclient.xpending(STREAM, "shop")["pending"])
            results = await original(events)
            assert set(log_ids(data_dir)) >= {r.id for r in results}  # in the log on return
            return results

        broker.publish_many = spy  # type: ignore[method-assign]
        # What a service without localbroker writes, with plain redis-py:
        rclient.xadd(
            STREAM,
            {
                "id": "pay-1",
                "data": json.dumps({"order_id": "o1", "amount": 12}),
                "key": "o1",
                "headers": json.dumps({"trace": "x"}),
            },
        )
        rclient.xadd(STREAM, {"data": json.dumps({"order_id": "o2"})})  # the smallest form
        await wait_until(lambda: len(received) == 2, what="both events delivered")
        await wait_until(lambda: rclient.xpending(STREAM, "shop")["pending"] == 0)
        # Nothing can come twice now: Redis has nothing left to deliver again, the mirror has
        # looked at both records (it would have sent them back by now) and the subscriber has
        # handled whatever the log holds.
        await wait_until(lambda: target.status()["backlog"] == 0, what="the mirror")
        await broker.wait_idle()
        status = broker.sync_status()["redis"]["inbound"]

    assert len(received) == 2
    first, second = received
    assert first.id == "pay-1"
    assert first.key == "o1"
    assert first.payload() == {"order_id": "o1", "amount": 12}
    assert first.headers["trace"] == "x"
    assert first.headers["origin"].startswith(f"redis:{STREAM}/")
    assert second.payload() == {"order_id": "o2"}
    assert second.id.startswith(f"{STREAM}/")
    assert sum(pending_at_append) >= 2
    assert status["received"] == 2
    assert rclient.xlen(STREAM) == 2, "an inbound event was mirrored back"


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
        await wait_until(lambda: target.inbound.received == 20)
    assert rclient.xpending(STREAM, "shop")["pending"] == 20

    target = inbound(redis_server.url)
    async with Broker(data_dir, sync=[target]):
        await wait_until(lambda: rclient.xpending(STREAM, "shop")["pending"] == 0)
        rclient.xadd(STREAM, {"id": "p20", "data": "{}"})
        await wait_until(lambda: target.inbound.received == 1)
        assert target.inbound.duplicates == 20
    assert log_ids(data_dir) == [f"p{i}" for i in range(21)]


def consumers(client: redis.Redis) -> list[Any]:
    """The consumers of the group ``shop`` on ``STREAM`` (none while there is no group)."""
    try:
        return list(client.xinfo_consumers(STREAM, "shop"))
    except redis.ResponseError:
        return []


def recorder(into: list[int]) -> Any:
    async def handler(event: Event) -> None:
        into.append(event.payload()["n"])

    return handler


async def test_two_instances_split_the_stream(
    tmp_path: Path, redis_server: RedisServer, rclient: redis.Redis
) -> None:
    handled: dict[str, list[int]] = {"a": [], "b": []}
    brokers = []
    for name in ("a", "b"):
        broker = Broker(
            tmp_path / name, sync=[inbound(redis_server.url, inbound_batch=50, outbound=False)]
        )

        broker.subscribe(recorder(handled[name]), "payment.done", name="orders")
        brokers.append(broker)
    async with brokers[0], brokers[1]:
        await wait_until(lambda: len(consumers(rclient)) == 2, what="both instances reading")
        for lo in range(0, 2000, 100):
            with rclient.pipeline(transaction=False) as pipe:
                for n in range(lo, lo + 100):
                    pipe.xadd(STREAM, {"data": json.dumps({"n": n})})
                pipe.execute()
            await asyncio.sleep(0.01)  # a producer's pace: both instances get to read
        await wait_until(lambda: len(handled["a"]) + len(handled["b"]) >= 2000)
        # Nothing can come twice now: every entry is acknowledged (after its append), so Redis
        # delivers none again, and each instance has handled what its log holds.
        await wait_until(lambda: rclient.xpending(STREAM, "shop")["pending"] == 0)
        for broker in brokers:
            await broker.wait_idle()
    everything = handled["a"] + handled["b"]
    assert sorted(everything) == list(range(2000)), Counter(everything).most_common(3)
    assert handled["a"]
    assert handled["b"]
    assert rclient.xpending(STREAM, "shop")["pending"] == 0


async def test_pending_entries_of_a_dead_instance_are_claimed(
    data_dir: Path, redis_server: RedisServer, rclient: redis.Redis
) -> None:
    rclient.xgroup_create(STREAM, "shop", id="0", mkstream=True)
    for n in range(100):
        rclient.xadd(STREAM, {"id": f"e{n}", "data": json.dumps({"n": n})})
    # Another instance read them and died before acknowledging any.
    taken = rclient.xreadgroup("shop", "dead-instance", {STREAM: ">"}, count=1000)
    assert len(taken[0][1]) == 100
    target = inbound(redis_server.url, claim_idle=0.3, claim_interval=0.1)
    broker = Broker(data_dir, sync=[target])
    seen: list[str] = []

    @broker.subscriber("payment.done", name="orders")
    async def on_payment(event: Event) -> None:
        seen.append(event.id)

    async with broker:
        await wait_until(lambda: len(seen) == 100, what="claimed entries delivered")
        await wait_until(lambda: rclient.xpending(STREAM, "shop")["pending"] == 0)
        claimed = target.inbound.claimed
    assert sorted(seen) == sorted(f"e{n}" for n in range(100))
    assert claimed == 100


async def test_entry_without_data_is_rejected_logged_and_acked(
    data_dir: Path,
    redis_server: RedisServer,
    rclient: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = inbound(redis_server.url)
    with caplog.at_level(logging.WARNING, logger="localbroker.sync"):
        async with Broker(data_dir, sync=[target]):
            await wait_until(lambda: consumers(rclient), what="the group reading")
            bad = rclient.xadd(STREAM, {"order_id": "o3", "amount": "5"}).decode()
            rclient.xadd(STREAM, {"id": "ok-1", "data": json.dumps({"order_id": "o4"})})
            await wait_until(lambda: target.inbound.received == 1, what="the good entry")
            # Acknowledged, so it neither comes back nor holds back the group.
            await wait_until(lambda: rclient.xpending(STREAM, "shop")["pending"] == 0)
            status = target.status()["inbound"]
    assert log_ids(data_dir) == ["ok-1"]
    assert status["rejected"] == 1
    assert status["last_rejected"].startswith(f"{STREAM} {bad}: ")
    assert "no 'data' field" in status["last_rejected"]
    (line,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert f"entry {bad} of {STREAM}" in line.getMessage()
    assert "'data'" in line.getMessage()
    assert rclient.xlen(STREAM) == 2, "the refused entry stays in the stream"


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
            await wait_until(lambda: consumers(rclient), what="the group reading")
            first = add(1)
            await wait_until(lambda: target.inbound.received == 1)
            add(1)  # the same event sent again: a duplicate, silently dropped
            other = add(2)  # another event under the same id
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
            await wait_until(lambda: target.inbound.conflicts == 1, what="the reuse noticed")
    assert f"entry {again} of {STREAM}" in conflicts()[-1]
    assert log_ids(data_dir) == ["pay-7"]

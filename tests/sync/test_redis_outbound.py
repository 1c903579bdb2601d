"""Outbound mirror to Redis Streams: every event once, through outages and crashes."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import orjson
import pytest
import redis

from localbroker import Broker
from localbroker.sync import RedisStreams
from tests.servers.redis import RedisServer
from tests.sync.conftest import FAST
from tests.sync.helpers import publish_n, stream_ids
from tests.waiting import wait_until

pytestmark = pytest.mark.redis


async def test_mirror_10k_events_with_full_envelope(
    data_dir: Path, redis_server: RedisServer, rclient: redis.Redis
) -> None:
    target = RedisStreams(redis_server.url, **FAST)
    async with Broker(data_dir, sync=[target]) as broker:
        ids = await publish_n(broker, "order.placed", 9_999)
        one = await broker.publish(
            "user.created", {"name": "Ann"}, key="u1", headers={"trace": "t-1"}
        )
        await wait_until(lambda: target.status()["backlog"] == 0, what="mirror to catch up")
        status = broker.sync_status()["redis"]
    assert stream_ids(rclient, "events:order.placed") == ids
    (entry,) = rclient.xrange("events:user.created")
    fields = {k.decode(): v.decode() for k, v in entry[1].items()}
    assert fields["id"] == one.id
    assert fields["key"] == "u1"
    assert fields["correlation_id"] == one.id
    assert "causation_id" not in fields
    assert orjson.loads(fields["headers"]) == {"trace": "t-1"}
    assert orjson.loads(fields["data"]) == {"name": "Ann"}
    assert fields["topic"] == "user.created"
    assert fields["version"] == "1"
    assert fields["offset"] == str(one.offset)
    assert status["connected"] is True
    assert status["cursor"] == one.offset + 1
    assert status["sent"] == 10_000


async def test_outage_5k_events_arrive_exactly_once(
    data_dir: Path,
    redis_server: RedisServer,
    rclient: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = RedisStreams(redis_server.url, **FAST)
    async with Broker(data_dir, sync=[target]) as broker:
        before = await publish_n(broker, "outage.test", 100)
        await wait_until(lambda: target.status()["backlog"] == 0)
        redis_server.stop()
        with caplog.at_level(logging.WARNING, logger="localbroker.sync"):
            during = await publish_n(broker, "outage.test", 5_000, start=100)
            await wait_until(lambda: not target.status()["connected"], what="outage noticed")
            assert target.status()["backlog"] == 5_000
            redis_server.start()
            await wait_until(lambda: target.status()["backlog"] == 0, what="catch up")
        warnings = [r for r in caplog.records if "failed" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
        assert "from offset 100" in warnings[0].getMessage()
    stored = stream_ids(rclient, "events:outage.test")
    assert stored == before + during


async def test_lost_reply_is_not_sent_twice(
    data_dir: Path, redis_server: RedisServer, rclient: redis.Redis
) -> None:
    """A batch Redis applied but whose confirmation never came back is not applied again."""
    target = RedisStreams(redis_server.url, **FAST)
    async with Broker(data_dir, sync=[target]) as broker:
        ids = await publish_n(broker, "lost.reply", 300)
        await wait_until(lambda: target.status()["backlog"] == 0)
    # Forget the confirmation: the saved cursor goes back to 0, as after a crash before saving.
    async with Broker(data_dir) as broker:
        await broker.store.set_value("sync.state.redis", {"cursor": 0})
    target = RedisStreams(redis_server.url, **FAST)
    async with Broker(data_dir, sync=[target]) as broker:
        more = await publish_n(broker, "lost.reply", 10, start=300)
        await wait_until(lambda: target.status()["backlog"] == 0)
    stored = stream_ids(rclient, "events:lost.reply")
    assert Counter(stored).most_common(1)[0][1] == 1
    assert stored == ids + more

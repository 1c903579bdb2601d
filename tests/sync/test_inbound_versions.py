"""Events that come in through sync keep their version in the log and are upcast on delivery,
like every other event (a private redis-server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from localbroker import Broker, Event
from localbroker.sync import RedisStreams
from tests.servers.redis import RedisServer
from tests.sync.conftest import FAST
from tests.sync.helpers import log_envelopes
from tests.versioned import UserRegistered, as_tuple, expected_v3, stored_versions, upcasters
from tests.waiting import wait_until

pytestmark = pytest.mark.redis


async def test_inbound_events_of_older_versions_are_upcast_on_delivery(
    data_dir: Path, redis_server: RedisServer, rclient: redis.Redis
) -> None:
    # Another service (still on versions 1 and 2, and on 3) wrote these to the stream.
    for event in stored_versions():
        rclient.xadd(
            "events:user.registered",
            {
                "id": event.id,
                "version": str(event.version),
                "key": str(event.key),
                "data": json.dumps(event.payload()),
            },
        )
    target = RedisStreams(
        redis_server.url,
        service="mail",
        inbound_topics=["user.registered"],
        inbound_start="earliest",
        block=0.1,
        **FAST,
    )
    broker = Broker(data_dir, sync=[target], start_from="earliest")
    broker.include_router(upcasters)
    got: list[Event] = []

    @broker.subscriber("user.registered", name="welcome")
    async def welcome(event: UserRegistered) -> None:
        got.append(event)

    async with broker:
        await wait_until(lambda: target.inbound.ledger.received == 3, what="the entries to come in")
        await broker.wait_idle()
    assert sorted(as_tuple(e) for e in got) == sorted(expected_v3())
    # Appended as they arrived: the log holds versions 1, 2 and 3, never rewritten.
    stored = log_envelopes(data_dir)
    assert sorted((e["version"], e["key"]) for e in stored) == [(1, "u1"), (2, "u2"), (3, "u3")]
    assert next(e for e in stored if e["version"] == 1)["data"] == {"name": "Ann Lee"}

"""MongoDB event store: the sync target contract, and what only Mongo has (indexes, TTL, service precedence with Redis)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pymongo
import pytest
import redis

from localbroker import Broker, GenericEvent
from localbroker.sync import MongoStore, RedisStreams, SyncConfigurationError
from tests.servers.mongo import MongoServer
from tests.servers.redis import RedisServer
from tests.sync.conftest import FAST
from tests.sync.contract import Backend, SyncTargetContract
from tests.sync.helpers import publish_n
from tests.waiting import wait_until

pytestmark = pytest.mark.mongo


def store_for(server: MongoServer, db: Any, **options: Any) -> MongoStore:
    return MongoStore(server.url, database=db.name, **{**FAST, "poll_interval": 0.05, **options})


class MongoBackend(Backend):
    has_state = True
    time_resolution = timedelta(milliseconds=1)  # BSON dates

    def __init__(self, server: MongoServer, db: Any) -> None:
        self.server = server
        self.db_name = db.name

    def target(self, **options: Any) -> MongoStore:
        return MongoStore(self.server.url, database=self.db_name, **{**FAST, **options})

    def child_target(self, **options: Any) -> tuple[str, dict[str, Any]]:
        return "MongoStore", {"url": self.server.url, "database": self.db_name, **options}

    def _find(self, collection: str) -> list[dict[str, Any]]:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            self.server.url, tz_aware=True
        )
        with client:
            return list(client[self.db_name][collection].find())

    def events(self) -> list[dict[str, Any]]:
        return [{**doc, "id": doc.pop("_id")} for doc in self._find("events")]

    def errors(self) -> list[dict[str, Any]]:
        return self._find("errors")

    def dlq(self) -> list[dict[str, Any]]:
        return self._find("dlq")

    def stats(self) -> list[dict[str, Any]]:
        return self._find("subscribers")


class TestMongoContract(SyncTargetContract):
    @pytest.fixture
    def backend(self, mongo_server: MongoServer, mongo_db: Any) -> MongoBackend:
        return MongoBackend(mongo_server, mongo_db)


async def test_indexes(data_dir: Path, mongo_server: MongoServer, mongo_db: Any) -> None:
    async with Broker(data_dir, sync=[store_for(mongo_server, mongo_db, events_ttl=86400)]):
        pass

    def index_keys(collection: Any) -> list[Any]:
        return [info["key"] for info in collection.index_information().values()]

    assert [("topic", 1), ("time", 1)] in index_keys(mongo_db.events)
    assert [("correlation_id", 1)] in index_keys(mongo_db.events)
    (ttl,) = [i for i in mongo_db.events.index_information().values() if "expireAfterSeconds" in i]
    assert ttl["key"] == [("stored_at", 1)]
    assert ttl["expireAfterSeconds"] == 86400
    assert [("time", 1)] in index_keys(mongo_db.events)
    assert [("event_id", 1)] in index_keys(mongo_db.errors)
    assert [("topic", 1), ("time", 1)] in index_keys(mongo_db.errors)
    assert [("status", 1), ("subscriber", 1)] in index_keys(mongo_db.dlq)


@pytest.mark.redis
async def test_service_of_mongo_documents_follows_the_documented_precedence(
    tmp_path: Path,
    redis_server: RedisServer,
    rclient: redis.Redis,
    mongo_server: MongoServer,
    mongo_db: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LOCALBROKER_SERVICE", raising=False)

    async def services(data: str, redis_opts: dict[str, Any], mongo_opts: dict[str, Any]) -> Any:
        """The service of the Mongo document and of the Redis entry of one event."""
        redis_target = RedisStreams(redis_server.url, **FAST, **redis_opts)
        mongo_target = store_for(mongo_server, mongo_db, **mongo_opts)
        async with Broker(tmp_path / data, sync=[redis_target, mongo_target]) as broker:
            (event_id,) = await publish_n(broker, f"svc.{data}", 1)
            for target in (redis_target, mongo_target):
                await wait_until(lambda t=target: t.status()["backlog"] == 0)
            status = mongo_target.status()
        doc = mongo_db.events.find_one({"_id": event_id})
        ((_, fields),) = rclient.xrange(f"events:svc.{data}")
        assert status.get("service") == doc["service"]
        return doc["service"], fields[b"service"].decode()

    # Given only to the Redis target: the Mongo documents get it too, not the directory's name.
    assert await services("a", {"service": "billing"}, {}) == ("billing", "billing")
    # Each target's own option wins.
    assert await services("b", {"service": "billing"}, {"service": "audit"}) == ("audit", "billing")
    # Nothing given anywhere: the data directory's name, for both.
    assert await services("c", {}, {}) == ("c", "c")
    # The process-wide variable comes before another target's option.
    monkeypatch.setenv("LOCALBROKER_SERVICE", "shop")
    assert await services("d", {"service": "billing"}, {}) == ("shop", "billing")


@pytest.mark.redis
async def test_service_left_ambiguous_fails_start(
    data_dir: Path,
    redis_server: RedisServer,
    mongo_server: MongoServer,
    mongo_db: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LOCALBROKER_SERVICE", raising=False)
    targets = [
        RedisStreams(redis_server.url, name="r1", service="billing"),
        RedisStreams(redis_server.url, name="r2", service="shipping"),
        store_for(mongo_server, mongo_db),
    ]
    with pytest.raises(SyncConfigurationError, match=r"r1: 'billing', r2: 'shipping'"):
        async with Broker(data_dir, sync=targets):
            pass
    async with Broker(data_dir):  # the failed start left no lock behind
        pass


async def test_ttl_counts_from_storage_not_from_the_events_own_time(
    data_dir: Path, mongo_server: MongoServer, mongo_db: Any
) -> None:
    admin = mongo_db.client.admin

    def ttl_passes() -> int:
        return int(admin.command("serverStatus")["metrics"]["ttl"]["passes"])

    async def mirror(ttl: float, *events: GenericEvent) -> list[str]:
        target = store_for(mongo_server, mongo_db, events_ttl=ttl)
        async with Broker(data_dir, sync=[target]) as broker:
            ids = [r.id for r in await broker.publish_many(events)]
            await target.wait_mirrored()
        return ids

    # An event that came in from elsewhere, dated long ago, and one of now: a day's TTL.
    dated_2020 = datetime(2020, 1, 1, tzinfo=UTC)
    old, new = await mirror(
        86400, GenericEvent(topic="ttl.x", time=dated_2020), GenericEvent(topic="ttl.x")
    )
    passes = ttl_passes()
    await wait_until(lambda: ttl_passes() >= passes + 2, what="two passes of the TTL monitor")
    events = mongo_db.with_options(
        codec_options=mongo_db.codec_options.with_options(tz_aware=True)
    ).events
    doc = events.find_one({"_id": old})
    assert doc is not None, "an event dated 2020 was expired as soon as it was stored"
    assert doc["time"] == dated_2020
    assert doc["stored_at"] > dated_2020
    assert events.find_one({"_id": new}) is not None
    # A TTL of one second (the index is changed in place) counts from storage as well: an
    # event dated in 2100 goes, with the others.
    await mirror(1, GenericEvent(topic="ttl.x", time=datetime(2100, 1, 1, tzinfo=UTC)))
    await wait_until(lambda: events.count_documents({}) == 0, what="expiry", timeout=30)


async def test_ttl_index_of_older_versions_is_replaced(
    data_dir: Path, mongo_server: MongoServer, mongo_db: Any
) -> None:
    # What an older version left: a TTL on the event's time, documents without stored_at.
    mongo_db.events.create_index([("time", 1)], expireAfterSeconds=86400)
    mongo_db.events.insert_one({"_id": "before", "time": datetime.now(UTC)})

    def ttl_keys() -> list[Any]:
        return [
            (i["key"], i["expireAfterSeconds"])
            for i in mongo_db.events.index_information().values()
            if "expireAfterSeconds" in i
        ]

    async with Broker(data_dir, sync=[store_for(mongo_server, mongo_db, events_ttl=3600)]):
        pass
    assert ttl_keys() == [([("stored_at", 1)], 3600)]
    assert "stored_at" in mongo_db.events.find_one({"_id": "before"})
    # Without events_ttl, no TTL index is left to delete anything.
    async with Broker(data_dir, sync=[store_for(mongo_server, mongo_db)]):
        pass
    assert ttl_keys() == []


async def test_indexes_are_made_once_a_server_unreachable_at_start_is_back(
    data_dir: Path, mongo_server: MongoServer, mongo_db: Any
) -> None:
    await asyncio.to_thread(mongo_server.stop)
    target = store_for(mongo_server, mongo_db, events_ttl=60, connect_timeout=0.3)
    async with Broker(data_dir, sync=[target]) as broker:
        await publish_n(broker, "late.start", 20)
        assert not target.status()["connected"]
        await asyncio.to_thread(mongo_server.start)
        await target.wait_mirrored()
    ttl = [i for i in mongo_db.events.index_information().values() if "expireAfterSeconds" in i]
    assert [i["key"] for i in ttl] == [[("stored_at", 1)]]
    assert [("topic", 1), ("time", 1)] in [
        i["key"] for i in mongo_db.errors.index_information().values()
    ]

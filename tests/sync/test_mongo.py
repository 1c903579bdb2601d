"""MongoDB event store: events, failed tries, DLQ entries and stats, through outages and crashes."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pymongo
import pytest
import redis

from localbroker import Broker, GenericEvent, RetryPolicy
from localbroker.sync import MongoStore, RedisStreams, SyncConfigurationError
from tests.servers.mongo import MongoServer
from tests.servers.redis import RedisServer
from tests.sync.conftest import FAST
from tests.sync.helpers import cli_sync_status, log_ids, publish_n
from tests.waiting import wait_until

pytestmark = pytest.mark.mongo


def store_for(server: MongoServer, db: Any, **options: Any) -> MongoStore:
    return MongoStore(server.url, database=db.name, poll_interval=0.05, **FAST, **options)


async def test_events_errors_dlq_land_with_indexes(
    data_dir: Path, mongo_server: MongoServer, mongo_db: Any
) -> None:
    target = store_for(mongo_server, mongo_db, events_ttl=86400)
    broker = Broker(data_dir, sync=[target], max_tries=2, retry=RetryPolicy.immediate())

    @broker.subscriber("order.placed", name="billing", start_from="earliest")
    async def bill(event: Any) -> None:
        if event.payload()["n"] == 3:
            raise ValueError("card declined")

    async with broker:
        ids = await publish_n(broker, "order.placed", 10)
        await broker.wait_idle()
        await wait_until(
            lambda: target.status()["backlog"] == 0 and target.dlq_sent >= 1
            and mongo_db.subscribers.count_documents({"processed": 9}) == 1,
            what="events, DLQ entry and stats in Mongo",
        )  # fmt: skip
        (entry,) = await broker.dlq.list()
        await broker.dlq.discard(entry.id)
        await wait_until(lambda: mongo_db.dlq.find_one({"status": "discarded"}) is not None)

    events = list(mongo_db.events.find().sort("offset"))
    assert [e["_id"] for e in events] == ids
    assert events[3]["data"] == {"n": 3}
    assert events[3]["topic"] == "order.placed"
    assert events[3]["correlation_id"] == ids[3]
    errors = list(mongo_db.errors.find().sort("attempt"))
    assert [(e["event_id"], e["attempt"], e["subscriber"]) for e in errors] == [
        (ids[3], 1, "billing"),
        (ids[3], 2, "billing"),
    ]
    assert "card declined" in errors[0]["traceback"]
    (dlq,) = list(mongo_db.dlq.find())
    assert dlq["event_id"] == ids[3]
    assert dlq["status"] == "discarded"
    assert dlq["tries"] == 2

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


async def test_outage_loses_nothing_and_resend_duplicates_nothing(
    data_dir: Path, mongo_server: MongoServer, mongo_db: Any
) -> None:
    target = store_for(mongo_server, mongo_db, connect_timeout=0.5)
    async with Broker(data_dir, sync=[target]) as broker:
        before = await publish_n(broker, "mongo.outage", 200)
        await wait_until(lambda: target.status()["backlog"] == 0)
        mongo_server.stop()
        during = await publish_n(broker, "mongo.outage", 2_000, start=200)
        await wait_until(lambda: not target.status()["connected"], what="outage noticed")
        mongo_server.start()
        await wait_until(lambda: target.status()["backlog"] == 0, what="catch up", timeout=30)
    assert mongo_db.events.count_documents({}) == 2_200
    # A crash before the cursor was saved: everything is sent again, and nothing doubles.
    async with Broker(data_dir) as broker:
        await broker.store.set_value("sync.state.mongo", {"cursor": 0})
    target = store_for(mongo_server, mongo_db)
    async with Broker(data_dir, sync=[target]) as broker:
        await wait_until(lambda: target.status()["backlog"] == 0 and target.sent == 2_200)
    docs = list(mongo_db.events.find({}, {"_id": 1}).sort("offset"))
    assert [d["_id"] for d in docs] == before + during


async def test_idle_mirror_notices_an_outage(data_dir: Path, private_mongo: MongoServer) -> None:
    server = private_mongo
    target = MongoStore(
        server.url, database="idle", connect_timeout=0.5, heartbeat_interval=0.1, **FAST
    )
    async with Broker(data_dir, sync=[target]) as broker:
        await publish_n(broker, "mongo.idle", 5)
        await wait_until(lambda: target.status()["backlog"] == 0 and target.status()["connected"])
        await asyncio.to_thread(server.kill)  # nothing is published from now on
        await wait_until(lambda: not target.status()["connected"], what="the outage noticed")
        assert target.status()["last_error"]
        await asyncio.to_thread(server.start)
        await wait_until(lambda: target.status()["connected"], what="reconnect")


@pytest.mark.slow
async def test_kill_9_of_mongod_loses_no_event(data_dir: Path, private_mongo: MongoServer) -> None:
    server = private_mongo
    target = MongoStore(server.url, database="kill9", connect_timeout=0.5, batch_size=50, **FAST)
    async with Broker(data_dir, sync=[target]) as broker:
        stop = asyncio.Event()

        async def produce() -> None:
            n = 0
            while not stop.is_set():
                await publish_n(broker, "mongo.kill", 10, start=n)
                n += 10
                await asyncio.sleep(0.002)  # a producer's pace, so the mirror sends small batches

        producer = asyncio.create_task(produce())
        try:
            for _kill in range(3):
                sent = target.sent
                await wait_until(
                    lambda s=sent: target.sent >= s + 300 and target.status()["connected"],
                    what="the mirror sending",
                )
                await asyncio.to_thread(server.kill)
                await wait_until(
                    lambda: not target.status()["connected"] and target.status()["backlog"] > 0,
                    what="the outage in the status",
                )

                async def cli_sees_outage() -> bool:
                    status = (await cli_sync_status(data_dir))["mongo"]
                    return status["running"] and not status["connected"] and status["backlog"] > 0

                await wait_until(cli_sees_outage, what="the outage in `sync status`")
                await asyncio.to_thread(server.start)
                await wait_until(lambda: target.status()["connected"], what="reconnect")
        finally:
            stop.set()
            await producer
        await wait_until(
            lambda: target.status()["backlog"] == 0, what="the mirror to catch up", timeout=60
        )
    ids = log_ids(data_dir)
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(server.url)
    try:
        stored = Counter(d["_id"] for d in client.kill9.events.find({}, {"_id": 1}))
    finally:
        client.close()
    missing = [i for i in ids if i not in stored]
    assert not missing, f"{len(missing)} of {len(ids)} events never reached Mongo"
    assert sorted(stored) == sorted(ids)
    assert set(stored.values()) == {1}


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
    data_dir: Path, private_mongo: MongoServer
) -> None:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        private_mongo.url, tz_aware=True
    )
    db = client.ttl

    def ttl_passes() -> int:
        return int(client.admin.command("serverStatus")["metrics"]["ttl"]["passes"])

    async def mirror(ttl: float, *events: GenericEvent) -> list[str]:
        target = MongoStore(private_mongo.url, database="ttl", events_ttl=ttl, **FAST)
        async with Broker(data_dir, sync=[target]) as broker:
            ids = [r.id for r in await broker.publish_many(events)]
            await wait_until(lambda: target.status()["backlog"] == 0, what="mirrored")
        return ids

    try:
        # An event that came in from elsewhere, dated long ago, and one of now: a day's TTL.
        dated_2020 = datetime(2020, 1, 1, tzinfo=UTC)
        old, new = await mirror(
            86400, GenericEvent(topic="ttl.x", time=dated_2020), GenericEvent(topic="ttl.x")
        )
        passes = ttl_passes()
        await wait_until(lambda: ttl_passes() >= passes + 2, what="two passes of the TTL monitor")
        doc = db.events.find_one({"_id": old})
        assert doc is not None, "an event dated 2020 was expired as soon as it was stored"
        assert doc["time"] == dated_2020
        assert doc["stored_at"] > dated_2020
        assert db.events.find_one({"_id": new}) is not None
        # A TTL of one second (the index is changed in place) counts from storage as well: an
        # event dated in 2100 goes, with the others.
        await mirror(1, GenericEvent(topic="ttl.x", time=datetime(2100, 1, 1, tzinfo=UTC)))
        await wait_until(lambda: db.events.count_documents({}) == 0, what="expiry", timeout=30)
    finally:
        client.close()


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


async def test_unreachable_at_start_then_indexes_and_events(
    data_dir: Path, private_mongo: MongoServer
) -> None:
    private_mongo.stop()
    target = MongoStore(
        private_mongo.url, database="late", events_ttl=60, connect_timeout=0.3, **FAST
    )
    async with Broker(data_dir, sync=[target]) as broker:
        ids = await publish_n(broker, "late.start", 20)
        assert not target.status()["connected"]
        await asyncio.to_thread(private_mongo.start)
        await wait_until(lambda: target.status()["backlog"] == 0, what="catch up")
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(private_mongo.url)
    try:
        db = client.late
        assert sorted(d["_id"] for d in db.events.find({}, {"_id": 1})) == sorted(ids)
        ttl = [i for i in db.events.index_information().values() if "expireAfterSeconds" in i]
        assert [i["key"] for i in ttl] == [[("stored_at", 1)]]
        assert [("topic", 1), ("time", 1)] in [
            i["key"] for i in db.errors.index_information().values()
        ]
    finally:
        client.close()

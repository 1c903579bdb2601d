"""SIGKILL of our own process mid-mirror: after restarts, every event is in Redis and in Mongo
exactly once."""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from localbroker import Broker
from localbroker.state.store import StateStore
from localbroker.sync import MongoStore, RedisStreams
from tests.servers.mongo import MongoServer
from tests.servers.redis import RedisServer
from tests.sync.conftest import FAST
from tests.sync.helpers import log_ids, run_and_kill, stream_ids
from tests.waiting import wait_until

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from localbroker import Broker, GenericEvent
    from localbroker.sync import MongoStore, RedisStreams

    async def main() -> None:
        data, redis_url, mongo_url, db, start = sys.argv[1:6]
        targets = [
            RedisStreams(redis_url, status_interval=0.1, batch_size=500),
            MongoStore(mongo_url, database=db, status_interval=0.1, batch_size=500),
        ]
        n = int(start)
        async with Broker(data, sync=targets) as broker:
            while True:
                await broker.publish_many([GenericEvent(topic="crash.sync", n=n + i) for i in range(100)])
                n += 100
                print(n, targets[0].sent, targets[1].sent, flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.redis
@pytest.mark.mongo
@pytest.mark.slow
async def test_sigkill_mid_mirror_no_loss_no_duplicate(
    data_dir: Path,
    redis_server: RedisServer,
    rclient: redis.Redis,
    mongo_server: MongoServer,
    mongo_db: Any,
) -> None:
    published = 0
    for after in (0.6, 0.9):
        args = [str(data_dir), redis_server.url, mongo_server.url, mongo_db.name, str(published)]
        published = run_and_kill(CHILD, args, after)
    store = await StateStore.open(data_dir / "state.db", readonly=True)
    saved = {n: (await store.get_value(f"sync.state.{n}"))["cursor"] for n in ("redis", "mongo")}
    await store.close()
    redis_target = RedisStreams(redis_server.url, **FAST)
    mongo_target = MongoStore(mongo_server.url, database=mongo_db.name, **FAST)
    async with Broker(data_dir, sync=[redis_target, mongo_target]):
        for target in (redis_target, mongo_target):
            await wait_until(lambda t=target: t.status()["backlog"] == 0, what=f"{target.name}")
    ids = log_ids(data_dir)
    assert len(ids) >= published > 1000, "the children published too little to test anything"
    assert all(cursor < len(ids) for cursor in saved.values()), "killed after the mirror caught up"
    in_redis = stream_ids(rclient, "events:crash.sync")
    assert Counter(in_redis).most_common(1)[0][1] == 1, "an event is twice in Redis"
    assert in_redis == ids
    in_mongo = [d["_id"] for d in mongo_db.events.find({}, {"_id": 1}).sort("offset")]
    assert in_mongo == ids

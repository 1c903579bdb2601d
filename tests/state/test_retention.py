"""History retention in ``state.db`` (issue 9, item 21): tries of finished deliveries go after
``history_retention``; deliveries still retrying or in the DLQ keep theirs, DLQ entries stay
until resolved or discarded. Ages come from a clock passed in, or rows rewritten as old.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from localbroker import Broker, ConfigurationError, DeliveryContext, RejectEvent, RetryPolicy
from localbroker.config import load_config
from localbroker.state.retention import HistoryTrimmer
from localbroker.state.store import StateStore
from tests.broker.events import Note
from tests.waiting import wait_until

DAY = 86400.0
WEEK = 7 * DAY


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def fail(store: StateStore, offset: int, attempt: int, *, dead: bool = False) -> None:
    await store.record_failure(
        subscriber="s",
        offset=offset,
        event_id=f"e{offset}",
        topic="t",
        correlation_id=None,
        attempt=attempt,
        kind="error",
        error_type="ValueError",
        message="x" * 500,
        traceback="...",
        dead=dead,
    )


async def rows(store: StateStore, sql: str) -> set[int]:
    async with store.db.execute(sql) as cur:
        return {r[0] for r in await cur.fetchall()}


async def test_only_the_history_of_finished_deliveries_is_trimmed(tmp_path: Path) -> None:
    clock = Clock()
    store = await StateStore.open(tmp_path / "state.db", create=True, clock=clock)
    try:
        state = await store.create_subscriber("s", ["t"], 0)
        # Eight days ago:
        await fail(store, 0, 1)  # 0: failed, then handled
        await store.record_success_after_retry("s", 0, 2)
        for offset in (1, 2, 3, 7):
            await fail(store, offset, 1, dead=True)
        entries = {e.offset: e.id for e in await store.dlq_entries()}
        # 1 stays in the DLQ; 2 is sent back by an operator; 3 is discarded
        await store.set_dlq_status(entries[2], "retrying")
        await store.set_dlq_status(entries[3], "discarded")
        await store.set_dlq_status(entries[7], "retrying")  # 7: sent back, then handled
        await store.record_success_after_retry("s", 7, 2)
        await fail(store, 4, 1)  # 4: still retrying (the broker was stopped for a week)
        await fail(store, 9, 1)  # 9: handled, but above the committed offset
        await store.record_success_after_retry("s", 9, 2)
        done = await store.add_request("dlq.retry", {"id": entries[2]})
        await store.finish_request(done, ok=True, result=[entries[2]])
        pending = await store.add_request("dlq.retry", {"id": 99})
        state.committed = state.position = 8
        state.done = [9]
        await store.save_subscribers([state], 1)
        clock.now += DAY
        await fail(store, 5, 1)  # 5: handled a week ago less a day: not due yet
        await store.record_success_after_retry("s", 5, 2)

        clock.now += WEEK
        trimmer = HistoryTrimmer(store, WEEK, clock=clock, batch=2)  # several small batches
        assert await trimmer.trim() > 0

        assert await rows(store, 'SELECT "offset" FROM errors') == {1, 2, 4, 5}
        assert await rows(store, 'SELECT "offset" FROM deliveries') == {1, 2, 4, 5, 9}
        assert await rows(store, 'SELECT "offset" FROM dlq') == {1, 2}
        assert await rows(store, "SELECT id FROM requests") == {pending}
        assert len((await store.dlq_entry(entries[1])).attempts) == 1
        assert await trimmer.trim() == 0
    finally:
        await store.close()


async def test_the_broker_trims_old_history_and_redelivers_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    handled: list[int] = []

    def make_broker() -> Broker:
        broker = Broker(data, start_from="earliest", retry=RetryPolicy.immediate())

        @broker.subscriber("note.added", name="flaky")
        async def flaky(event: Note, ctx: DeliveryContext) -> None:
            if event.n == 3:
                raise RejectEvent("never")
            if ctx.attempt == 1:
                raise ValueError("first try fails")
            handled.append(event.n)

        return broker

    async with make_broker() as broker:
        await broker.publish_many(Note(n=n) for n in range(5))
        await broker.wait_idle()
    assert sorted(handled) == [0, 1, 2, 4]
    # Eight days pass.
    with sqlite3.connect(data / "state.db") as db:
        db.execute("UPDATE errors SET time = time - 8 * 86400")
        db.execute("UPDATE deliveries SET updated = updated - 8 * 86400")
        db.execute("UPDATE dlq SET updated = updated - 8 * 86400")

    handled.clear()
    async with make_broker() as broker:  # default history_retention: 7 days
        assert broker.config.history_retention == WEEK

        async def only_dead_tries_left() -> bool:
            return {e.offset for e in await broker.store.errors(limit=100)} == {3}

        await wait_until(only_dead_tries_left, what="the old tries to be trimmed")
        (entry,) = await broker.dlq.list()
        assert entry.offset == 3
        assert len((await broker.dlq.show(entry)).attempts) == 1
        await broker.wait_idle()
    assert handled == []


def test_retention_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALBROKER_HISTORY_RETENTION", "3600")
    assert load_config().history_retention == 3600
    monkeypatch.setenv("LOCALBROKER_HISTORY_RETENTION", "none")  # keep forever
    assert load_config().history_retention is None
    monkeypatch.setenv("LOCALBROKER_HISTORY_RETENTION", "0")
    with pytest.raises(ConfigurationError, match="history_retention"):
        load_config()


async def test_history_retention_none_keyword_keeps_history_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Broker(dir, history_retention=None)`` means "keep forever"; it was silently dropped
    (the default or the environment applied). Other options taking None are kept too."""
    monkeypatch.setenv("LOCALBROKER_HISTORY_RETENTION", "3600")
    monkeypatch.setenv("LOCALBROKER_SEGMENT_MAX_AGE", "60")
    assert Broker(tmp_path).config.history_retention == 3600  # the environment applies
    broker = Broker(tmp_path, history_retention=None, segment_max_age=None)
    assert (broker.config.history_retention, broker.config.segment_max_age) == (None, None)
    assert Broker(None, history_retention=None).data_dir == Path("./localbroker-data")
    async with broker:
        # The process's singletons start once it holds their leases.
        await wait_until(
            lambda: "localbroker-requests" in {t.get_name() for t in asyncio.all_tasks()},
            what="the operator-request executor to start",
        )
        names = {task.get_name() for task in asyncio.all_tasks()}
        assert "localbroker-retention" not in names  # nothing trims the history
        assert broker.log.segment_max_age is None

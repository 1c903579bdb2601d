"""``index.db`` (format 2): a fraction of the log's size, every query on an index, and an index
of an older format rebuilt from the log. Issue 9, item 20 (it cost 243 B per event, as much
as the log).
"""

from __future__ import annotations

import collections
import logging
import re
import sqlite3
from pathlib import Path

import pytest

from localbroker import Broker
from localbroker.events import decode_envelope
from localbroker.state.event_index import EventIndex, EventQuery, IndexedEvent
from localbroker.state.schema import INDEX_FORMAT
from localbroker.view import BrokerView
from tests.broker.events import Note
from tests.state.index_files import (
    FORMAT_1_SCHEMA,
    index_bytes,
    indexed_to,
    log_bytes,
    publish_chains,
)
from tests.waiting import wait_until

EVENTS = 4000


async def test_the_index_costs_a_fraction_of_the_log(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await publish_chains(data, EVENTS // 2)
    assert indexed_to(data) == EVENTS
    # Format 1 cost about as much as the log (243 vs 254 B per event); half of the events
    # here carry a chain and a cause id of their own, the costliest kind.
    assert index_bytes(data / "index.db") < log_bytes(data) / 2


def _plans(db_path: Path, statements: list[str]) -> dict[str, str]:
    with sqlite3.connect(db_path) as db:
        return {
            sql: "\n".join(row[-1] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}"))
            for sql in statements
            if "events" in sql and sql.lstrip().upper().startswith("SELECT")
        }


async def test_every_query_uses_an_index(tmp_path: Path) -> None:
    # Chains of five: the first event starts the chain, each next one is caused by the one before.
    ids = [f"01a20a00-0000-7000-8000-{i:012x}" for i in range(50)]
    rows = [
        IndexedEvent(
            i,
            ids[i],
            f"t.{i % 3}",
            f"k{i % 4}",
            1000.0 + i,
            ids[i - i % 5],
            ids[i - 1] if i % 5 else None,
        )
        for i in range(50)
    ]
    index = await EventIndex.open(tmp_path / "index.db")
    await index.add(rows)
    statements: list[str] = []
    await index.db.set_trace_callback(statements.append)  # the SQL as run, with its values
    for q, uses in [
        (EventQuery(), None),
        (EventQuery(topic="t.1"), "events_by_topic (topic=? AND offset<?)"),
        (EventQuery(topic="t.*"), "events_by_topic"),
        (EventQuery(correlation_id=ids[10]), "events_by_correlation"),
        (EventQuery(id_prefix=ids[20][:34]), "events_by_id"),
        (EventQuery(key="k1", since=1010.0, until=1020.0), None),
    ]:
        expected = [r for r in reversed(rows) if q.matches(r)][:20]
        assert expected
        statements.clear()
        assert await index.query(q, before=50, limit=20) == expected
        if uses is not None:
            assert uses in _plans(tmp_path / "index.db", statements[-1:])[statements[-1]]
    statements.clear()
    assert await index.chain(ids[10]) == rows[10:15]
    assert await index.by_id(ids[7]) == rows[7]
    assert await index.first_offset_since(1012.5) == 13
    assert await index.count("t.2", from_offset=0, to_offset=50) == sum(
        r.topic == "t.2" for r in rows
    )
    over_time = await index.counts_over_time("t.0", since=1030.0, bucket_seconds=5.0)
    assert over_time == dict(
        collections.Counter(int((r.time - 1030) // 5) for r in rows[30:] if r.topic == "t.0")
    )
    assert await index.topic_counts(from_offset=40) == dict(
        sorted(collections.Counter(r.topic for r in rows[40:]).items())
    )
    flows = {(f.cause, f.effect): f.count for f in await index.flows()}
    assert flows == collections.Counter(
        (rows[i - 1].topic, r.topic) for i, r in enumerate(rows) if r.causation_id
    )
    chains = await index.recent_chains(topic="t.1", limit=3)
    assert [(c.correlation_id, c.first_offset, c.events) for c in chains] == [
        (ids[45], 45, 5),
        (ids[40], 40, 5),
        (ids[35], 35, 5),
    ]
    await index.db.set_trace_callback(None)
    await index.close()

    plans = _plans(tmp_path / "index.db", statements)
    assert len(plans) >= 10
    for sql, plan in plans.items():
        # SEARCH: a range of an index or of the primary key; SCAN: every row.
        assert not re.search(r"\bSCAN (events|effect|cause)\b", plan), f"{sql}\n{plan}"
    assert any("events_by_topic" in p for p in plans.values())
    assert any("events_by_correlation" in p and "events_by_id" in p for p in plans.values())


async def test_an_index_of_the_first_format_is_rebuilt_from_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    await publish_chains(data, 100)
    for name in ("index.db", "index.db-wal", "index.db-shm"):
        (data / name).unlink(missing_ok=True)
    with sqlite3.connect(data / "index.db") as db:  # as the previous version left it
        db.executescript(FORMAT_1_SCHEMA)
        db.execute("INSERT INTO events VALUES (0, 'x', 'note.added', NULL, 1.0, 'x', NULL)")

    # Tools beside a broker that has not rebuilt it yet read the log.
    async with BrokerView(data) as view:
        assert view.index is None

    caplog.set_level(logging.WARNING, logger="localbroker")
    async with Broker(data) as broker:
        await wait_until(lambda: indexed_to(data) == 200, what="the index to be rebuilt")
        first = decode_envelope(broker.log.read(0, max_records=1)[0].payload)["id"]
    assert any(
        "is in format 0 (format 2 is current): rebuilding it" in r.getMessage()
        for r in caplog.records
    )
    with sqlite3.connect(data / "index.db") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (INDEX_FORMAT,)
        assert db.execute(
            "SELECT COUNT(*) FROM sqlite_schema WHERE name = 'events_by_time'"
        ).fetchone() == (0,)
    async with BrokerView(data) as view:
        assert view.index is not None
        assert len(await view.index.chain(first)) == 2  # the command and its follow-up


async def test_publishers_wait_for_an_index_that_far_behind_but_never_for_a_failing_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    caplog.set_level(logging.ERROR, logger="localbroker")
    max_lag, batch, events = 2000, 500, 6000

    def failed() -> bool:
        return any("index.db) cannot go on" in r.getMessage() for r in caplog.records)

    async with Broker(data, fsync="never", index_max_lag=max_lag) as broker:
        indexer = broker._indexer
        assert indexer is not None
        # Another connection holds index.db's write lock: the indexer waits for it (SQLite's
        # busy timeout, 5 s), then fails, and retries later.
        blocker = sqlite3.connect(data / "index.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        lags = []
        for start in range(0, events, batch):
            await broker.publish_many(Note(n=i) for i in range(start, start + batch))
            lag = broker.visible_offset - (indexer.position or 0)
            lags.append(lag)
            if not failed():  # while indexing works, publishers wait for it
                assert lag <= max_lag + batch
        assert max(lags) >= max_lag  # the bound was reached ...
        assert failed()  # ... and the failing index let the publishers go on
        assert broker.visible_offset == events
        blocker.execute("ROLLBACK")
        blocker.close()
        await wait_until(lambda: indexed_to(data) == events, what="the index to catch up")

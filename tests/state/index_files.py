"""The files of an event index, for its tests and its benchmark (``benchmarks/bench_index.py``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from localbroker import Broker, DeliveryContext
from tests.broker.events import Note

#: ``index.db`` as format 1 (before issue 9, item 20) created it.
FORMAT_1_SCHEMA = """
CREATE TABLE events ("offset" INTEGER PRIMARY KEY, id TEXT NOT NULL, topic TEXT NOT NULL,
    key TEXT, time REAL NOT NULL, correlation_id TEXT, causation_id TEXT);
CREATE INDEX events_by_id ON events (id);
CREATE INDEX events_by_correlation ON events (correlation_id);
CREATE INDEX events_by_topic ON events (topic, "offset");
CREATE INDEX events_by_time ON events (time);
"""


def log_bytes(data: Path) -> int:
    """The size of the log's segments."""
    return sum(p.stat().st_size for p in (data / "log").glob("*.log"))


def index_bytes(path: Path) -> int:
    """The size of a SQLite file once its WAL is written into it."""
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


def indexed_to(data: Path) -> int:
    """One past the highest offset in ``index.db`` (read by another connection, as tools do)."""
    with sqlite3.connect(data / "index.db") as db:
        (top,) = db.execute('SELECT MAX("offset") FROM events').fetchone()
    return 0 if top is None else top + 1


async def publish_chains(data: Path, commands: int) -> None:
    """``commands`` events, each followed by one its handler publishes (chain and cause ids)."""
    broker = Broker(data, start_from="earliest", fsync="never")

    @broker.subscriber("note.added", name="echo")
    async def echo(event: Note, ctx: DeliveryContext) -> None:
        await ctx.broker.publish("note.echoed", {"n": event.n}, key=f"k{event.n % 10}")

    async with broker:
        for start in range(0, commands, 500):
            await broker.publish_many(Note(n=i) for i in range(start, min(commands, start + 500)))
        await broker.wait_idle(timeout=600)
        assert broker._indexer is not None
        await broker._indexer.catch_up()

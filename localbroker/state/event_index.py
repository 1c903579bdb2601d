"""``index.db``: the metadata of every event (topic, key, time, chain ids) for fast lookups.

The log is the source of truth; this index is derived from it by the broker (and can be
deleted and rebuilt). Readers that find it behind the log read the rest from the log itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import aiosqlite

from localbroker.state.schema import INDEX_SCHEMA
from localbroker.state.store import connect

__all__ = ["EventIndex", "IndexedEvent"]


@dataclasses.dataclass(frozen=True, slots=True)
class IndexedEvent:
    """An event's metadata as indexed."""

    offset: int
    id: str
    topic: str
    key: str | None
    time: float
    correlation_id: str | None
    causation_id: str | None


class EventIndex:
    """Lookups of events by id, chain, topic and time."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    @classmethod
    async def open(cls, path: Path, *, readonly: bool = False) -> EventIndex:
        return cls(await connect(path, readonly=readonly, schema=INDEX_SCHEMA, synchronous="OFF"))

    async def close(self) -> None:
        await self.db.close()

    async def next_offset(self) -> int:
        """One past the highest indexed offset (0 when empty)."""
        async with self.db.execute('SELECT MAX("offset") FROM events') as cur:
            row = await cur.fetchone()
        return 0 if row is None or row[0] is None else int(row[0]) + 1

    async def add(self, events: Sequence[IndexedEvent]) -> None:
        # Synchronous=OFF: the index is derived from the log and is rebuilt from it after a crash.
        await self.db.executemany(
            'INSERT OR IGNORE INTO events ("offset", id, topic, key, time, correlation_id, causation_id)'
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            # Plain tuples: dataclasses.astuple deep-copies every field, which dominated indexing.
            [
                (e.offset, e.id, e.topic, e.key, e.time, e.correlation_id, e.causation_id)
                for e in events
            ],
        )
        await self.db.commit()

    async def chain(self, correlation_id: str) -> list[IndexedEvent]:
        """Every event of a chain, in log order."""
        async with self.db.execute(
            'SELECT * FROM events WHERE correlation_id = ? OR id = ? ORDER BY "offset"',
            (correlation_id, correlation_id),
        ) as cur:
            return [IndexedEvent(*r) for r in await cur.fetchall()]

    async def by_id(self, event_id: str) -> IndexedEvent | None:
        async with self.db.execute("SELECT * FROM events WHERE id = ?", (event_id,)) as cur:
            row = await cur.fetchone()
        return IndexedEvent(*row) if row else None

    async def trim_before(self, offset: int) -> None:
        """Forget events below ``offset`` (after retention removed them for good)."""
        await self.db.execute('DELETE FROM events WHERE "offset" < ?', (offset,))
        await self.db.commit()

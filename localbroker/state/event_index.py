"""``index.db``: the metadata of every event (topic, key, time, chain ids) for fast lookups.

The log is the source of truth; this index is derived from it by the broker (and can be
deleted and rebuilt). Readers that find it behind the log read the rest from the log itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from localbroker.errors import ConfigurationError
from localbroker.state.schema import INDEX_SCHEMA
from localbroker.state.store import connect
from localbroker.topics import TopicPattern

__all__ = ["ChainSummary", "EventIndex", "EventQuery", "IndexMeta", "IndexedEvent", "TopicFlow"]

IndexMeta = tuple[str, str, "str | None", float, "str | None", "str | None"]
"""``(id, topic, key, time, correlation_id, causation_id)`` of an event about to be appended."""


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


_ID_CHARS = frozenset("0123456789abcdefABCDEF-_:.")


@dataclasses.dataclass(frozen=True, slots=True)
class EventQuery:
    """A filter over indexed events; every given field must match.

    ``topic`` is a pattern (``user.*``, ``user.>``), ``id_prefix`` the start of an event id,
    ``since``/``until`` append times (seconds since the epoch, ``until`` excluded).
    The same filter runs as SQL on ``index.db`` (:meth:`where`) and in Python on events read
    from the log (:meth:`matches`), for the part of the log the index has not reached yet.
    """

    topic: str | None = None
    key: str | None = None
    correlation_id: str | None = None
    id_prefix: str | None = None
    since: float | None = None
    until: float | None = None

    def __post_init__(self) -> None:
        if self.topic is not None:
            TopicPattern(self.topic)  # raises ConfigurationError naming the bad pattern
        if self.id_prefix is not None and not set(self.id_prefix) <= _ID_CHARS:
            raise ConfigurationError(
                f"event id {self.id_prefix!r}: ids hold hex digits and dashes only"
            )

    def matches(self, event: IndexedEvent) -> bool:
        """Whether ``event`` passes the filter."""
        return (
            (self.topic is None or TopicPattern(self.topic).matches(event.topic))
            and (self.key is None or event.key == self.key)
            and (self.correlation_id is None or event.correlation_id == self.correlation_id)
            and (self.id_prefix is None or event.id.startswith(self.id_prefix))
            and (self.since is None or event.time >= self.since)
            and (self.until is None or event.time < self.until)
        )

    def where(self) -> tuple[list[str], list[Any]]:
        """SQL conditions and their arguments, for ``WHERE ... AND ...``."""
        where: list[str] = []
        args: list[Any] = []
        if self.topic is not None:
            where.extend(_topic_sql(self.topic))
            args.append(_topic_glob(self.topic))
        for column, value in (("key", self.key), ("correlation_id", self.correlation_id)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if self.id_prefix is not None:
            # GLOB with a literal prefix uses the id index; the prefix holds no GLOB wildcards.
            where.append("id GLOB ?")
            args.append(self.id_prefix + "*")
        if self.since is not None:
            where.append("time >= ?")
            args.append(self.since)
        if self.until is not None:
            where.append("time < ?")
            args.append(self.until)
        return where, args


def _topic_glob(pattern: str) -> str:
    # Tokens hold no GLOB metacharacters (validated by TopicPattern); `*` (one token) becomes
    # GLOB `*`, `>` (one or more tokens) `?*`. The dot count in _topic_sql makes it exact.
    return ".".join({"*": "*", ">": "?*"}.get(t, t) for t in pattern.split("."))


def _topic_sql(pattern: str) -> list[str]:
    tokens = pattern.split(".")
    if "*" not in tokens and ">" not in tokens:
        return ["topic = ?"]
    dots = len(tokens) - 1
    # A GLOB `*` also matches dots: requiring the topic's dot count to equal the pattern's
    # (or, with `>`, to reach it) keeps each `*` to one token.
    count = "length(topic) - length(replace(topic, '.', ''))"
    op = ">=" if tokens[-1] == ">" else "="
    return ["topic GLOB ?", f"{count} {op} {dots}"]


@dataclasses.dataclass(frozen=True, slots=True)
class TopicFlow:
    """How often events of ``cause`` made a handler publish events of ``effect``."""

    cause: str
    effect: str
    count: int


@dataclasses.dataclass(frozen=True, slots=True)
class ChainSummary:
    """A chain seen in the index: its correlation id, first event and size."""

    correlation_id: str
    first_offset: int
    first_topic: str
    first_time: float
    events: int


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

    # -- queries for the dashboard ---------------------------------------------------------

    async def query(self, q: EventQuery, *, before: int, limit: int) -> list[IndexedEvent]:
        """Events matching ``q`` with an offset below ``before``, newest first.

        Keyset pagination: the next page is ``before=<last offset of this page>``, so a page
        costs the same at any depth of a large log.
        """
        where, args = q.where()
        where.append('"offset" < ?')
        args.append(before)
        sql = f'SELECT * FROM events WHERE {" AND ".join(where)} ORDER BY "offset" DESC LIMIT ?'
        async with self.db.execute(sql, (*args, limit)) as cur:
            return [IndexedEvent(*r) for r in await cur.fetchall()]

    async def first_offset_since(self, since: float) -> int | None:
        """The offset of the first event appended at or after ``since`` (None: none yet)."""
        async with self.db.execute(
            'SELECT "offset" FROM events WHERE time >= ? ORDER BY time LIMIT 1', (since,)
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else int(row[0])

    async def topic_counts(self, *, from_offset: int = 0) -> dict[str, int]:
        """Events per topic from ``from_offset`` on."""
        async with self.db.execute(
            'SELECT topic, COUNT(*) FROM events WHERE "offset" >= ? GROUP BY topic ORDER BY topic',
            (from_offset,),
        ) as cur:
            return {row[0]: row[1] for row in await cur.fetchall()}

    async def count(self, topic: str, *, from_offset: int, to_offset: int) -> int:
        """Events of ``topic`` with ``from_offset <= offset < to_offset``."""
        async with self.db.execute(
            'SELECT COUNT(*) FROM events WHERE topic = ? AND "offset" >= ? AND "offset" < ?',
            (topic, from_offset, to_offset),
        ) as cur:
            row = await cur.fetchone()
        return 0 if row is None else int(row[0])

    async def counts_over_time(
        self, topic: str, *, since: float, bucket_seconds: float
    ) -> dict[int, int]:
        """``{bucket number: events}`` of ``topic`` since ``since``; bucket = (time - since) // width."""
        async with self.db.execute(
            "SELECT CAST((time - ?) / ? AS INTEGER) AS b, COUNT(*) FROM events"
            " WHERE topic = ? AND time >= ? GROUP BY b",
            (since, bucket_seconds, topic, since),
        ) as cur:
            return {row[0]: row[1] for row in await cur.fetchall()}

    async def flows(self, *, from_offset: int = 0) -> list[TopicFlow]:
        """Which topics' handlers published which topics (joined on causation id)."""
        async with self.db.execute(
            "SELECT cause.topic, effect.topic, COUNT(*) FROM events AS effect"
            " JOIN events AS cause ON cause.id = effect.causation_id"
            ' WHERE effect."offset" >= ? GROUP BY cause.topic, effect.topic'
            " ORDER BY COUNT(*) DESC",
            (from_offset,),
        ) as cur:
            return [TopicFlow(*row) for row in await cur.fetchall()]

    async def recent_chains(
        self, *, from_offset: int = 0, topic: str | None = None, limit: int = 50
    ) -> list[ChainSummary]:
        """Chains started from ``from_offset`` on, newest first; with ``topic``, those holding it."""
        where = ['"offset" >= ?', "correlation_id IS NOT NULL"]
        args: list[Any] = [from_offset]
        if topic is not None:
            where.append(
                'correlation_id IN (SELECT correlation_id FROM events WHERE topic = ? AND "offset" >= ?)'
            )
            args.extend([topic, from_offset])
        sql = (
            'SELECT correlation_id, MIN("offset") AS first, COUNT(*) FROM events'
            f" WHERE {' AND '.join(where)} GROUP BY correlation_id ORDER BY first DESC LIMIT ?"
        )
        async with self.db.execute(sql, (*args, limit)) as cur:
            groups = list(await cur.fetchall())
        firsts = await self._by_offsets([g[1] for g in groups])
        return [
            ChainSummary(g[0], g[1], firsts[g[1]].topic, firsts[g[1]].time, g[2])
            for g in groups
            if g[1] in firsts
        ]

    async def _by_offsets(self, offsets: Sequence[int]) -> dict[int, IndexedEvent]:
        if not offsets:
            return {}
        marks = ",".join("?" * len(offsets))
        async with self.db.execute(
            f'SELECT * FROM events WHERE "offset" IN ({marks})', tuple(offsets)
        ) as cur:
            return {r[0]: IndexedEvent(*r) for r in await cur.fetchall()}

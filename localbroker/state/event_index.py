"""``index.db``: the metadata of every event (topic, key, time, chain ids) for fast lookups.

The log is the source of truth; this index is derived from it by the broker (and can be
deleted and rebuilt). Readers that find it behind the log read the rest from the log itself.
How the columns are stored (narrowly) is described in :mod:`localbroker.state.schema`; this
module turns them back into :class:`IndexedEvent` values, so callers never see the storage.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from localbroker.errors import ConfigurationError, NotFoundError
from localbroker.state.schema import INDEX_FORMAT, INDEX_SCHEMA
from localbroker.state.store import connect
from localbroker.topics import TopicPattern

logger = logging.getLogger("localbroker.index")

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
        """SQL conditions on ``index.db``'s ``events`` and their arguments, for ``WHERE ... AND ...``."""
        where: list[str] = []
        args: list[Any] = []
        if self.topic is not None:
            topic_where, topic_args = _topic_sql(self.topic)
            # One topic: "=" walks its index entries in offset order, with no sort.
            op = "=" if topic_where == "name = ?" else "IN"
            where.append(f"topic {op} (SELECT topic_id FROM topics WHERE {topic_where})")
            args.extend(topic_args)
        if self.key is not None:
            where.append("key = ?")
            args.append(self.key)
        if self.correlation_id is not None:
            # A chain's first event stores no correlation id: it is its own id.
            where.append("(correlation_id = ? OR (id = ? AND correlation_id IS NULL))")
            args.extend([pack_id(self.correlation_id)] * 2)
        if self.id_prefix is not None:
            # GLOB with a literal prefix uses the id index; the prefix holds no GLOB wildcards.
            # UUIDs are stored as bytes: their prefix is a range of them. Each in a subquery
            # of its own: ORed in one condition, the planner walks the offsets instead.
            matching = ['SELECT "offset" FROM events WHERE id GLOB ?']
            args.append(self.id_prefix + "*")
            bounds = _uuid_range(self.id_prefix)
            if bounds is not None:
                matching.append('SELECT "offset" FROM events WHERE id BETWEEN ? AND ?')
                args.extend(bounds)
            where.append(f'"offset" IN ({" UNION ALL ".join(matching)})')
        if self.since is not None:
            where.append("time >= ?")
            args.append(self.since * 1000)
        if self.until is not None:
            where.append("time < ?")
            args.append(self.until * 1000)
        return where, args


_UUID_SHAPE = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
_HEX = frozenset("0123456789abcdef")


def pack_id(value: str) -> bytes | str:
    """How an id is stored: a UUID (as ``str(uuid)`` writes it) as its 16 bytes, else as text."""
    # Cheaper than a regular expression (this runs for three ids per indexed event): 16 bytes
    # from 36 characters with these four dashes leave no room for other dashes or spaces, and
    # a lowercase id comes back unchanged from unpack_id.
    if len(value) != 36 or not value[8] == value[13] == value[18] == value[23] == "-":
        return value
    try:
        packed = bytes.fromhex(value.replace("-", ""))
    except ValueError:
        return value
    return packed if len(packed) == 16 and value.lower() == value else value


def unpack_id(value: bytes | str) -> str:
    """The id :func:`pack_id` stored."""
    if isinstance(value, bytes):
        h = value.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return value


def _uuid_range(prefix: str) -> tuple[bytes, bytes] | None:
    """The stored UUIDs (bytes) whose text starts with ``prefix``; None if none can."""
    if len(prefix) > len(_UUID_SHAPE) or not all(
        c == "-" if shape == "-" else c in _HEX
        for c, shape in zip(prefix, _UUID_SHAPE, strict=False)
    ):
        return None
    digits = prefix.replace("-", "")
    return bytes.fromhex(digits.ljust(32, "0")), bytes.fromhex(digits.ljust(32, "f"))


def _topic_glob(pattern: str) -> str:
    # Tokens hold no GLOB metacharacters (validated by TopicPattern); `*` (one token) becomes
    # GLOB `*`, `>` (one or more tokens) `?*`. The dot count in _topic_sql makes it exact.
    return ".".join({"*": "*", ">": "?*"}.get(t, t) for t in pattern.split("."))


def _topic_sql(pattern: str) -> tuple[str, list[str]]:
    """A condition on ``topics.name`` selecting the topics ``pattern`` matches."""
    tokens = pattern.split(".")
    if "*" not in tokens and ">" not in tokens:
        return "name = ?", [pattern]
    dots = len(tokens) - 1
    # A GLOB `*` also matches dots: requiring the topic's dot count to equal the pattern's
    # (or, with `>`, to reach it) keeps each `*` to one token.
    count = "length(name) - length(replace(name, '.', ''))"
    op = ">=" if tokens[-1] == ">" else "="
    return f"name GLOB ? AND {count} {op} {dots}", [_topic_glob(pattern)]


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


_COLUMNS = '"offset", id, topic, key, time, correlation_id, causation_id'
_TOPIC_ID = "(SELECT topic_id FROM topics WHERE name = ?)"


class EventIndex:
    """Lookups of events by id, chain, topic and time."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db
        self._topics: dict[int, str] = {}
        self._topic_ids: dict[str, int] = {}

    @classmethod
    async def open(cls, path: Path, *, readonly: bool = False) -> EventIndex:
        """Open ``index.db``; the broker (not ``readonly``) creates it, or rebuilds one of another format.

        Read-only, an index of another format (one an older version wrote, which the broker
        has not rebuilt yet) raises :class:`~localbroker.errors.NotFoundError`: read the log.
        """
        if readonly:
            db = await connect(path, readonly=True, schema="", synchronous="OFF")
            found = await _format(db)
            if found != INDEX_FORMAT:
                await db.close()
                raise NotFoundError(
                    f"{path} is in format {found}, not {INDEX_FORMAT}: the broker rebuilds it "
                    "when it starts; until then events are read from the log"
                )
        else:
            db = await connect(path, readonly=False, schema="", synchronous="OFF")
            if await _other_format(db, path):
                await db.close()
                for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
                    (path.parent / name).unlink(missing_ok=True)
                db = await connect(path, readonly=False, schema="", synchronous="OFF")
            await db.executescript(f"{INDEX_SCHEMA}\nPRAGMA user_version = {INDEX_FORMAT};")
            await db.commit()
        index = cls(db)
        await index._load_topics()
        return index

    async def close(self) -> None:
        await self.db.close()

    async def _load_topics(self) -> None:
        async with self.db.execute("SELECT topic_id, name FROM topics") as cur:
            self._topics = {row[0]: row[1] for row in await cur.fetchall()}
        self._topic_ids = {name: topic_id for topic_id, name in self._topics.items()}

    async def _topic_names(self, ids: Iterable[int]) -> dict[int, str]:
        """Names of topic ids (a reader beside the broker learns new topics here)."""
        if not set(ids) <= self._topics.keys():
            await self._load_topics()
        return self._topics

    async def _events(self, sql: str, args: Sequence[Any] = ()) -> list[IndexedEvent]:
        async with self.db.execute(sql, args) as cur:
            rows = list(await cur.fetchall())
        topics = await self._topic_names(r[2] for r in rows)
        events = []
        for offset, id_, topic, key, time, correlation_id, causation_id in rows:
            event_id = unpack_id(id_)
            events.append(
                IndexedEvent(
                    offset,
                    event_id,
                    topics[topic],
                    key,
                    time / 1000,
                    event_id if correlation_id is None else unpack_id(correlation_id),
                    None if causation_id is None else unpack_id(causation_id),
                )
            )
        return events

    async def next_offset(self) -> int:
        """One past the highest indexed offset (0 when empty)."""
        async with self.db.execute('SELECT MAX("offset") FROM events') as cur:
            row = await cur.fetchone()
        return 0 if row is None or row[0] is None else int(row[0]) + 1

    async def add(self, events: Sequence[IndexedEvent]) -> None:
        # Synchronous=OFF: the index is derived from the log and is rebuilt from it after a crash.
        new = {e.topic for e in events} - self._topic_ids.keys()
        if new:
            await self.db.executemany(
                "INSERT OR IGNORE INTO topics (name) VALUES (?)", [(t,) for t in sorted(new)]
            )
            await self._load_topics()
        ids = self._topic_ids
        await self.db.executemany(
            f"INSERT OR IGNORE INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    e.offset,
                    pack_id(e.id),
                    ids[e.topic],
                    e.key,
                    round(e.time * 1000),
                    None if e.correlation_id in (None, e.id) else pack_id(e.correlation_id),
                    None if e.causation_id is None else pack_id(e.causation_id),
                )
                for e in events
            ],
        )
        await self.db.commit()

    async def chain(self, correlation_id: str) -> list[IndexedEvent]:
        """Every event of a chain, in log order."""
        packed = pack_id(correlation_id)
        return await self._events(
            f'SELECT {_COLUMNS} FROM events WHERE correlation_id = ? OR id = ? ORDER BY "offset"',
            (packed, packed),
        )

    async def by_id(self, event_id: str) -> IndexedEvent | None:
        found = await self._events(
            f"SELECT {_COLUMNS} FROM events WHERE id = ?", (pack_id(event_id),)
        )
        return found[0] if found else None

    async def trim_before(self, offset: int) -> None:
        """Forget events below ``offset`` (after retention removed them for good)."""
        await self.db.execute('DELETE FROM events WHERE "offset" < ?', (offset,))
        await self.db.commit()

    # -- queries for the dashboard ---------------------------------------------------------

    async def query(self, q: EventQuery, *, before: int, limit: int) -> list[IndexedEvent]:
        """Events matching ``q`` with an offset below ``before``, newest first.

        Keyset pagination: the next page is ``before=<last offset of this page>``, so a page
        costs the same at any depth of a large log. A time range is first turned into a range
        of offsets (see :meth:`first_offset_since`).
        """
        where, args = q.where()
        if q.until is not None:
            until = await self.first_offset_since(q.until)
            before = before if until is None else min(before, until)
        where.append('"offset" < ?')
        args.append(before)
        if q.since is not None:
            since = await self.first_offset_since(q.since)
            where.append('"offset" >= ?')
            args.append(before if since is None else since)
        return await self._events(
            f'SELECT {_COLUMNS} FROM events WHERE {" AND ".join(where)} ORDER BY "offset" DESC LIMIT ?',
            (*args, limit),
        )

    async def first_offset_since(self, since: float) -> int | None:
        """The offset of the first event appended at or after ``since`` (None: none yet).

        A binary search on the offsets, as the append time grows with the offset (``index.db``
        has no index on time): about 20 lookups of the primary key on a 1M-event index.
        """
        target = since * 1000
        # Two subqueries: each of MIN and MAX alone is one lookup, both at once a full scan.
        async with self.db.execute(
            'SELECT (SELECT MIN("offset") FROM events), (SELECT MAX("offset") FROM events)'
        ) as cur:
            row = await cur.fetchone()
        if row is None or row[0] is None:
            return None
        lo, hi = int(row[0]), int(row[1])
        last = await self._first_at_or_after(hi)
        if last is None or last[1] < target:
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            found = await self._first_at_or_after(mid)
            if found is not None and found[1] >= target:
                hi = mid
            else:
                lo = mid + 1
        first = await self._first_at_or_after(lo)
        return None if first is None else first[0]

    async def _first_at_or_after(self, offset: int) -> tuple[int, int] | None:
        """``(offset, time)`` of the first event at or after ``offset``."""
        async with self.db.execute(
            'SELECT "offset", time FROM events WHERE "offset" >= ? ORDER BY "offset" LIMIT 1',
            (offset,),
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    async def topic_counts(self, *, from_offset: int = 0) -> dict[str, int]:
        """Events per topic from ``from_offset`` on."""
        # NOT INDEXED: read the window by offset; grouping along the topic index would read
        # every event of the log, however small the window.
        async with self.db.execute(
            'SELECT topic, COUNT(*) FROM events NOT INDEXED WHERE "offset" >= ? GROUP BY topic',
            (from_offset,),
        ) as cur:
            rows = list(await cur.fetchall())
        names = await self._topic_names(r[0] for r in rows)
        return dict(sorted((names[r[0]], r[1]) for r in rows))

    async def count(self, topic: str, *, from_offset: int, to_offset: int) -> int:
        """Events of ``topic`` with ``from_offset <= offset < to_offset``."""
        async with self.db.execute(
            f'SELECT COUNT(*) FROM events WHERE topic = {_TOPIC_ID} AND "offset" >= ? AND "offset" < ?',
            (topic, from_offset, to_offset),
        ) as cur:
            row = await cur.fetchone()
        return 0 if row is None else int(row[0])

    async def counts_over_time(
        self, topic: str, *, since: float, bucket_seconds: float
    ) -> dict[int, int]:
        """``{bucket number: events}`` of ``topic`` since ``since``; bucket = (time - since) // width."""
        first = await self.first_offset_since(since)
        if first is None:
            return {}
        async with self.db.execute(
            "SELECT CAST((time - ?) / ? AS INTEGER) AS b, COUNT(*) FROM events"
            f' WHERE topic = {_TOPIC_ID} AND "offset" >= ? AND time >= ? GROUP BY b',
            (since * 1000, bucket_seconds * 1000, topic, first, since * 1000),
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
            rows = list(await cur.fetchall())
        names = await self._topic_names(t for r in rows for t in r[:2])
        return [TopicFlow(names[r[0]], names[r[1]], r[2]) for r in rows]

    async def recent_chains(
        self, *, from_offset: int = 0, topic: str | None = None, limit: int = 50
    ) -> list[ChainSummary]:
        """Chains started from ``from_offset`` on, newest first; with ``topic``, those holding it."""
        chain = "COALESCE(correlation_id, id)"  # a chain's first event stores no correlation id
        where = ['"offset" >= ?']
        args: list[Any] = [from_offset]
        if topic is not None:
            where.append(
                f"{chain} IN (SELECT {chain} FROM events"
                f' WHERE topic = {_TOPIC_ID} AND "offset" >= ?)'
            )
            args.extend([topic, from_offset])
        sql = (
            f'SELECT {chain} AS chain, MIN("offset") AS first, COUNT(*) FROM events'
            f" WHERE {' AND '.join(where)} GROUP BY chain ORDER BY first DESC LIMIT ?"
        )
        async with self.db.execute(sql, (*args, limit)) as cur:
            groups = list(await cur.fetchall())
        firsts = await self._by_offsets([g[1] for g in groups])
        return [
            ChainSummary(unpack_id(g[0]), g[1], firsts[g[1]].topic, firsts[g[1]].time, g[2])
            for g in groups
            if g[1] in firsts
        ]

    async def _by_offsets(self, offsets: Sequence[int]) -> dict[int, IndexedEvent]:
        if not offsets:
            return {}
        marks = ",".join("?" * len(offsets))
        found = await self._events(
            f'SELECT {_COLUMNS} FROM events WHERE "offset" IN ({marks})', tuple(offsets)
        )
        return {e.offset: e for e in found}


async def _format(db: aiosqlite.Connection) -> int:
    async with db.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    return 0 if row is None else int(row[0])


async def _other_format(db: aiosqlite.Connection, path: Path) -> bool:
    """Whether ``db`` holds an index of another format (to delete, and rebuild from the log)."""
    found = await _format(db)
    async with db.execute("SELECT COUNT(*) FROM sqlite_schema WHERE type = 'table'") as cur:
        row = await cur.fetchone()
    if found == INDEX_FORMAT or row is None or row[0] == 0:
        return False
    logger.warning(
        "%s is in format %d (format %d is current): rebuilding it from the log; chain queries "
        "and the dashboard read the log meanwhile",
        path,
        found,
        INDEX_FORMAT,
    )
    return True

"""Access to ``state.db``: every SQL statement on broker state lives here.

The broker process owns the writes; the CLI and the dashboard open the same file read-only
(WAL mode lets them read while the broker writes) and queue their actions as ``requests``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from localbroker.errors import BrokerStateError, NotFoundError
from localbroker.state.schema import STATE_SCHEMA

__all__ = ["DLQEntry", "ErrorRecord", "StateStore", "SubscriberState", "connect"]


async def connect(
    path: Path, *, readonly: bool, schema: str, synchronous: str
) -> aiosqlite.Connection:
    """Open a SQLite file in WAL mode (creating the schema unless read-only)."""
    if readonly:
        if not path.exists():
            raise NotFoundError(f"no broker state at {path} (has a broker run on this directory?)")
        db = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute(f"PRAGMA synchronous={synchronous}")
        await db.executescript(schema)
        await db.commit()
    await db.execute("PRAGMA busy_timeout=5000")
    db.row_factory = aiosqlite.Row
    return db


@dataclasses.dataclass(slots=True)
class SubscriberState:
    """A subscriber's durable position and counters, as stored."""

    name: str
    patterns: list[str]
    start_offset: int
    committed: int
    position: int
    done: list[int]
    processed: int = 0
    failures: int = 0
    dead: int = 0
    handler_hist: dict[str, int] = dataclasses.field(default_factory=dict)
    heartbeat: float | None = None
    pid: int | None = None

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> SubscriberState:
        return cls(
            name=row["name"],
            patterns=orjson.loads(row["patterns"]),
            start_offset=row["start_offset"],
            committed=row["committed"],
            position=row["position"],
            done=orjson.loads(row["done"]),
            processed=row["processed"],
            failures=row["failures"],
            dead=row["dead"],
            handler_hist=orjson.loads(row["handler_hist"]),
            heartbeat=row["heartbeat"],
            pid=row["pid"],
        )

    def is_done(self, offset: int) -> bool:
        """Whether the delivery of ``offset`` to this subscriber is finished."""
        return offset < self.committed or offset in self.done


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorRecord:
    """One failed try of one delivery."""

    id: int
    subscriber: str
    offset: int
    event_id: str
    topic: str
    correlation_id: str | None
    attempt: int
    kind: str
    error_type: str
    message: str
    traceback: str
    time: float

    @property
    def error(self) -> str:
        """``Type('message')``, as in the log line."""
        return f"{self.error_type}({self.message!r})"


@dataclasses.dataclass(frozen=True, slots=True)
class DLQEntry:
    """A delivery that ran out of tries, with every try's error."""

    id: int
    subscriber: str
    offset: int
    event_id: str
    topic: str
    correlation_id: str | None
    tries: int
    error: str
    status: str
    dead_at: float
    updated: float
    retries: int
    attempts: tuple[ErrorRecord, ...] = ()


def _error(row: aiosqlite.Row) -> ErrorRecord:
    return ErrorRecord(**{k: row[k] for k in row.keys()})  # noqa: SIM118 - Row has no __iter__ of keys


def _dlq(row: aiosqlite.Row, attempts: Sequence[ErrorRecord] = ()) -> DLQEntry:
    return DLQEntry(**{k: row[k] for k in row.keys()}, attempts=tuple(attempts))  # noqa: SIM118


class StateStore:
    """Subscriber positions, deliveries, errors, the DLQ and operator requests in ``state.db``."""

    def __init__(self, db: aiosqlite.Connection, *, readonly: bool) -> None:
        self.db = db
        self.readonly = readonly

    @classmethod
    async def open(cls, path: Path, *, readonly: bool = False, durable: bool = False) -> StateStore:
        """Open ``state.db``.

        By default commits do not wait for the disk (WAL with ``synchronous=NORMAL``): a power
        cut may roll back the last few position updates, which only means redelivery (at least
        once), and it never corrupts the file. ``durable=True`` fsyncs every commit.
        """
        db = await connect(
            path,
            readonly=readonly,
            schema=STATE_SCHEMA,
            synchronous="FULL" if durable else "NORMAL",
        )
        return cls(db, readonly=readonly)

    async def close(self) -> None:
        await self.db.close()

    def _check_writable(self) -> None:
        if self.readonly:
            raise BrokerStateError("state store is open read-only")

    # -- subscribers ---------------------------------------------------------------------

    async def get_subscriber(self, name: str) -> SubscriberState | None:
        async with self.db.execute("SELECT * FROM subscribers WHERE name = ?", (name,)) as cur:
            row = await cur.fetchone()
        return SubscriberState.from_row(row) if row else None

    async def subscribers(self) -> list[SubscriberState]:
        async with self.db.execute("SELECT * FROM subscribers ORDER BY name") as cur:
            return [SubscriberState.from_row(r) for r in await cur.fetchall()]

    async def require_subscriber(self, name: str) -> SubscriberState:
        state = await self.get_subscriber(name)
        if state is None:
            known = ", ".join(s.name for s in await self.subscribers()) or "none"
            raise NotFoundError(f"unknown subscriber {name!r} (known: {known})")
        return state

    async def create_subscriber(
        self, name: str, patterns: list[str], start_offset: int
    ) -> SubscriberState:
        self._check_writable()
        now = time.time()
        await self.db.execute(
            "INSERT INTO subscribers (name, patterns, start_offset, committed, position, created, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                name,
                orjson.dumps(patterns).decode(),
                start_offset,
                start_offset,
                start_offset,
                now,
                now,
            ),
        )
        await self.db.commit()
        return SubscriberState(name, patterns, start_offset, start_offset, start_offset, [])

    async def update_patterns(self, name: str, patterns: list[str]) -> None:
        self._check_writable()
        await self.db.execute(
            "UPDATE subscribers SET patterns = ? WHERE name = ?",
            (orjson.dumps(patterns).decode(), name),
        )
        await self.db.commit()

    async def save_subscribers(self, states: Iterable[SubscriberState], pid: int) -> None:
        """Write positions and counters of several subscribers in one transaction."""
        self._check_writable()
        now = time.time()
        await self.db.executemany(
            "UPDATE subscribers SET committed = ?, position = ?, done = ?, processed = ?,"
            " failures = ?, dead = ?, handler_hist = ?, updated = ?, heartbeat = ?, pid = ?"
            " WHERE name = ?",
            [
                (
                    s.committed,
                    s.position,
                    orjson.dumps(sorted(s.done)).decode(),
                    s.processed,
                    s.failures,
                    s.dead,
                    orjson.dumps(s.handler_hist).decode(),
                    now,
                    now,
                    pid,
                    s.name,
                )
                for s in states
            ],
        )
        await self.db.commit()

    async def release_subscribers(self, names: Iterable[str]) -> None:
        """Mark subscribers as no longer run by a live process."""
        self._check_writable()
        await self.db.executemany(
            "UPDATE subscribers SET heartbeat = NULL, pid = NULL WHERE name = ?",
            [(n,) for n in names],
        )
        await self.db.commit()

    # -- deliveries and errors -----------------------------------------------------------

    async def deliveries_since(self, subscriber: str, offset: int) -> dict[int, tuple[int, str]]:
        """``{offset: (tries, status)}`` of this subscriber's recorded deliveries from ``offset`` on."""
        async with self.db.execute(
            'SELECT "offset", tries, status FROM deliveries WHERE subscriber = ? AND "offset" >= ?',
            (subscriber, offset),
        ) as cur:
            return {row[0]: (row[1], row[2]) for row in await cur.fetchall()}

    async def record_failure(
        self,
        *,
        subscriber: str,
        offset: int,
        event_id: str,
        topic: str,
        correlation_id: str | None,
        attempt: int,
        kind: str,
        error_type: str,
        message: str,
        traceback: str,
        dead: bool,
    ) -> None:
        """Store a failed try, and the delivery's tries; with ``dead`` also its DLQ entry."""
        self._check_writable()
        now = time.time()
        error = f"{error_type}({message!r})"
        await self.db.execute(
            'INSERT INTO errors (subscriber, "offset", event_id, topic, correlation_id, attempt,'
            " kind, error_type, message, traceback, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                subscriber,
                offset,
                event_id,
                topic,
                correlation_id,
                attempt,
                kind,
                error_type,
                message,
                traceback,
                now,
            ),
        )
        await self.db.execute(
            'INSERT INTO deliveries (subscriber, "offset", event_id, topic, tries, status,'
            " last_error, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            ' ON CONFLICT (subscriber, "offset") DO UPDATE SET tries = excluded.tries,'
            " status = excluded.status, last_error = excluded.last_error, updated = excluded.updated",
            (
                subscriber,
                offset,
                event_id,
                topic,
                attempt,
                "dead" if dead else "retrying",
                error,
                now,
            ),
        )
        if dead:
            await self.db.execute(
                'INSERT INTO dlq (subscriber, "offset", event_id, topic, correlation_id, tries,'
                " error, status, dead_at, updated) VALUES (?, ?, ?, ?, ?, ?, ?, 'dead', ?, ?)"
                ' ON CONFLICT (subscriber, "offset") DO UPDATE SET tries = excluded.tries,'
                " error = excluded.error, status = 'dead', dead_at = excluded.dead_at,"
                " updated = excluded.updated",
                (subscriber, offset, event_id, topic, correlation_id, attempt, error, now, now),
            )
        await self.db.commit()

    async def record_success_after_retry(self, subscriber: str, offset: int, tries: int) -> None:
        """A delivery that had failed before succeeded: keep its tries, resolve its DLQ entry."""
        self._check_writable()
        now = time.time()
        await self.db.execute(
            'UPDATE deliveries SET status = ?, tries = ?, updated = ? WHERE subscriber = ? AND "offset" = ?',
            ("done", tries, now, subscriber, offset),
        )
        await self.db.execute(
            "UPDATE dlq SET status = 'resolved', updated = ? WHERE subscriber = ? AND \"offset\" = ?"
            " AND status = 'retrying'",
            (now, subscriber, offset),
        )
        await self.db.commit()

    async def deliveries_for(self, offsets: Sequence[int]) -> dict[tuple[str, int], aiosqlite.Row]:
        """Delivery rows of the given offsets, keyed by (subscriber, offset)."""
        if not offsets:
            return {}
        marks = ",".join("?" * len(offsets))
        async with self.db.execute(
            f'SELECT * FROM deliveries WHERE "offset" IN ({marks})', tuple(offsets)
        ) as cur:
            return {(r["subscriber"], r["offset"]): r for r in await cur.fetchall()}

    async def errors(
        self,
        *,
        subscriber: str | None = None,
        topic: str | None = None,
        offset: int | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[ErrorRecord]:
        """Failed tries, newest first, filtered."""
        where, args = _filters(subscriber=subscriber, topic=topic, offset=offset)
        if since is not None:
            where.append("time >= ?")
            args.append(since)
        if until is not None:
            where.append("time < ?")
            args.append(until)
        if before_id is not None:
            where.append("id < ?")
            args.append(before_id)
        sql = "SELECT * FROM errors" + (" WHERE " + " AND ".join(where) if where else "")
        async with self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)) as cur:
            return [_error(r) for r in await cur.fetchall()]

    async def delivery_counts(
        self, *, topic: str | None = None, from_offset: int = 0
    ) -> list[tuple[str, str, int, str, int]]:
        """``(subscriber, topic, tries, status, deliveries)`` of deliveries that failed at least once."""
        where, args = _filters(topic=topic)
        where.append('"offset" >= ?')
        args.append(from_offset)
        async with self.db.execute(
            "SELECT subscriber, topic, tries, status, COUNT(*) FROM deliveries"
            f" WHERE {' AND '.join(where)} GROUP BY subscriber, topic, tries, status",
            args,
        ) as cur:
            return [(r[0], r[1], r[2], r[3], r[4]) for r in await cur.fetchall()]

    async def failed_events(self, *, from_offset: int = 0) -> dict[str, tuple[int, int]]:
        """Per topic: ``(events that failed a try, events dead-lettered)`` for some subscriber."""
        async with self.db.execute(
            'SELECT topic, COUNT(DISTINCT "offset"),'
            " COUNT(DISTINCT CASE WHEN status = 'dead' THEN \"offset\" END)"
            ' FROM deliveries WHERE "offset" >= ? GROUP BY topic',
            (from_offset,),
        ) as cur:
            return {row[0]: (row[1], row[2]) for row in await cur.fetchall()}

    async def errors_after(self, after_id: int, limit: int = 1000) -> list[ErrorRecord]:
        """Failed tries with an id above ``after_id``, oldest first (for followers such as sync)."""
        async with self.db.execute(
            "SELECT * FROM errors WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        ) as cur:
            return [_error(r) for r in await cur.fetchall()]

    # -- dead letter queue -----------------------------------------------------------------

    async def dlq_entries(
        self,
        *,
        subscriber: str | None = None,
        topic: str | None = None,
        status: Sequence[str] = ("dead",),
        limit: int = 1000,
    ) -> list[DLQEntry]:
        where, args = _filters(subscriber=subscriber, topic=topic)
        if status:
            where.append(f"status IN ({','.join('?' * len(status))})")
            args.extend(status)
        sql = "SELECT * FROM dlq" + (" WHERE " + " AND ".join(where) if where else "")
        async with self.db.execute(sql + " ORDER BY id LIMIT ?", (*args, limit)) as cur:
            return [_dlq(r) for r in await cur.fetchall()]

    async def dlq_for(self, offsets: Sequence[int]) -> dict[tuple[str, int], DLQEntry]:
        """DLQ entries (any status) of the given offsets, keyed by (subscriber, offset)."""
        if not offsets:
            return {}
        marks = ",".join("?" * len(offsets))
        async with self.db.execute(
            f'SELECT * FROM dlq WHERE "offset" IN ({marks})', tuple(offsets)
        ) as cur:
            return {(r["subscriber"], r["offset"]): _dlq(r) for r in await cur.fetchall()}

    async def dlq_entry(self, entry_id: int) -> DLQEntry:
        async with self.db.execute("SELECT * FROM dlq WHERE id = ?", (entry_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            raise NotFoundError(f"no DLQ entry {entry_id}")
        attempts = await self.errors(
            subscriber=row["subscriber"], offset=row["offset"], limit=10_000
        )
        return _dlq(row, sorted(attempts, key=lambda e: e.id))

    async def dlq_updated_since(self, since: float, limit: int = 1000) -> list[DLQEntry]:
        """DLQ entries (any status) changed at or after ``since``, oldest change first."""
        async with self.db.execute(
            "SELECT * FROM dlq WHERE updated >= ? ORDER BY updated, id LIMIT ?", (since, limit)
        ) as cur:
            return [_dlq(r) for r in await cur.fetchall()]

    async def dlq_counts(self) -> dict[str, int]:
        """Entries still dead, by subscriber."""
        async with self.db.execute(
            "SELECT subscriber, COUNT(*) FROM dlq WHERE status = 'dead' GROUP BY subscriber"
        ) as cur:
            return {row[0]: row[1] for row in await cur.fetchall()}

    async def set_dlq_status(self, entry_id: int, status: str, *, expect: str = "dead") -> DLQEntry:
        """Move an entry from ``expect`` to ``status`` (retrying or discarded)."""
        self._check_writable()
        entry = await self.dlq_entry(entry_id)
        if entry.status != expect:
            raise BrokerStateError(
                f"DLQ entry {entry_id} is {entry.status}, not {expect}; nothing to {status[:-3] or status}"
            )
        retries = entry.retries + (status == "retrying")
        await self.db.execute(
            "UPDATE dlq SET status = ?, updated = ?, retries = ? WHERE id = ?",
            (status, time.time(), retries, entry_id),
        )
        await self.db.commit()
        return dataclasses.replace(entry, status=status, retries=retries)

    async def retrying_dlq(self, subscriber: str) -> list[DLQEntry]:
        """Entries an operator sent back to ``subscriber`` that are not handled yet."""
        return await self.dlq_entries(subscriber=subscriber, status=("retrying",), limit=100_000)

    # -- operator requests -----------------------------------------------------------------

    async def add_request(self, action: str, args: dict[str, Any]) -> int:
        """Queue an action for the running broker; returns the request id."""
        cur = await self.db.execute(
            "INSERT INTO requests (action, args, created) VALUES (?, ?, ?)",
            (action, orjson.dumps(args).decode(), time.time()),
        )
        await self.db.commit()
        assert cur.lastrowid is not None
        return cur.lastrowid

    async def request_result(self, request_id: int) -> tuple[str, Any]:
        """``(status, result)`` of a queued request."""
        async with self.db.execute(
            "SELECT status, result FROM requests WHERE id = ?", (request_id,)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            raise NotFoundError(f"no request {request_id}")
        return row[0], orjson.loads(row[1]) if row[1] else None

    async def pending_requests(self) -> list[tuple[int, str, dict[str, Any]]]:
        async with self.db.execute(
            "SELECT id, action, args FROM requests WHERE status = 'pending' ORDER BY id"
        ) as cur:
            return [(r[0], r[1], orjson.loads(r[2])) for r in await cur.fetchall()]

    async def finish_request(self, request_id: int, *, ok: bool, result: Any) -> None:
        self._check_writable()
        await self.db.execute(
            "UPDATE requests SET status = ?, result = ?, done_at = ? WHERE id = ?",
            ("done" if ok else "failed", orjson.dumps(result).decode(), time.time(), request_id),
        )
        await self.db.commit()

    # -- extensions' key/value -------------------------------------------------------------

    async def get_value(self, key: str) -> Any:
        async with self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return orjson.loads(row[0]) if row else None

    async def values(self, prefix: str) -> dict[str, Any]:
        """Every key/value whose key starts with ``prefix`` (e.g. ``"sync."``), by key."""
        async with self.db.execute(
            "SELECT key, value FROM kv WHERE substr(key, 1, ?) = ? ORDER BY key",
            (len(prefix), prefix),
        ) as cur:
            return {row[0]: orjson.loads(row[1]) for row in await cur.fetchall()}

    async def set_value(self, key: str, value: Any) -> None:
        self._check_writable()
        await self.db.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, orjson.dumps(value).decode()),
        )
        await self.db.commit()


def _filters(**equal: Any) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    for column, value in equal.items():
        if value is not None:
            where.append(f'"{column}" = ?')
            args.append(value)
    return where, args

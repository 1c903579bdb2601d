"""Access to ``state.db``: every SQL statement on broker state lives here.

The broker process owns the writes; the CLI and the dashboard open the same file read-only
(WAL mode lets them read while the broker writes) and queue their actions as ``requests``.

Every logical change is one transaction (:meth:`StateStore.transaction`): the coroutines of a
broker share one connection, and a change made of several statements must never be split by
another coroutine's commit — a crash in between would keep half of it (a delivery marked dead
without its DLQ entry). SQLite's errors are translated here into
:class:`~localbroker.errors.StateStoreError`, naming the file and the subscriber concerned.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite
import orjson

from localbroker.errors import BrokerStateError, NotFoundError, StateStoreError, StorageFullError
from localbroker.state.schema import STATE_SCHEMA

if TYPE_CHECKING:
    from localbroker.state.coordination import Lease

__all__ = [
    "DLQEntry",
    "ErrorRecord",
    "StateStore",
    "SubscriberState",
    "connect",
    "state_exists",
]

logger = logging.getLogger("localbroker.state")

#: Milliseconds a statement waits for another process's write lock before failing.
BUSY_TIMEOUT_MS = 5000

#: What an operator does about a damaged subscriber or delivery row (said in the error).
REPAIR_HINT = (
    "stop the broker and run 'localbroker state repair DIR', which resets the damaged values "
    "to ones that skip nothing (see 'After damage' in the README)"
)


async def connect(
    path: Path, *, readonly: bool, schema: str, synchronous: str, autocommit: bool = False
) -> aiosqlite.Connection:
    """Open a SQLite file in WAL mode (creating the schema unless read-only).

    ``autocommit`` leaves transactions to the caller (``BEGIN ... COMMIT``) instead of the
    sqlite3 module's implicit ones. On any failure the connection (and its thread) is closed.
    """
    options: dict[str, Any] = {"isolation_level": None} if autocommit else {}
    if readonly:
        if not path.exists():
            raise NotFoundError(f"no broker state at {path} (has a broker run on this directory?)")
        db = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True, **options)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, **options)
    try:
        await db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if not readonly:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute(f"PRAGMA synchronous={synchronous}")
            await db.executescript(schema)
            await db.commit()
    except BaseException:
        # aiosqlite's worker thread is not a daemon: left open, it keeps the process alive.
        await db.close()
        raise
    db.row_factory = aiosqlite.Row
    return db


def state_exists(path: Path) -> bool:
    """Whether ``path`` holds a state database (an empty file counts as none)."""
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def _json(kind: type) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError(f"holds {value!r}, not JSON text")
        parsed = orjson.loads(value)
        if not isinstance(parsed, kind):
            raise ValueError(f"holds {type(parsed).__name__}, not a JSON {kind.__name__}")
        return parsed

    return parse


def _integer(value: Any) -> int:
    if not isinstance(value, int):
        raise ValueError(f"holds {value!r}, not an integer")
    return value


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else parse(value)


def _number(value: Any) -> float:
    if not isinstance(value, int | float):
        raise ValueError(f"holds {value!r}, not a number")
    return float(value)


#: How each column of a ``subscribers`` row is read back, and the value ``repair`` puts in
#: place of a damaged one (``None`` for those computed from other columns).
_SUBSCRIBER_COLUMNS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "patterns": (_json(list), "[]"),  # the broker writes its registered patterns at start
    "start_offset": (_integer, None),
    "committed": (_integer, None),
    "position": (_integer, None),
    "done": (_json(list), "[]"),  # offsets in flight before are delivered again
    "processed": (_integer, 0),
    "failures": (_integer, 0),
    "dead": (_integer, 0),
    "handler_hist": (_json(dict), "{}"),
    "created": (_number, None),
    "updated": (_number, None),
    "heartbeat": (_optional(_number), None),
    "pid": (_optional(_integer), None),
}


#: A value SQLite holds but that cannot be read back (invalid UTF-8, a blob for text).
_UNREADABLE = object()


def _raw(kind: str, raw: bytes | None) -> Any:
    """A value read as ``typeof(x), CAST(x AS BLOB)``: the cast never fails to decode."""
    if kind == "null" or raw is None:
        return None
    if kind == "integer":
        return int(raw)
    if kind == "real":
        return float(raw)
    if kind == "text":
        try:
            return bytes(raw).decode()
        except UnicodeDecodeError:
            return _UNREADABLE
    return _UNREADABLE


def _valid(parse: Callable[[Any], Any], value: Any) -> bool:
    if value is _UNREADABLE:
        return False
    try:
        parse(value)
    except ValueError:
        return False
    return True


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"holds {value!r}, not text")
    return value


def _status(value: Any) -> str:
    if value not in ("retrying", "done", "dead"):
        raise ValueError(f"holds {value!r}, not a delivery status")
    return str(value)


#: Columns of a ``deliveries`` row that ``repair`` checks, and what it puts in place of a
#: damaged value. An unknown status becomes "retrying": the delivery is made again.
_DELIVERY_COLUMNS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "tries": (_integer, 1),
    "status": (_status, "retrying"),
    "event_id": (_text, "?"),
    "topic": (_text, "?"),
    "last_error": (_optional(_text), None),
    "updated": (_number, None),
}


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
        """Parse a ``subscribers`` row; ``ValueError`` names a damaged column."""
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls)[1:]:  # all but the name
            column = field.name
            parse = _SUBSCRIBER_COLUMNS[column][0]
            try:
                values[column] = parse(row[column])
            except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
                raise ValueError(f"column {column!r} {exc}") from exc
        return cls(name=row["name"], **values)

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


# History retention (see trim_history). A delivery is finished when it was handled (status
# done; its DLQ entry, if any, resolved) or its DLQ entry was discarded. Rows go in the order
# errors -> deliveries -> dlq, each only once the rows before it are gone, so a batch that
# stops half-way never leaves a row that can no longer be recognised as finished.
_TRIM_ERRORS = """
DELETE FROM errors WHERE id IN (
    SELECT e.id FROM errors AS e
    LEFT JOIN deliveries AS d ON d.subscriber = e.subscriber AND d."offset" = e."offset"
    LEFT JOIN dlq AS q ON q.subscriber = e.subscriber AND q."offset" = e."offset"
    WHERE e.time < ?1
      AND (q.status IS NULL OR q.status IN ('resolved', 'discarded'))
      AND (d.status IS NULL OR d.status = 'done' OR q.status = 'discarded')
    ORDER BY e.time LIMIT ?2)
"""
# A finished delivery at or above its subscriber's committed offset keeps its row: after a
# restart that row is what says it must not be delivered again.
_TRIM_DELIVERIES = """
DELETE FROM deliveries WHERE rowid IN (
    SELECT d.rowid FROM deliveries AS d
    JOIN subscribers AS s ON s.name = d.subscriber
    LEFT JOIN dlq AS q ON q.subscriber = d.subscriber AND q."offset" = d."offset"
    WHERE d.updated < ?1 AND d."offset" < s.committed
      AND (q.status IS NULL OR q.status IN ('resolved', 'discarded'))
      AND (d.status = 'done' OR q.status = 'discarded')
      AND NOT EXISTS (SELECT 1 FROM errors AS e
                      WHERE e.subscriber = d.subscriber AND e."offset" = d."offset")
    ORDER BY d.updated LIMIT ?2)
"""
# DLQ entries are kept until resolved or discarded, whatever their age.
_TRIM_DLQ = """
DELETE FROM dlq WHERE id IN (
    SELECT q.id FROM dlq AS q
    WHERE q.status IN ('resolved', 'discarded') AND q.updated < ?1
      AND NOT EXISTS (SELECT 1 FROM deliveries AS d
                      WHERE d.subscriber = q.subscriber AND d."offset" = q."offset")
      AND NOT EXISTS (SELECT 1 FROM errors AS e
                      WHERE e.subscriber = q.subscriber AND e."offset" = q."offset")
    ORDER BY q.updated LIMIT ?2)
"""
_TRIM_REQUESTS = """
DELETE FROM requests WHERE id IN (
    SELECT id FROM requests WHERE status <> 'pending' AND done_at < ?1 ORDER BY id LIMIT ?2)
"""


class StateStore:
    """Subscriber positions, deliveries, errors, the DLQ and operator requests in ``state.db``.

    Each write method is one transaction. Several writes that form one change go inside
    :meth:`transaction`, which they then join. Failures raise
    :class:`~localbroker.errors.StateStoreError` naming the file (and the subscriber).
    """

    def __init__(
        self,
        db: aiosqlite.Connection,
        *,
        path: Path,
        readonly: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.path = path
        """The ``state.db`` file."""
        self.readonly = readonly
        self._clock = clock
        # One statement or transaction at a time on the shared connection: a coroutine never
        # sees (or commits) another one's unfinished change.
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        readonly: bool = False,
        durable: bool = False,
        create: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> StateStore:
        """Open ``state.db``; only ``create=True`` (the broker) creates a missing one.

        By default commits do not wait for the disk (WAL with ``synchronous=NORMAL``): a power
        cut may roll back the last few position updates, which only means redelivery (at least
        once), and it never corrupts the file. ``durable=True`` fsyncs every commit.
        ``clock`` gives the times stored with errors, deliveries and DLQ entries.

        Tools beside the broker must not create it: an empty ``state.db`` would hide from the
        broker that the real one is missing (see ``on_missing_state``).
        """
        if not readonly and not create and not state_exists(path):
            raise NotFoundError(f"no broker state at {path} (has a broker run on this directory?)")
        try:
            db = await connect(
                path,
                readonly=readonly,
                schema=STATE_SCHEMA,
                synchronous="FULL" if durable else "NORMAL",
                autocommit=True,
            )
        except sqlite3.Error as exc:
            raise StateStoreError(path, f"cannot open: {_describe(exc)}") from exc
        return cls(db, path=path, readonly=readonly, clock=clock)

    async def close(self) -> None:
        await self.db.close()

    def _check_writable(self) -> None:
        if self.readonly:
            raise BrokerStateError(f"state store {self.path} is open read-only")

    # -- transactions and errors -----------------------------------------------------------

    def _in_transaction(self) -> bool:
        return self._owner is not None and self._owner is asyncio.current_task()

    @contextlib.asynccontextmanager
    async def transaction(
        self, what: str = "save a change", *, subscriber: str | None = None
    ) -> AsyncIterator[None]:
        """One logical change: ``BEGIN IMMEDIATE``, the statements, then ``COMMIT``.

        On any exception the change is rolled back and the exception goes on (SQLite's as a
        :class:`StateStoreError` saying it could not ``what``). Writers on this store wait for
        each other, so no other coroutine's statement or commit lands in the middle.
        ``IMMEDIATE`` takes SQLite's write lock at the start: another process writing the
        file makes this wait (up to the busy timeout) instead of failing half-way. Inside a
        transaction, the store's methods (reads and writes) join it; they must be awaited by
        the task that opened it.

        Example::

            async with store.transaction("carry out request 7"):
                entry = await store.set_dlq_status(12, "retrying")
                await store.finish_request(7, ok=True, result=[entry.id])
        """
        self._check_writable()
        if self._in_transaction():
            yield
            return
        async with self._lock:
            self._owner = asyncio.current_task()
            try:
                try:
                    # Inside the try: cancelled while waiting for BEGIN, the BEGIN still runs.
                    await self.db.execute("BEGIN IMMEDIATE")
                    yield
                    await self.db.execute("COMMIT")
                except BaseException:
                    await self._rollback()
                    raise
            except sqlite3.Error as exc:
                raise self._failure(what, exc, subscriber) from exc
            finally:
                self._owner = None

    async def _rollback(self) -> None:
        # A no-op when SQLite already rolled back (some errors, e.g. a full disk, do). The
        # ROLLBACK is queued on the connection's thread before anything issued after it, even
        # if this task is cancelled while waiting for it.
        try:
            await self.db.rollback()
        except sqlite3.Error:
            logger.exception("could not roll back a failed change in %s", self.path)

    @contextlib.asynccontextmanager
    async def _reading(self, what: str, subscriber: str | None = None) -> AsyncIterator[None]:
        try:
            if self._in_transaction():
                yield
            else:
                async with self._lock:
                    yield
        except sqlite3.Error as exc:
            raise self._failure(what, exc, subscriber) from exc

    async def _all(
        self, what: str, sql: str, args: Sequence[Any] = (), *, subscriber: str | None = None
    ) -> list[aiosqlite.Row]:
        async with self._reading(what, subscriber), self.db.execute(sql, args) as cur:
            return list(await cur.fetchall())

    async def _one(
        self, what: str, sql: str, args: Sequence[Any] = (), *, subscriber: str | None = None
    ) -> aiosqlite.Row | None:
        rows = await self._all(what, sql, args, subscriber=subscriber)
        return rows[0] if rows else None

    async def _write(
        self, what: str, sql: str, args: Sequence[Any] = (), *, subscriber: str | None = None
    ) -> aiosqlite.Cursor:
        async with self.transaction(what, subscriber=subscriber):
            return await self.db.execute(sql, args)

    def _failure(self, what: str, exc: sqlite3.Error, subscriber: str | None) -> StateStoreError:
        if _disk_full(exc):
            return StorageFullError(
                self.path,
                f"the disk is full: could not {what} ({_describe(exc)}); nothing of it was "
                "saved, and it is saved again once there is free space",
                subscriber,
            )
        message = f"could not {what}: {_describe(exc)}"
        if subscriber is not None and "decode" in str(exc):
            message += f"; {REPAIR_HINT}"
        return StateStoreError(self.path, message, subscriber)

    # -- subscribers ---------------------------------------------------------------------

    def _subscriber(self, row: aiosqlite.Row) -> SubscriberState:
        try:
            return SubscriberState.from_row(row)
        except ValueError as exc:
            name = row["name"]
            raise StateStoreError(
                self.path, f"subscriber {name!r} has a damaged row: {exc}; {REPAIR_HINT}", name
            ) from exc

    async def get_subscriber(self, name: str) -> SubscriberState | None:
        row = await self._one(
            f"read subscriber {name!r}",
            "SELECT * FROM subscribers WHERE name = ?",
            (name,),
            subscriber=name,
        )
        return self._subscriber(row) if row else None

    async def subscribers(self) -> list[SubscriberState]:
        try:
            rows = await self._all(
                "read the subscribers", "SELECT * FROM subscribers ORDER BY name"
            )
        except StateStoreError:
            # One damaged row fails the whole query: name it.
            for name in await self._subscriber_names():
                await self.get_subscriber(name)
            raise
        return [self._subscriber(r) for r in rows]

    async def _subscriber_names(self) -> list[str]:
        rows = await self._all(
            "read the subscribers' names", "SELECT CAST(name AS BLOB) FROM subscribers"
        )
        return [bytes(r[0]).decode(errors="replace") for r in rows]

    async def require_subscriber(self, name: str) -> SubscriberState:
        state = await self.get_subscriber(name)
        if state is None:
            known = ", ".join(await self._subscriber_names()) or "none"
            raise NotFoundError(f"unknown subscriber {name!r} (known: {known})")
        return state

    async def create_subscriber(
        self, name: str, patterns: list[str], start_offset: int
    ) -> SubscriberState:
        """Create a subscriber at ``start_offset``; one created meanwhile by another process wins."""
        now = self._clock()
        async with self.transaction(f"create subscriber {name!r}", subscriber=name):
            await self.db.execute(
                "INSERT INTO subscribers (name, patterns, start_offset, committed, position, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                (name, orjson.dumps(patterns).decode(), *[start_offset] * 3, now, now),
            )
            state = await self.get_subscriber(name)
        assert state is not None
        return state

    async def update_patterns(self, name: str, patterns: list[str]) -> None:
        await self._write(
            f"update the patterns of subscriber {name!r}",
            "UPDATE subscribers SET patterns = ? WHERE name = ?",
            (orjson.dumps(patterns).decode(), name),
            subscriber=name,
        )

    async def save_subscribers(
        self,
        states: Iterable[SubscriberState],
        pid: int,
        fences: Mapping[str, Lease] | None = None,
    ) -> None:
        """Write positions and counters of several subscribers in one transaction.

        A subscriber named in ``fences`` is written only while the lease there still has that
        holder and epoch (another process that took its queue over is not overwritten).
        """
        now = self._clock()
        fences = fences or {}
        rows = [
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
                *_fence(fences.get(s.name)),
            )
            for s in states
        ]
        async with self.transaction("save subscriber positions"):
            await self.db.executemany(
                "UPDATE subscribers SET committed = ?, position = ?, done = ?, processed = ?,"
                " failures = ?, dead = ?, handler_hist = ?, updated = ?, heartbeat = ?, pid = ?"
                " WHERE name = ? AND (? IS NULL OR EXISTS (SELECT 1 FROM leases"
                " WHERE name = ? AND holder = ? AND epoch = ?))",
                rows,
            )

    async def subscribers_with_retries(self) -> list[str]:
        """Subscribers with DLQ entries an operator sent back that are not handled yet."""
        rows = await self._all(
            "read the DLQ entries being retried",
            "SELECT DISTINCT subscriber FROM dlq WHERE status = 'retrying'",
        )
        return [row[0] for row in rows]

    async def release_subscribers(self, names: Iterable[str]) -> None:
        """Mark subscribers as no longer run by a live process."""
        async with self.transaction("release subscribers"):
            await self.db.executemany(
                "UPDATE subscribers SET heartbeat = NULL, pid = NULL WHERE name = ?",
                [(n,) for n in names],
            )

    # -- deliveries and errors -----------------------------------------------------------

    async def deliveries_since(self, subscriber: str, offset: int) -> dict[int, tuple[int, str]]:
        """``{offset: (tries, status)}`` of this subscriber's recorded deliveries from ``offset`` on."""
        rows = await self._all(
            f"read the deliveries of subscriber {subscriber!r}",
            'SELECT "offset", tries, status FROM deliveries WHERE subscriber = ? AND "offset" >= ?',
            (subscriber, offset),
            subscriber=subscriber,
        )
        restored: dict[int, tuple[int, str]] = {}
        for at, tries, status in rows:
            if not isinstance(at, int) or not isinstance(tries, int):
                raise StateStoreError(
                    self.path,
                    f"subscriber {subscriber!r} has a damaged delivery row (offset {at!r},"
                    f" tries {tries!r}); {REPAIR_HINT}",
                    subscriber,
                )
            # An unknown status is taken as not finished: delivered again, never skipped.
            restored[at] = (tries, status if status in ("done", "dead") else "retrying")
        return restored

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
        """Store a failed try, and the delivery's tries; with ``dead`` also its DLQ entry.

        One transaction: a crash keeps all of it or none (a delivery marked dead always has
        its DLQ entry).
        """
        now = self._clock()
        error = f"{error_type}({message!r})"
        async with self.transaction(
            f"record a failed delivery of offset {offset}", subscriber=subscriber
        ):
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

    async def record_success_after_retry(self, subscriber: str, offset: int, tries: int) -> None:
        """A delivery that had failed before succeeded: keep its tries, resolve its DLQ entry."""
        now = self._clock()
        async with self.transaction(
            f"record the success of offset {offset}", subscriber=subscriber
        ):
            await self.db.execute(
                'UPDATE deliveries SET status = ?, tries = ?, updated = ? WHERE subscriber = ? AND "offset" = ?',
                ("done", tries, now, subscriber, offset),
            )
            await self.db.execute(
                "UPDATE dlq SET status = 'resolved', updated = ? WHERE subscriber = ? AND \"offset\" = ?"
                " AND status = 'retrying'",
                (now, subscriber, offset),
            )

    async def deliveries_for(self, offsets: Sequence[int]) -> dict[tuple[str, int], aiosqlite.Row]:
        """Delivery rows of the given offsets, keyed by (subscriber, offset)."""
        if not offsets:
            return {}
        marks = ",".join("?" * len(offsets))
        rows = await self._all(
            "read deliveries", f'SELECT * FROM deliveries WHERE "offset" IN ({marks})', offsets
        )
        return {(r["subscriber"], r["offset"]): r for r in rows}

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
        rows = await self._all("read errors", sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [_error(r) for r in rows]

    async def delivery_counts(
        self, *, topic: str | None = None, from_offset: int = 0
    ) -> list[tuple[str, str, int, str, int]]:
        """``(subscriber, topic, tries, status, deliveries)`` of deliveries that failed at least once."""
        where, args = _filters(topic=topic)
        where.append('"offset" >= ?')
        args.append(from_offset)
        rows = await self._all(
            "count deliveries",
            "SELECT subscriber, topic, tries, status, COUNT(*) FROM deliveries"
            f" WHERE {' AND '.join(where)} GROUP BY subscriber, topic, tries, status",
            args,
        )
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def failed_events(self, *, from_offset: int = 0) -> dict[str, tuple[int, int]]:
        """Per topic: ``(events that failed a try, events dead-lettered)`` for some subscriber."""
        rows = await self._all(
            "count failed events",
            'SELECT topic, COUNT(DISTINCT "offset"),'
            " COUNT(DISTINCT CASE WHEN status = 'dead' THEN \"offset\" END)"
            ' FROM deliveries WHERE "offset" >= ? GROUP BY topic',
            (from_offset,),
        )
        return {row[0]: (row[1], row[2]) for row in rows}

    async def errors_after(self, after_id: int, limit: int = 1000) -> list[ErrorRecord]:
        """Failed tries with an id above ``after_id``, oldest first (for followers such as sync)."""
        rows = await self._all(
            "read errors",
            "SELECT * FROM errors WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return [_error(r) for r in rows]

    # -- history retention -----------------------------------------------------------------

    async def trim_history(self, before: float, *, batch: int = 500) -> int:
        """Delete up to ``batch`` rows per table of history last changed before ``before``.

        History is the errors and delivery rows of finished deliveries (handled, or whose DLQ
        entry was discarded), resolved or discarded DLQ entries, and carried-out requests.
        The errors of a delivery still retrying or still in the DLQ (dead or being retried)
        are kept, whatever their age, as are DLQ entries until resolved or discarded.
        One transaction per call, so writers wait at most one small batch; returns the number
        of rows deleted (call again while it is not 0).
        """
        deleted = 0
        async with self.transaction("trim the delivery history"):
            for sql in (_TRIM_ERRORS, _TRIM_DELIVERIES, _TRIM_DLQ, _TRIM_REQUESTS):
                cursor = await self.db.execute(sql, (before, batch))
                deleted += cursor.rowcount
        return deleted

    # -- repair --------------------------------------------------------------------------

    async def check_integrity(self) -> None:
        """Raise :class:`StateStoreError` if SQLite finds the file itself damaged."""
        rows = await self._all("check the file", "PRAGMA integrity_check")
        problems = [str(r[0]) for r in rows]
        if problems != ["ok"]:
            raise StateStoreError(
                self.path,
                f"the file is damaged ({'; '.join(problems[:3])}): recover it with sqlite3's "
                "'.recover', or move it aside and start with on_missing_state (see 'After "
                "damage' in the README)",
            )

    async def repair(self) -> list[str]:
        """Replace damaged values of ``subscribers`` and ``deliveries`` rows with safe ones.

        Safe means nothing is skipped: lost in-flight offsets (``done``) are delivered again,
        a lost ``committed`` restarts the subscriber at its ``start_offset``, an unreadable
        delivery status makes the delivery again; counters restart at 0. A delivery row whose
        subscriber or offset is unreadable is deleted (it cannot be matched to an event).
        Returns one line per change, naming the subscriber and column. Run it with no broker
        on the file (``localbroker state repair DIR`` takes the writer lock).
        """
        await self.check_integrity()
        fixes: list[str] = []
        now = self._clock()
        async with self.transaction("repair damaged rows"):
            for rowid, row in await self._raw_rows("subscribers", ["name", *_SUBSCRIBER_COLUMNS]):
                fixes.extend(await self._repair_subscriber(rowid, row, now))
            for rowid, row in await self._raw_rows(
                "deliveries", ["subscriber", "offset", *_DELIVERY_COLUMNS]
            ):
                fixes.extend(await self._repair_delivery(rowid, row, now))
        return fixes

    async def _raw_rows(self, table: str, columns: list[str]) -> list[tuple[int, dict[str, Any]]]:
        picks = ", ".join(f'typeof("{c}"), CAST("{c}" AS BLOB)' for c in columns)
        rows = await self._all(f"read {table}", f"SELECT rowid, {picks} FROM {table}")
        return [
            (row[0], {c: _raw(row[1 + 2 * i], row[2 + 2 * i]) for i, c in enumerate(columns)})
            for row in rows
        ]

    async def _repair_subscriber(self, rowid: int, row: dict[str, Any], now: float) -> list[str]:
        name = row["name"]
        if not isinstance(name, str):
            return [
                f"subscribers row {rowid}: the name is unreadable; left as is (no subscriber can "
                "match it: delete the row, or give it the subscriber's name, with sqlite3)"
            ]
        damaged = [c for c, (parse, _) in _SUBSCRIBER_COLUMNS.items() if not _valid(parse, row[c])]
        if not damaged:
            return []
        fixed = {c: _SUBSCRIBER_COLUMNS[c][1] for c in damaged}
        good = {c: row[c] for c in ("start_offset", "committed") if c not in damaged}
        if "start_offset" in fixed:
            fixed["start_offset"] = good.get("committed", 0)
        if "committed" in fixed:
            fixed["committed"] = good.get("start_offset", 0)
        committed = fixed.get("committed", row["committed"])
        if "position" in fixed or "committed" in fixed:
            fixed["position"] = committed
        for column in ("created", "updated"):
            if column in fixed:
                fixed[column] = now
        sets = ", ".join(f'"{c}" = ?' for c in fixed)
        await self.db.execute(
            f"UPDATE subscribers SET {sets} WHERE rowid = ?", (*fixed.values(), rowid)
        )
        consequence = {
            "committed": f"delivers again from offset {committed}",
            "done": "offsets that were in flight are delivered again",
        }
        return [
            f"subscriber {name!r}: column {c!r} was damaged, set to {fixed[c]!r}"
            + (f" ({consequence[c]})" if c in consequence else "")
            for c in damaged
        ]

    async def _repair_delivery(self, rowid: int, row: dict[str, Any], now: float) -> list[str]:
        subscriber, offset = row["subscriber"], row["offset"]
        if not isinstance(subscriber, str) or not isinstance(offset, int):
            await self.db.execute("DELETE FROM deliveries WHERE rowid = ?", (rowid,))
            return [
                f"deliveries row {rowid} (subscriber {subscriber!r}, offset {offset!r}): "
                "unreadable subscriber or offset; deleted"
            ]
        damaged = [c for c, (parse, _) in _DELIVERY_COLUMNS.items() if not _valid(parse, row[c])]
        if not damaged:
            return []
        fixed = {c: now if c == "updated" else _DELIVERY_COLUMNS[c][1] for c in damaged}
        sets = ", ".join(f'"{c}" = ?' for c in fixed)
        await self.db.execute(
            f"UPDATE deliveries SET {sets} WHERE rowid = ?", (*fixed.values(), rowid)
        )
        return [
            f"subscriber {subscriber!r}, delivery of offset {offset}: column {c!r} was damaged, "
            f"set to {fixed[c]!r}" + (" (delivered again)" if c == "status" else "")
            for c in damaged
        ]

    # -- dead letter queue -----------------------------------------------------------------

    async def dlq_entries(
        self,
        *,
        subscriber: str | None = None,
        topic: str | None = None,
        status: Sequence[str] = ("dead",),
        limit: int = 1000,
        newest_first: bool = False,
        beyond: int | None = None,
    ) -> list[DLQEntry]:
        """Entries matching the filters, by id (oldest first unless ``newest_first``).

        ``beyond``: only entries past this id in that order (the next page of a listing).
        """
        where, args = _dlq_filters(subscriber, topic, status)
        if beyond is not None:
            where.append("id < ?" if newest_first else "id > ?")
            args.append(beyond)
        sql = "SELECT * FROM dlq" + (" WHERE " + " AND ".join(where) if where else "")
        order = " ORDER BY id DESC" if newest_first else " ORDER BY id"
        rows = await self._all(
            "read the DLQ", sql + order + " LIMIT ?", (*args, limit), subscriber=subscriber
        )
        return [_dlq(r) for r in rows]

    async def dlq_count(
        self,
        *,
        subscriber: str | None = None,
        topic: str | None = None,
        status: Sequence[str] = ("dead",),
    ) -> int:
        """How many entries match the filters (what :meth:`dlq_entries` would list unbounded)."""
        where, args = _dlq_filters(subscriber, topic, status)
        sql = "SELECT COUNT(*) FROM dlq" + (" WHERE " + " AND ".join(where) if where else "")
        row = await self._one("count the DLQ", sql, args, subscriber=subscriber)
        return int(row[0]) if row is not None else 0

    async def dlq_for(self, offsets: Sequence[int]) -> dict[tuple[str, int], DLQEntry]:
        """DLQ entries (any status) of the given offsets, keyed by (subscriber, offset)."""
        if not offsets:
            return {}
        marks = ",".join("?" * len(offsets))
        rows = await self._all(
            "read the DLQ", f'SELECT * FROM dlq WHERE "offset" IN ({marks})', offsets
        )
        return {(r["subscriber"], r["offset"]): _dlq(r) for r in rows}

    async def dlq_entry(self, entry_id: int) -> DLQEntry:
        row = await self._one(
            f"read DLQ entry {entry_id}", "SELECT * FROM dlq WHERE id = ?", (entry_id,)
        )
        if row is None:
            raise NotFoundError(f"no DLQ entry {entry_id}")
        attempts = await self.errors(
            subscriber=row["subscriber"], offset=row["offset"], limit=10_000
        )
        return _dlq(row, sorted(attempts, key=lambda e: e.id))

    async def dlq_updated_since(self, since: float, limit: int = 1000) -> list[DLQEntry]:
        """DLQ entries (any status) changed at or after ``since``, oldest change first."""
        rows = await self._all(
            "read the DLQ",
            "SELECT * FROM dlq WHERE updated >= ? ORDER BY updated, id LIMIT ?",
            (since, limit),
        )
        return [_dlq(r) for r in rows]

    async def dlq_dead_since(
        self, mark: tuple[float, int]
    ) -> tuple[list[tuple[DLQEntry, int]], tuple[float, int]]:
        """Entries still dead that went dead after ``mark``, a ``(dead_at, id)`` (for alerts).

        Returns the first such entry of each subscriber with how many it has, oldest first, and
        the mark of the newest (``mark`` itself when there is none). An entry an operator
        retried that failed again went dead again: it counts anew.
        """
        after = "status = 'dead' AND (dead_at > ?1 OR (dead_at = ?1 AND id > ?2))"
        newest = await self._one(
            "read the DLQ",
            f"SELECT dead_at, id FROM dlq WHERE {after} ORDER BY dead_at DESC, id DESC LIMIT 1",
            mark,
        )
        if newest is None:
            return [], mark
        # Up to the newest mark only: entries dead since then are for the next call.
        rows = await self._all(
            "read the DLQ",
            "SELECT * FROM (SELECT *, COUNT(*) OVER (PARTITION BY subscriber) AS new_entries,"
            " ROW_NUMBER() OVER (PARTITION BY subscriber ORDER BY dead_at, id) AS nth"
            f" FROM dlq WHERE {after} AND (dead_at < ?3 OR (dead_at = ?3 AND id <= ?4)))"
            " WHERE nth = 1 ORDER BY dead_at, id",
            (*mark, newest[0], newest[1]),
        )
        fields = [f.name for f in dataclasses.fields(DLQEntry) if f.name != "attempts"]
        return (
            [(DLQEntry(**{k: row[k] for k in fields}), row["new_entries"]) for row in rows],
            (newest[0], newest[1]),
        )

    async def dlq_counts(self) -> dict[str, int]:
        """Entries still dead, by subscriber."""
        rows = await self._all(
            "count the DLQ",
            "SELECT subscriber, COUNT(*) FROM dlq WHERE status = 'dead' GROUP BY subscriber",
        )
        return {row[0]: row[1] for row in rows}

    async def set_dlq_status(self, entry_id: int, status: str, *, expect: str = "dead") -> DLQEntry:
        """Move an entry from ``expect`` to ``status`` (retrying or discarded)."""
        async with self.transaction(f"set DLQ entry {entry_id} to {status}"):
            entry = await self.dlq_entry(entry_id)
            if entry.status != expect:
                raise BrokerStateError(
                    f"DLQ entry {entry_id} is {entry.status}, not {expect}; nothing to {status[:-3] or status}"
                )
            retries = entry.retries + (status == "retrying")
            await self.db.execute(
                "UPDATE dlq SET status = ?, updated = ?, retries = ? WHERE id = ?",
                (status, self._clock(), retries, entry_id),
            )
        return dataclasses.replace(entry, status=status, retries=retries)

    async def retrying_dlq(self, subscriber: str) -> list[DLQEntry]:
        """Entries an operator sent back to ``subscriber`` that are not handled yet."""
        return await self.dlq_entries(subscriber=subscriber, status=("retrying",), limit=100_000)

    # -- operator requests -----------------------------------------------------------------

    async def add_request(self, action: str, args: dict[str, Any]) -> int:
        """Queue an action for the running broker; returns the request id."""
        cur = await self._write(
            f"queue request {action}",
            "INSERT INTO requests (action, args, created) VALUES (?, ?, ?)",
            (action, orjson.dumps(args).decode(), self._clock()),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    async def request_result(self, request_id: int) -> tuple[str, Any]:
        """``(status, result)`` of a queued request."""
        row = await self._one(
            f"read request {request_id}",
            "SELECT status, result FROM requests WHERE id = ?",
            (request_id,),
        )
        if row is None:
            raise NotFoundError(f"no request {request_id}")
        return row[0], orjson.loads(row[1]) if row[1] else None

    async def pending_requests(self) -> list[tuple[int, str, dict[str, Any]]]:
        rows = await self._all(
            "read pending requests",
            "SELECT id, action, args FROM requests WHERE status = 'pending' ORDER BY id",
        )
        return [(r[0], r[1], orjson.loads(r[2])) for r in rows]

    async def finish_request(self, request_id: int, *, ok: bool, result: Any) -> None:
        await self._write(
            f"finish request {request_id}",
            "UPDATE requests SET status = ?, result = ?, done_at = ? WHERE id = ?",
            ("done" if ok else "failed", orjson.dumps(result).decode(), self._clock(), request_id),
        )

    # -- extensions' key/value -------------------------------------------------------------

    async def get_value(self, key: str) -> Any:
        row = await self._one(f"read {key!r}", "SELECT value FROM kv WHERE key = ?", (key,))
        return orjson.loads(row[0]) if row else None

    async def values(self, prefix: str) -> dict[str, Any]:
        """Every key/value whose key starts with ``prefix`` (e.g. ``"sync."``), by key."""
        rows = await self._all(
            f"read the values under {prefix!r}",
            "SELECT key, value FROM kv WHERE substr(key, 1, ?) = ? ORDER BY key",
            (len(prefix), prefix),
        )
        return {row[0]: orjson.loads(row[1]) for row in rows}

    async def set_value(self, key: str, value: Any) -> None:
        await self.set_values({key: value})

    async def set_values(self, values: dict[str, Any]) -> None:
        """Set several keys in one transaction (all are stored or none)."""
        async with self.transaction(f"save {', '.join(map(repr, values))}"):
            await self.db.executemany(
                "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [(k, orjson.dumps(v).decode()) for k, v in values.items()],
            )


def _disk_full(exc: sqlite3.Error) -> bool:
    # SQLITE_FULL; the message test covers a build whose error has no code attached.
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(
        exc
    )


def _fence(lease: Lease | None) -> tuple[str | None, str | None, str | None, int | None]:
    """``(name, name, holder, epoch)`` of the lease a write checks; Nones for no check."""
    if lease is None:
        return (None, None, None, None)
    return (lease.name, lease.name, lease.holder, lease.epoch)


def _describe(exc: sqlite3.Error) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if "malformed" in str(exc) or "not a database" in str(exc):
        text += " (the file is damaged: see 'After damage' in the README)"
    return text


def _dlq_filters(
    subscriber: str | None, topic: str | None, status: Sequence[str]
) -> tuple[list[str], list[Any]]:
    where, args = _filters(subscriber=subscriber, topic=topic)
    if status:
        where.append(f"status IN ({','.join('?' * len(status))})")
        args.extend(status)
    return where, args


def _filters(**equal: Any) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    for column, value in equal.items():
        if value is not None:
            where.append(f'"{column}" = ?')
            args.append(value)
    return where, args

"""Mirror events, failed tries, DLQ entries and subscriber stats to PostgreSQL (psycopg 3).

Tables, in schema ``db_schema`` (default ``public``), made at start if missing (the exact DDL is
:data:`SCHEMA`, also in the README)::

    events       id (event id, primary key), topic, key, time, version, correlation_id,
                 causation_id, headers (jsonb), data (jsonb), service, producer, log_offset,
                 stored_at; indexes: (topic, time), correlation_id, stored_at,
                 (producer, log_offset)
    errors       id = '<producer>:<errors row id>'; every failed try with its traceback;
                 indexes: event_id, correlation_id, (subscriber, time), (topic, time)
    dlq          id = '<producer>:<dlq row id>'; status dead | retrying | resolved | discarded;
                 indexes: (status, subscriber), event_id, correlation_id
    subscribers  id = '<producer>:<subscriber>'; processed, failures, dead, lag, p50/p99

Every write is idempotent: events and failed tries are inserted with ``ON CONFLICT (id) DO
NOTHING``, DLQ entries and stats with ``ON CONFLICT (id) DO UPDATE``, so a batch sent again
after a crash or an outage changes nothing. A batch is one transaction, committed with the
connection's ``synchronous_commit`` (``on`` by default, set on every connection whatever the
server's default): the cursor moves past a batch only once its commit is in the WAL on disk,
so a kill -9 of the server loses nothing the mirror counted. After a reconnect the mirror
resumes from the larger of its cursor and ``max(log_offset) + 1`` of its producer.

PostgreSQL has no TTL index: with ``events_ttl``, expired events (by ``stored_at``, when the
row was written, not the event's own ``time``) are deleted every ``retention_interval`` in
batches of ``retention_batch`` rows, each its own short transaction.

An event PostgreSQL cannot store (a NUL character in a text field or ``\\u0000`` in its JSON,
which ``text`` and ``jsonb`` refuse) would fail its batch forever: such a batch is written again
row by row, and each row the server refuses is logged as an ERROR naming its offset and event
id and counted as ``skipped`` in the status; it stays in the local log.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from localbroker.errors import SyncError
from localbroker.log import Record
from localbroker.state.store import DLQEntry, ErrorRecord

from .config import PostgresStoreConfig, build_config
from .errors import SyncConfigurationError, TargetUnavailableError
from .store import StoreTarget
from .target import logger, redact

__all__ = ["SCHEMA", "PostgresStore"]

#: The tables and indexes, made at start (``{schema}`` is the quoted ``db_schema``).
SCHEMA = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.events (
    id              text PRIMARY KEY,
    topic           text NOT NULL,
    key             text,
    time            timestamptz NOT NULL,
    version         integer NOT NULL,
    correlation_id  text,
    causation_id    text,
    headers         jsonb NOT NULL,
    data            jsonb NOT NULL,
    service         text NOT NULL,
    producer        text NOT NULL,
    log_offset      bigint NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS events_topic_time ON {schema}.events (topic, time);
CREATE INDEX IF NOT EXISTS events_correlation_id ON {schema}.events (correlation_id);
CREATE INDEX IF NOT EXISTS events_stored_at ON {schema}.events (stored_at);
CREATE INDEX IF NOT EXISTS events_producer_offset ON {schema}.events (producer, log_offset);
CREATE TABLE IF NOT EXISTS {schema}.errors (
    id              text PRIMARY KEY,
    local_id        bigint NOT NULL,
    subscriber      text NOT NULL,
    log_offset      bigint NOT NULL,
    event_id        text NOT NULL,
    topic           text NOT NULL,
    correlation_id  text,
    attempt         integer NOT NULL,
    kind            text NOT NULL,
    error_type      text NOT NULL,
    message         text NOT NULL,
    traceback       text NOT NULL,
    time            timestamptz NOT NULL,
    service         text NOT NULL,
    producer        text NOT NULL
);
CREATE INDEX IF NOT EXISTS errors_event_id ON {schema}.errors (event_id);
CREATE INDEX IF NOT EXISTS errors_correlation_id ON {schema}.errors (correlation_id);
CREATE INDEX IF NOT EXISTS errors_subscriber_time ON {schema}.errors (subscriber, time);
CREATE INDEX IF NOT EXISTS errors_topic_time ON {schema}.errors (topic, time);
CREATE TABLE IF NOT EXISTS {schema}.dlq (
    id              text PRIMARY KEY,
    local_id        bigint NOT NULL,
    subscriber      text NOT NULL,
    log_offset      bigint NOT NULL,
    event_id        text NOT NULL,
    topic           text NOT NULL,
    correlation_id  text,
    tries           integer NOT NULL,
    error           text NOT NULL,
    status          text NOT NULL,
    dead_at         timestamptz NOT NULL,
    updated         timestamptz NOT NULL,
    retries         integer NOT NULL,
    service         text NOT NULL,
    producer        text NOT NULL
);
CREATE INDEX IF NOT EXISTS dlq_status_subscriber ON {schema}.dlq (status, subscriber);
CREATE INDEX IF NOT EXISTS dlq_event_id ON {schema}.dlq (event_id);
CREATE INDEX IF NOT EXISTS dlq_correlation_id ON {schema}.dlq (correlation_id);
CREATE TABLE IF NOT EXISTS {schema}.subscribers (
    id              text PRIMARY KEY,
    name            text NOT NULL,
    patterns        jsonb NOT NULL,
    committed       bigint NOT NULL,
    lag             bigint NOT NULL,
    processed       bigint NOT NULL,
    failures        bigint NOT NULL,
    dead            bigint NOT NULL,
    handler_p50     double precision,
    handler_p99     double precision,
    service         text NOT NULL,
    producer        text NOT NULL,
    updated         timestamptz NOT NULL
);
"""

EVENT_COLUMNS = (
    "id", "topic", "key", "time", "version", "correlation_id", "causation_id", "headers",
    "data", "service", "producer", "log_offset",
)  # fmt: skip
_ERROR_COLUMNS = (
    "id", "local_id", "subscriber", "log_offset", "event_id", "topic", "correlation_id",
    "attempt", "kind", "error_type", "message", "traceback", "time", "service", "producer",
)  # fmt: skip
_DLQ_COLUMNS = (
    "id", "local_id", "subscriber", "log_offset", "event_id", "topic", "correlation_id",
    "tries", "error", "status", "dead_at", "updated", "retries", "service", "producer",
)  # fmt: skip
_STATS_COLUMNS = (
    "id", "name", "patterns", "committed", "lag", "processed", "failures", "dead",
    "handler_p50", "handler_p99", "service", "producer", "updated",
)  # fmt: skip
_JSONB = {"headers", "data", "patterns"}

#: Words of a refused connection that retrying cannot fix (the server answered FATAL).
_FATAL_CONNECT = (
    "authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "permission denied",
    "password",
)


def _upsert(
    schema: sql.Identifier, table: str, columns: tuple[str, ...], *, update: bool
) -> sql.Composed:
    """``INSERT INTO schema.table (...) VALUES (...) ON CONFLICT (id) DO ...``."""
    values = sql.SQL(", ").join(sql.SQL("%s::jsonb" if c in _JSONB else "%s") for c in columns)
    conflict: sql.Composable = sql.SQL("DO NOTHING")
    if update:
        conflict = sql.SQL("DO UPDATE SET ") + sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in columns if c != "id"
        )
    return sql.SQL("INSERT INTO {}.{} ({}) VALUES ({}) ON CONFLICT (id) {}").format(
        schema,
        sql.Identifier(table),
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        values,
        conflict,
    )


@contextlib.contextmanager
def postgres_errors(where: str) -> Iterator[None]:
    """Raise psycopg's errors as SyncConfigurationError / TargetUnavailableError / SyncError."""
    try:
        yield
    except (psycopg.errors.InvalidAuthorizationSpecification, psycopg.errors.InsufficientPrivilege,
            psycopg.errors.InvalidCatalogName) as exc:  # fmt: skip
        raise SyncConfigurationError(f"{where}: {exc}") from exc
    except psycopg.OperationalError as exc:
        text = str(exc)
        if exc.sqlstate is None and "FATAL" in text and any(w in text for w in _FATAL_CONNECT):
            raise SyncConfigurationError(f"{where}: {text.strip()}") from exc
        raise TargetUnavailableError(f"{where}: {text.strip()}") from exc
    except (psycopg.InterfaceError, OSError, TimeoutError) as exc:
        raise TargetUnavailableError(f"{where}: {exc or type(exc).__name__}") from exc
    except psycopg.Error as exc:
        raise SyncError(f"{where}: {exc}") from exc


def row_params(columns: tuple[str, ...], rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The query parameters of ``rows`` (JSON columns as JSON text, cast in the statement)."""
    return [
        tuple(orjson.dumps(row[c]).decode() if c in _JSONB else row[c] for c in columns)
        for row in rows
    ]


class PostgresStore(StoreTarget[PostgresStoreConfig]):
    """Sync target: every event, failed try, DLQ entry and subscriber's stats in PostgreSQL.

    Example::

        broker = Broker("./data", sync=[PostgresStore("postgresql://app@db:5432/shop")])

    Options are those of :class:`~localbroker.sync.config.PostgresStoreConfig` (keywords, or
    ``LOCALBROKER_POSTGRES_*`` environment variables; the DSN is ``LOCALBROKER_POSTGRES_DSN``).
    Read the tables with any PostgreSQL client: the schema is in the README (and
    :data:`SCHEMA`).
    """

    kind = "postgres"

    def __init__(self, dsn: str | None = None, **options: Any) -> None:
        super().__init__(build_config(PostgresStoreConfig, dsn=dsn, **options))
        try:
            self._conninfo = conninfo_to_dict(self.config.url)
        except psycopg.ProgrammingError as exc:
            raise SyncConfigurationError(
                f"postgres sync: cannot use DSN {redact(self.config.url)!r}: {exc}"
            ) from exc
        schema = sql.Identifier(self.config.db_schema)
        self._ddl = sql.SQL(SCHEMA).format(schema=schema)
        self.insert_event = _upsert(schema, "events", EVENT_COLUMNS, update=False)
        self._insert_error = _upsert(schema, "errors", _ERROR_COLUMNS, update=False)
        self._upsert_dlq = _upsert(schema, "dlq", _DLQ_COLUMNS, update=True)
        self._upsert_stats = _upsert(schema, "subscribers", _STATS_COLUMNS, update=True)
        self._last_offset = sql.SQL(
            "SELECT max(log_offset) FROM {}.events WHERE producer = %s"
        ).format(schema)
        self._expire = sql.SQL(
            "DELETE FROM {0}.events WHERE id IN (SELECT id FROM {0}.events"
            " WHERE stored_at < now() - make_interval(secs => %s) LIMIT %s)"
        ).format(schema)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._schema_made = False
        self.skipped = 0
        """Events the server refused (logged), left out of the store."""
        self.expired = 0
        """Events deleted by retention (``events_ttl``)."""

    def describe(self) -> str:
        info = self._conninfo
        host = info.get("host") or info.get("hostaddr") or "localhost"
        return (
            f"postgres {host}:{info.get('port') or 5432}/{info.get('dbname') or ''}"
            f" schema {self.config.db_schema}"
        )

    # -- the connection ----------------------------------------------------------------------

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and not (self._conn.closed or self._conn.broken):
            return self._conn
        async with asyncio.timeout(self.config.connect_timeout):
            conn = await psycopg.AsyncConnection.connect(
                self.config.url,
                autocommit=True,
                connect_timeout=max(1, math.ceil(self.config.connect_timeout)),
            )
        # Whatever the server's or the role's defaults: a commit returns once durable, and
        # no statement hangs for ever.
        await conn.execute(
            sql.SQL("SET synchronous_commit = {}; SET statement_timeout = {}").format(
                sql.Literal(self.config.synchronous_commit),
                sql.Literal(int(self.config.write_timeout * 1000)),
            )
        )
        self._conn = conn
        return conn

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        """A cursor in one transaction (one at a time over the one connection), with psycopg's
        errors translated; a broken connection is dropped, to be made again next time."""
        async with self._lock:
            try:
                with postgres_errors(self.describe()):
                    conn = await self._connection()
                    async with conn.transaction(), conn.cursor() as cur:
                        yield cur
            except TargetUnavailableError:
                await self._drop_connection()
                raise
            except SyncError as exc:
                if isinstance(
                    exc.__cause__, psycopg.errors.UndefinedTable | psycopg.errors.InvalidSchemaName
                ):
                    # Dropped while we ran: made again by resume_point() before the next try.
                    self._schema_made = False
                raise

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        await self._make_schema()

    async def _make_schema(self) -> None:
        async with self._transaction() as cur:
            # One process at a time: concurrent CREATE ... IF NOT EXISTS can still collide.
            await cur.execute("SELECT pg_advisory_xact_lock(hashtext('localbroker.schema'))")
            await cur.execute(self._ddl)
        self._schema_made = True

    async def start(self, broker: Any) -> None:
        await super().start(broker)
        if self.config.events_ttl is not None:
            self.spawn(self._retention_loop, "retention")

    async def disconnect(self) -> None:
        await self._drop_connection()

    def extra_status(self) -> dict[str, Any]:
        return {**super().extra_status(), "skipped": self.skipped, "expired": self.expired}

    async def resume_point(self) -> int | None:
        if not self._schema_made:  # the server was unreachable at start
            await self._make_schema()
        async with self._transaction() as cur:
            await cur.execute(self._last_offset, (self.producer,))
            row = await cur.fetchone()
        return None if row is None or row[0] is None else int(row[0]) + 1

    # -- events ------------------------------------------------------------------------------

    def event_rows(self, records: list[Record]) -> list[dict[str, Any]]:
        """The rows of ``events`` for ``records`` (those that decode)."""
        rows = []
        for offset, envelope in self.envelopes(records):
            row = self.event_row(offset, envelope)
            row["log_offset"] = row.pop("offset")
            rows.append(row)
        return rows

    async def send(self, records: list[Record]) -> None:
        rows = self.event_rows(records)
        if not rows:
            return
        try:
            await self._insert(self.insert_event, EVENT_COLUMNS, rows)
        except SyncError as exc:
            if not isinstance(exc.__cause__, psycopg.DataError):
                raise
            await self._insert_one_by_one(rows)

    async def _insert(
        self, statement: sql.Composed, columns: tuple[str, ...], rows: list[dict[str, Any]]
    ) -> None:
        async with self._transaction() as cur:
            await cur.executemany(statement, row_params(columns, rows))

    async def _insert_one_by_one(self, rows: list[dict[str, Any]]) -> None:
        """A batch the server refused: each row in its own transaction; the rows it refuses
        are logged and skipped (retrying cannot change the data)."""
        for row in rows:
            try:
                await self._insert(self.insert_event, EVENT_COLUMNS, [row])
            except SyncError as exc:
                if not isinstance(exc.__cause__, psycopg.DataError):
                    raise
                self.skipped += 1
                logger.error(
                    "%s: PostgreSQL refused event %s (offset %d, topic %s), which is left out "
                    "of the store (it stays in the local log): %s",
                    self.name,
                    row["id"],
                    row["log_offset"],
                    row["topic"],
                    exc.__cause__,
                )

    # -- errors, DLQ, stats ------------------------------------------------------------------

    async def write_errors(self, errors: list[ErrorRecord]) -> None:
        rows = [{**self.local_row(e), "log_offset": e.offset} for e in errors]
        await self._insert(self._insert_error, _ERROR_COLUMNS, rows)

    async def write_dlq(self, entries: list[DLQEntry]) -> None:
        rows = [{**self.local_row(e), "log_offset": e.offset} for e in entries]
        await self._insert(self._upsert_dlq, _DLQ_COLUMNS, rows)

    async def write_stats(self, stats: list[dict[str, Any]]) -> None:
        now = datetime.now(UTC)
        rows = [{**s, "id": f"{self.producer}:{s['name']}", "updated": now} for s in stats]
        await self._insert(self._upsert_stats, _STATS_COLUMNS, rows)

    # -- retention ---------------------------------------------------------------------------

    async def expire(self) -> int:
        """Delete the events stored more than ``events_ttl`` seconds ago; how many."""
        ttl = self.config.events_ttl
        if ttl is None:
            return 0
        deleted = 0
        while True:
            async with self._transaction() as cur:
                await cur.execute(self._expire, (ttl, self.config.retention_batch))
                count = cur.rowcount
            deleted += count
            self.expired += count
            if count < self.config.retention_batch or self.closing:
                return deleted

    async def _retention_loop(self) -> None:
        while not self.closing:
            try:
                await self.expire()
            except SyncError as exc:
                await self.retry_after_failure(exc)
                continue
            await asyncio.sleep(self.config.retention_interval)

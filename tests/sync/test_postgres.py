"""PostgreSQL event store: the sync target contract, and what only PostgreSQL has (the schema
as plain SQL sees it, retention by storage time, rows the server refuses, configuration)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from localbroker import Broker, GenericEvent
from localbroker.sync import PostgresStore, SyncConfigurationError
from tests.servers.postgres import PostgresServer
from tests.sync.conftest import FAST
from tests.sync.contract import Backend, SyncTargetContract, ids_once
from tests.sync.helpers import log_ids, publish_n
from tests.waiting import wait_until

pytestmark = pytest.mark.postgres


class PostgresBackend(Backend):
    has_state = True

    def __init__(self, server: PostgresServer, schema: str) -> None:
        self.server = server
        self.schema = schema

    def target(self, **options: Any) -> PostgresStore:
        return PostgresStore(self.server.url, db_schema=self.schema, **{**FAST, **options})

    def child_target(self, **options: Any) -> tuple[str, dict[str, Any]]:
        return "PostgresStore", {"dsn": self.server.url, "db_schema": self.schema, **options}

    def query(self, statement: str, *params: Any) -> list[dict[str, Any]]:
        """Rows of ``statement`` (``{s}`` is the schema), none while the table is not made."""
        with psycopg.connect(self.server.url, row_factory=dict_row) as conn:
            try:
                return conn.execute(statement.format(s=self.schema), params).fetchall()
            except psycopg.errors.UndefinedTable:
                return []

    def events(self) -> list[dict[str, Any]]:
        return self.query("SELECT *, log_offset AS offset FROM {s}.events ORDER BY stored_at")

    def errors(self) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM {s}.errors")

    def dlq(self) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM {s}.dlq")

    def stats(self) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM {s}.subscribers")


class TestPostgresContract(SyncTargetContract):
    @pytest.fixture
    def backend(self, postgres_server: PostgresServer, pg_schema: str) -> PostgresBackend:
        return PostgresBackend(postgres_server, pg_schema)


@pytest.fixture
def backend(postgres_server: PostgresServer, pg_schema: str) -> PostgresBackend:
    return PostgresBackend(postgres_server, pg_schema)


async def test_tables_and_indexes_serve_plain_sql(data_dir: Path, backend: PostgresBackend) -> None:
    target = backend.target()
    broker = Broker(data_dir, sync=[target])
    async with broker:
        first = await broker.publish("order.placed", {"order_id": "o1"}, key="o1")
        await publish_n(broker, "order.shipped", 3)
        await target.wait_mirrored()
    indexes = {
        r["indexname"]: r["indexdef"]
        for r in backend.query(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s", backend.schema
        )
    }
    assert '(topic, "time")' in indexes["events_topic_time"]
    assert "(correlation_id)" in indexes["events_correlation_id"]
    assert "(stored_at)" in indexes["events_stored_at"]
    assert '(topic, "time")' in indexes["errors_topic_time"]
    assert "(status, subscriber)" in indexes["dlq_status_subscriber"]
    # The README's queries, as any client would run them:
    (chain,) = backend.query(
        "SELECT id, topic, data->>'order_id' AS order_id FROM {s}.events"
        " WHERE correlation_id = %s ORDER BY time",
        first.id,
    )
    assert chain == {"id": first.id, "topic": "order.placed", "order_id": "o1"}
    recent = backend.query(
        "SELECT count(*) AS n FROM {s}.events WHERE topic = %s AND time > now() - interval '1 hour'",
        "order.shipped",
    )
    assert recent == [{"n": 3}]


async def test_retention_deletes_by_storage_time_in_batches(
    data_dir: Path, backend: PostgresBackend
) -> None:
    dated_2020 = GenericEvent(topic="ttl.x", time=datetime(2020, 1, 1, tzinfo=UTC))
    target = backend.target(events_ttl=86400)
    async with Broker(data_dir, sync=[target]) as broker:
        await broker.publish_many([dated_2020, GenericEvent(topic="ttl.x")])
        await target.wait_mirrored()
        assert await target.expire() == 0, "an event dated 2020 expired as soon as it was stored"
    assert len(backend.events()) == 2
    # A TTL of one second, in batches of two: every event goes, its own time in 2100 or not.
    target = backend.target(events_ttl=1, retention_interval=0.1, retention_batch=2)
    async with Broker(data_dir, sync=[target]) as broker:
        await broker.publish_many(
            [GenericEvent(topic="ttl.x", time=datetime(2100, 1, 1, tzinfo=UTC)) for _ in range(3)]
        )
        await target.wait_mirrored()
        await wait_until(lambda: not backend.events(), what="expiry", timeout=30)
        # The last batch's rows are gone once its commit reached the server, which can be
        # before expire() resumes to count them: wait for the count too.
        await wait_until(lambda: target.status()["expired"] == 5, what="the expired count")


async def test_event_the_server_refuses_is_logged_and_skipped(
    data_dir: Path, backend: PostgresBackend, caplog: pytest.LogCaptureFixture
) -> None:
    target = backend.target()
    with caplog.at_level(logging.ERROR, logger="localbroker.sync"):
        async with Broker(data_dir, sync=[target]) as broker:
            before = await publish_n(broker, "nul.x", 5)
            bad = await broker.publish("nul.x", {"text": "a\u0000b"})  # jsonb refuses \u0000
            after = await publish_n(broker, "nul.x", 5, start=5)
            await target.wait_mirrored()
            status = target.status()
    assert ids_once(backend) == before + after
    assert log_ids(data_dir) == [*before, bad.id, *after], "it stays in the local log"
    assert status["skipped"] == 1
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert f"refused event {bad.id} (offset {bad.offset}, topic nul.x)" in line


@pytest.mark.parametrize(
    ("dsn", "needle"),
    [
        (
            "postgresql://postgres@127.0.0.1:{port}/no_such_db",
            'database "no_such_db" does not exist',
        ),
        ("postgresql://nobody@127.0.0.1:{port}/postgres", 'role "nobody" does not exist'),
    ],
)
async def test_wrong_database_or_role_fails_start(
    data_dir: Path, postgres_server: PostgresServer, dsn: str, needle: str
) -> None:
    target = PostgresStore(dsn.format(port=postgres_server.port))
    with pytest.raises(SyncConfigurationError, match=needle):
        async with Broker(data_dir, sync=[target]):
            pass
    async with Broker(data_dir):  # the failed start left no lock behind
        pass


async def test_commits_are_durable_whatever_the_database_default(
    data_dir: Path, backend: PostgresBackend, postgres_server: PostgresServer
) -> None:
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute("ALTER ROLE postgres SET synchronous_commit = off")
    try:
        target = backend.target()
        async with Broker(data_dir, sync=[target]) as broker:
            await publish_n(broker, "durable.x", 3)
            await target.wait_mirrored()
            async with target._transaction() as cur:
                await cur.execute("SHOW synchronous_commit")
                assert await cur.fetchone() == ("on",)
    finally:
        with psycopg.connect(postgres_server.url, autocommit=True) as conn:
            conn.execute("ALTER ROLE postgres RESET synchronous_commit")


async def test_tables_dropped_while_running_are_made_again(
    data_dir: Path, backend: PostgresBackend, postgres_server: PostgresServer
) -> None:
    target = backend.target()
    async with Broker(data_dir, sync=[target]) as broker:
        await publish_n(broker, "dropped.x", 3)
        await target.wait_mirrored()
        with psycopg.connect(postgres_server.url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{backend.schema}" CASCADE')
        later = await publish_n(broker, "dropped.x", 4, start=3)
        await target.wait_mirrored()
        status = target.status()
    assert [e["id"] for e in backend.events()] == later
    assert "does not exist" in status["last_error"]

"""Sync: mirror throughput from a backlog, and draining a backlog after an outage.

Redis Streams against a private ``redis-server`` started here, with raw pipelined ``XADD`` of
the same entries through redis-py (batches of the mirror's size) as the baseline in the same
run. PostgreSQL against a private server started here, with psycopg's own batched insert of the
same rows (``executemany`` in one transaction per batch of the mirror's size, which psycopg
pipelines) as the baseline; median of 3 runs each, and the CPU time of this process per event.
Run: ``python -m benchmarks.bench_sync [--quick]``.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from benchmarks.bench_core import Tick, row
from localbroker import Broker, RetryPolicy
from localbroker.events import decode_envelope
from localbroker.log import CommitLog, Record
from localbroker.sync import RedisStreams
from localbroker.sync.stream_format import entry_fields
from tests.servers.postgres import PostgresServer
from tests.servers.redis import NO_FSYNC, RedisServer

BATCH = 2000  # the mirror's default batch_size


async def make_backlog(data: Path, n: int) -> None:
    async with Broker(data, fsync="never", index_events=False) as broker:
        for start in range(0, n, 5000):
            await broker.publish_many([Tick(n=i) for i in range(start, min(n, start + 5000))])


def backlog_records(data: Path) -> list[Record]:
    with CommitLog(data / "log", readonly=True) as log:
        records = []
        offset = 0
        while offset < log.next_offset:
            batch = log.read(offset, max_records=5000)
            records.extend(batch)
            offset = batch[-1].offset + 1
    return records


def raw_xadd_rate(url: str, data: Path, n: int) -> float:
    """XADD of the same entries the mirror sends, pipelined in batches, per second."""
    records = backlog_records(data)
    entries = [
        entry_fields(decode_envelope(r.payload), service="bench", producer="raw", offset=r.offset)
        for r in records[:n]
    ]
    client = redis.Redis.from_url(url)
    started = time.perf_counter()
    for start in range(0, len(entries), BATCH):
        pipe = client.pipeline(transaction=False)
        for fields in entries[start : start + BATCH]:
            pipe.xadd("raw:bench.tick", fields)  # type: ignore[arg-type]
        pipe.execute()
    elapsed = time.perf_counter() - started
    client.close()
    return len(entries) / elapsed


async def wait_drained(broker: Broker, n: int, timeout: float = 600, name: str = "redis") -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = broker.sync_status()[name]
        if status["cursor"] >= n:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"mirror stuck at {status}")
        await asyncio.sleep(0.005)


async def mirror_rate(url: str, data: Path, n: int) -> float:
    """Events per second the mirror sends from a backlog of ``n`` events."""
    async with Broker(
        data, index_events=False, sync=[RedisStreams(url, service="bench")]
    ) as broker:
        started = time.perf_counter()
        await wait_drained(broker, n)
        return n / (time.perf_counter() - started)


async def drain_after_outage(server: RedisServer, data: Path, n: int) -> float:
    """Seconds from Redis coming back to a backlog of ``n`` events (built while down) mirrored."""
    target = RedisStreams(
        server.url,
        service="bench-outage",
        reconnect=RetryPolicy(backoff_initial=0.05, backoff_max=0.5),
    )
    async with Broker(data, index_events=False, sync=[target]) as broker:
        await asyncio.to_thread(server.stop)
        for start in range(0, n, 5000):
            await broker.publish_many([Tick(n=i) for i in range(start, min(n, start + 5000))])
        await asyncio.to_thread(server.start)
        started = time.perf_counter()
        await wait_drained(broker, n)
        return time.perf_counter() - started


# -- PostgreSQL ----------------------------------------------------------------------------


async def raw_postgres_run(url: str, records: list[Record], schema: str) -> float:
    """psycopg's own batched insert of the rows the mirror writes (built beforehand), per s."""
    from localbroker.sync.postgres_store import EVENT_COLUMNS, PostgresStore, row_params

    store = PostgresStore(url, db_schema=schema)
    store.producer, store.service = "raw", "bench"
    await store.connect()  # the tables, as the mirror makes them
    # The mirror's own statement and rows, made before the clock starts.
    statement = store.insert_event
    params = row_params(EVENT_COLUMNS, store.event_rows(records))
    conn = await store._connection()
    started = time.perf_counter()
    for lo in range(0, len(params), BATCH):
        async with conn.transaction(), conn.cursor() as cur:
            await cur.executemany(statement, params[lo : lo + BATCH])
    elapsed = time.perf_counter() - started
    await store.disconnect()
    return len(params) / elapsed


async def mirror_postgres_run(url: str, data: Path, n: int, run: int) -> tuple[float, float]:
    """Events per second the mirror writes from a backlog of ``n``, and CPU µs per event."""
    from localbroker.sync import PostgresStore

    target = PostgresStore(url, db_schema=f"mirror{run}", name=f"bench{run}")
    async with Broker(data, index_events=False, sync=[target]) as broker:
        started, cpu = time.perf_counter(), time.process_time()
        await wait_drained(broker, n, name=target.name)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return n / elapsed, cpu / n * 1e6


async def run_postgres(root: Path, n: int) -> list[dict[str, Any]]:
    binary = PostgresServer.binary_path()
    if binary is None:
        raise RuntimeError("PostgreSQL not found: apt-get install postgresql")
    # Its own directory: as root the server runs as the postgres user (see tests/servers).
    directory = Path(tempfile.mkdtemp(prefix="lb-bench-postgres-"))
    server = PostgresServer(binary, directory)
    server.start()
    try:
        records = backlog_records(root / "backlog")[:n]
        raws, mirrors, cpus = [], [], []
        for i in range(3):
            raws.append(await raw_postgres_run(server.url, records, f"raw{i}"))
            rate, cpu = await mirror_postgres_run(server.url, root / "backlog", n, i)
            mirrors.append(rate)
            cpus.append(cpu)
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    raw = statistics.median(raws)
    return [
        row("psycopg executemany of the same rows (median of 3)", raw, "events/s"),
        row(f"mirror to PostgreSQL from a {n:,}-event backlog (median of 3)",
            statistics.median(mirrors), "events/s", "psycopg executemany", raw),
        row("  CPU of this process per mirrored event", statistics.median(cpus), "µs"),
    ]  # fmt: skip


async def run(quick: bool) -> list[dict[str, Any]]:
    n = 20_000 if quick else 100_000
    binary = RedisServer.binary_path()
    if binary is None:
        raise RuntimeError("redis-server not found: apt-get install redis-server")
    with tempfile.TemporaryDirectory(prefix="lb-bench-sync-") as tmp:
        root = Path(tmp)
        server = RedisServer(binary, root / "redis", args=NO_FSYNC)
        server.start()
        try:
            await make_backlog(root / "backlog", n)
            raw = await asyncio.to_thread(raw_xadd_rate, server.url, root / "backlog", n)
            mirror = await mirror_rate(server.url, root / "backlog", n)
            drain = await drain_after_outage(server, root / "outage", n)
        finally:
            server.stop()
        postgres = await run_postgres(root, n)
    return [
        row("raw pipelined XADD of the same entries", raw, "events/s"),
        row(f"mirror to Redis Streams from a {n:,}-event backlog", mirror, "events/s",
            "raw pipelined XADD", raw),
        row(f"drain a {n:,}-event backlog after a Redis outage", drain, "s"),
        row("  (same) as a rate", n / drain, "events/s", "raw pipelined XADD", raw),
        *postgres,
    ]  # fmt: skip


def main() -> None:
    from benchmarks.__main__ import standalone

    standalone(run, __doc__)


if __name__ == "__main__":
    main()

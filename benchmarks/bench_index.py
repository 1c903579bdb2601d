"""The event index (``index.db``): its size per event against the log's and format 1's, the
indexer's rate against publishing in the same run, and its lag under a sustained burst.

Run: ``python -m benchmarks.bench_index [--quick]`` (or ``python -m benchmarks --only index``).
Each figure is the median of repeated runs, with the spread (max - min) / median in its name.
"""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks.bench_core import Tick, row
from localbroker import Broker
from localbroker.broker.indexer import index_records
from tests.state.index_files import FORMAT_1_SCHEMA, index_bytes, log_bytes, publish_chains


async def repeat(times: int, fn: Callable[[], Awaitable[float]]) -> tuple[float, float]:
    """Median of ``times`` runs of ``fn`` and the spread (max - min) / median."""
    values = [await fn() for _ in range(times)]
    median = statistics.median(values)
    return median, (max(values) - min(values)) / median if median else 0.0


def format_1_bytes(data: Path, into: Path) -> int:
    """index.db as format 1 would hold the same log."""
    from localbroker.log import CommitLog

    log = CommitLog(data / "log", readonly=True)
    log.open()
    with sqlite3.connect(into) as db:
        db.executescript(FORMAT_1_SCHEMA)
        offset = log.start_offset
        while offset < log.next_offset:
            records = log.read(offset, max_records=5000)
            db.executemany(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (e.offset, e.id, e.topic, e.key, e.time, e.correlation_id, e.causation_id)
                    for e in index_records(records)
                ],
            )
            offset = records[-1].offset + 1
    log.close()
    return index_bytes(into)


async def rebuild(data: Path) -> tuple[float, float]:
    """A broker indexing the whole log from nothing: ``(events/s, CPU µs per event)``."""
    for name in ("index.db", "index.db-wal", "index.db-shm"):
        (data / name).unlink(missing_ok=True)
    async with Broker(data) as broker:
        indexer = broker._indexer
        assert indexer is not None
        cpu, started = time.process_time(), time.perf_counter()
        while indexer.position is None or indexer.position < broker.visible_offset:  # noqa: ASYNC110 - polls a private position, measuring
            await asyncio.sleep(0.005)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        n = broker.visible_offset
    return n / wall, cpu / n * 1e6


async def burst(data: Path, n: int, batch: int) -> tuple[float, int, int, float]:
    """Publish ``n`` events as fast as possible while the indexer follows.

    Returns the publish rate, the largest lag (events not indexed yet) in the first and in the
    second half of the burst, and the seconds the index needed to catch up after it.
    """
    lags: list[int] = []
    async with Broker(data, fsync="never") as broker:
        indexer = broker._indexer
        assert indexer is not None
        started = time.perf_counter()
        for start in range(0, n, batch):
            await broker.publish_many(Tick(n=i) for i in range(start, start + batch))
            lags.append(broker.visible_offset - (indexer.position or 0))
        rate = n / (time.perf_counter() - started)
        ended = time.perf_counter()
        while (indexer.position or 0) < broker.visible_offset:  # noqa: ASYNC110 - as above
            await asyncio.sleep(0.005)
        catch_up = time.perf_counter() - ended
    half = len(lags) // 2
    return rate, max(lags[:half]), max(lags[half:]), catch_up


async def run(quick: bool) -> list[dict[str, Any]]:
    commands = 20_000 if quick else 100_000
    times = 3 if quick else 5
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lb-bench-index-") as tmp:
        root = Path(tmp)
        data = root / "chains"
        await publish_chains(data, commands)
        events = 2 * commands
        log_b = log_bytes(data) / events
        v1 = format_1_bytes(data, root / "format1.db") / events
        rebuilt_rate, rebuilt_spread = await repeat(times, lambda: _first(rebuild(data)))
        v2 = index_bytes(data / "index.db") / events
        cpu = (await rebuild(data))[1]

        n = 100_000 if quick else 500_000
        results = [await burst(root / f"burst{i}", n, 1000) for i in range(times)]
        rates = [r[0] for r in results]
        rate = statistics.median(rates)
        spread = (max(rates) - min(rates)) / rate
        first_half = statistics.median(r[1] for r in results)
        second_half = statistics.median(r[2] for r in results)
        catch_up = statistics.median(r[3] for r in results)

        rows.append(row("log bytes per event (half of them in chains)", log_b, "B"))
        rows.append(row("index.db bytes per event, format 2", v2, "B", "log", log_b))
        rows.append(row("  (same)", v2, "B", "format 1 on the same log", v1))
        rows.append(row(f"publish_many burst of {n:,}, index on (±{spread:.0%})", rate, "events/s"))
        rows.append(
            row(
                f"indexer rebuilding from the log (±{rebuilt_spread:.0%})",
                rebuilt_rate,
                "events/s",
                "publish_many burst",
                rate,
            )
        )
        rows.append(row("  CPU per event, rebuilding from the log", cpu, "us"))
        rows.append(
            row("index lag in the burst, max of the first half", first_half, "events", "burst", n)
        )
        rows.append(
            row("  max of the second half", second_half, "events", "first half", first_half)
        )
        rows.append(row("  time for the index to catch up after the burst", catch_up, "s"))
    return rows


async def _first(result: Awaitable[tuple[float, float]]) -> float:
    return (await result)[0]


def main() -> None:
    from benchmarks.__main__ import standalone

    standalone(run, __doc__)


if __name__ == "__main__":
    main()

"""The embedded broker: publish throughput, end-to-end throughput and latency, reopen time.

Run: ``python -m benchmarks.bench_core [--quick]`` (or ``python -m benchmarks`` for all).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import baselines
from localbroker import Broker, Event, RetryPolicy
from localbroker.log import CommitLog


class Tick(Event, topic="bench.tick"):
    n: int
    text: str = "hello world"
    sent: float = 0.0


def row(
    name: str,
    value: float,
    unit: str,
    baseline: str | None = None,
    baseline_value: float | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_value": baseline_value,
    }


async def publish_rate(data: Path, n: int, publishers: int, **options: Any) -> float:
    async with Broker(data, **options) as broker:
        per = n // publishers

        async def publisher() -> None:
            for i in range(per):
                await broker.publish(Tick(n=i))

        started = time.perf_counter()
        await asyncio.gather(*(publisher() for _ in range(publishers)))
        return per * publishers / (time.perf_counter() - started)


async def publish_many_rate(data: Path, n: int, batch: int) -> float:
    async with Broker(data) as broker:
        started = time.perf_counter()
        for start in range(0, n, batch):
            await broker.publish_many([Tick(n=i) for i in range(start, start + batch)])
        return n / (time.perf_counter() - started)


async def end_to_end_rate(data: Path, n: int, subscribers: int) -> float:
    """Events per second from the first publish until every subscriber acked every event."""
    broker = Broker(data, start_from="earliest")
    remaining = n * subscribers
    done = asyncio.Event()

    async def handler(event: Tick) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            done.set()

    for i in range(subscribers):
        broker.subscribe(handler, "bench.tick", name=f"sub{i}")
    async with broker:
        started = time.perf_counter()
        for start in range(0, n, 500):
            await broker.publish_many([Tick(n=i) for i in range(start, min(n, start + 500))])
        await asyncio.wait_for(done.wait(), 300)
        return n / (time.perf_counter() - started)


async def cpu_per_event(data: Path, n: int, *, stuck_head: bool) -> float:
    """CPU microseconds per event from publish to ack, optionally behind a stuck head.

    The stuck head is an event whose handler failed once and waits an hour for its retry,
    so that everything behind it stays above the committed offset.
    """
    broker = Broker(data, start_from="earliest", retry=RetryPolicy(backoff_initial=3600))
    remaining = n
    done = asyncio.Event()

    async def handler(event: Tick) -> None:
        nonlocal remaining
        if event.n < 0:
            raise ValueError("stuck head")
        remaining -= 1
        if remaining == 0:
            done.set()

    broker.subscribe(handler, "bench.tick", name="cpu")
    async with broker:
        if stuck_head:
            await broker.publish(Tick(n=-1))
        started = time.process_time()
        for start in range(0, n, 500):
            await broker.publish_many([Tick(n=i) for i in range(start, min(n, start + 500))])
        await asyncio.wait_for(done.wait(), 300)
        return (time.process_time() - started) / n * 1e6


async def latency(data: Path, rate: int, seconds: float) -> tuple[float, float]:
    """p50 and p99 (ms) from publish() called to handler entered, at a fixed offered rate."""
    broker = Broker(data, start_from="latest")
    samples: list[float] = []

    @broker.subscriber("bench.tick", name="latency")
    async def handler(event: Tick) -> None:
        samples.append(time.perf_counter() - event.sent)

    async with broker:
        total = int(rate * seconds)
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i in range(total):
            # Open-loop arrivals: each publish starts on schedule, whether or not the
            # previous ones have returned.
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(broker.publish(Tick(n=i, sent=time.perf_counter()))))
        await asyncio.gather(*tasks)
        await broker.wait_idle(timeout=60)
    samples.sort()
    warm = samples[len(samples) // 10 :]  # drop the first tenth (start-up)
    return statistics.median(warm) * 1000, warm[int(len(warm) * 0.99)] * 1000


async def reopen_time(data: Path, n: int) -> tuple[float, float]:
    """Seconds to open a log of ``n`` events: the log alone, and a whole broker."""
    async with Broker(data, fsync="never", index_events=False) as broker:
        for start in range(0, n, 5000):
            await broker.publish_many([Tick(n=i) for i in range(start, start + 5000)])
    started = time.perf_counter()
    with CommitLog(data / "log") as log:
        assert log.next_offset == n
    log_seconds = time.perf_counter() - started
    started = time.perf_counter()
    async with Broker(data, index_events=False):
        broker_seconds = time.perf_counter() - started
    return log_seconds, broker_seconds


async def run(quick: bool) -> list[dict[str, Any]]:
    n = 20_000 if quick else 100_000
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lb-bench-") as tmp:
        root = Path(tmp)
        fsyncs = baselines.fsync_rate(root)
        queue = await baselines.asyncio_queue_rate(n * 2)
        with baselines.private_redis() as url:
            redis = baselines.redis_baselines(url, n // 10) if url else {}

        def fresh(name: str) -> Path:
            return root / name

        rows.append(row("disk fsync (write+fdatasync)", fsyncs, "ops/s"))
        rows.append(row("asyncio.Queue hand-over", queue, "items/s"))
        for key, value in redis.items():
            rows.append(row(key, value, "ops/s"))
        xadd_one = redis.get("redis_xadd_one")
        xadd_pipe = redis.get("redis_xadd_pipelined")

        r1 = await publish_rate(fresh("p1"), n // 10, 1)
        rows.append(row("publish durable, 1 publisher", r1, "events/s", "redis_xadd_one", xadd_one))
        rows.append(row("  (same) vs disk fsync rate", r1, "events/s", "fsync", fsyncs))
        r64 = await publish_rate(fresh("p64"), n, 64)
        rows.append(
            row(
                "publish durable, 64 publishers", r64, "events/s", "redis_xadd_pipelined", xadd_pipe
            )
        )
        r64n = await publish_rate(fresh("p64n"), n, 64, index_events=False)
        rows.append(
            row(
                "  (same) with index_events=False",
                r64n,
                "events/s",
                "redis_xadd_pipelined",
                xadd_pipe,
            )
        )
        rm = await publish_many_rate(fresh("pm"), n, 1000)
        rows.append(
            row(
                "publish_many durable, batches of 1000",
                rm,
                "events/s",
                "redis_xadd_pipelined",
                xadd_pipe,
            )
        )
        ri1 = await publish_rate(fresh("pi1"), n // 2, 1, fsync="interval")
        rows.append(
            row("publish fsync=interval, 1 publisher", ri1, "events/s", "redis_xadd_one", xadd_one)
        )
        ri64 = await publish_rate(fresh("pi64"), n, 64, fsync="interval")
        rows.append(
            row(
                "publish fsync=interval, 64 publishers",
                ri64,
                "events/s",
                "redis_xadd_pipelined",
                xadd_pipe,
            )
        )
        for subs in (1, 4):
            e2e = await end_to_end_rate(fresh(f"e2e{subs}"), n, subs)
            rows.append(
                row(
                    f"end-to-end publish->handler->ack, {subs} subscriber(s)",
                    e2e,
                    "events/s",
                    "redis_consume_ack_batch100",
                    redis.get("redis_consume_ack_batch100"),
                )
            )
            rows.append(row("  (same) vs asyncio.Queue", e2e, "events/s", "asyncio.Queue", queue))
        free = await cpu_per_event(fresh("cpu-free"), n, stuck_head=False)
        stuck = await cpu_per_event(fresh("cpu-stuck"), n, stuck_head=True)
        rows.append(row("CPU per event, publish->handler->ack", free, "us"))
        rows.append(
            row(
                f"  (same) behind a head waiting for its retry ({n:,} events)",
                stuck,
                "us",
                "no stuck head",
                free,
            )
        )
        p50, p99 = await latency(fresh("lat"), 5000, 2 if quick else 5)
        rows.append(row("latency publish->handler p50 at 5k/s", p50, "ms"))
        rows.append(row("latency publish->handler p99 at 5k/s", p99, "ms"))
        big = 200_000 if quick else 1_000_000
        log_s, broker_s = await reopen_time(fresh("reopen"), big)
        rows.append(row(f"reopen {big:,}-event log (CommitLog.open)", log_s, "s"))
        rows.append(row(f"reopen {big:,}-event log (Broker start)", broker_s, "s"))
    return rows


def main() -> None:
    from benchmarks.__main__ import standalone

    standalone(run, __doc__)


if __name__ == "__main__":
    main()

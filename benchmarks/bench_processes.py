"""Several processes on one data directory: aggregate durable publish throughput and
cross-process publish -> handler latency, each against the single-process figure of the run.

Run: ``python -m benchmarks.bench_processes [--quick]`` (or ``python -m benchmarks``).

- Throughput: 1, 2 and 4 processes, each with 16 concurrent publishers (``fsync="always"``),
  start together (a go file) and publish N events each; aggregate events/s over the whole
  span (first start to last end), and CPU seconds (all threads) per event. Median of the
  repeats, with the spread (min..max).
- Latency: events offered at a fixed rate (500/s and 2,000/s) by one process and handled by a
  subscriber in another; p50/p99 of (handler start - publish call), against the same with
  publisher and subscriber in one process.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from localbroker import Broker, GenericEvent

ROOT = Path(__file__).parents[1]
PUBLISHERS = 16
#: Offered rates (events/s): 2,000 is the issue's figure; 500 is well below saturation here.
RATES = (500.0, 2000.0)


def row(name: str, value: float, unit: str, baseline: str | None = None,
        baseline_value: float | None = None) -> dict[str, Any]:  # fmt: skip
    return {"name": name, "value": value, "unit": unit, "baseline": baseline,
            "baseline_value": baseline_value}  # fmt: skip


# -- children -----------------------------------------------------------------------------------


async def _wait_for(path: Path) -> None:
    while not path.exists():  # noqa: ASYNC110 - a file from another process: nothing to await
        await asyncio.sleep(0.001)


async def child_publish(data: str, n: int, go: str) -> None:
    """Publish ``n`` events with 16 concurrent publishers once ``go`` exists; print timings."""
    async with Broker(data, index_events=False) as broker:
        print("ready", flush=True)
        await _wait_for(Path(go))
        per = n // PUBLISHERS

        async def publisher() -> None:
            for i in range(per):
                await broker.publish("bench.p", {"n": i})

        cpu, start = time.process_time(), time.time()
        await asyncio.gather(*(publisher() for _ in range(PUBLISHERS)))
        end, cpu = time.time(), time.process_time() - cpu
        print(json.dumps({"start": start, "end": end, "cpu": cpu, "n": per * PUBLISHERS}))


async def offer(broker: Broker, rate: float, seconds: float) -> None:
    """Publish at ``rate`` events/s for ``seconds`` (each publish its own task: a fixed offer)."""
    tasks = set()
    begin = time.perf_counter()
    count = int(rate * seconds)
    for i in range(count):
        delay = begin + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(broker.publish("bench.l", {"sent": time.time()}))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)


def subscribe_latencies(broker: Broker, expected: int, done: asyncio.Event) -> list[float]:
    latencies: list[float] = []

    @broker.subscriber("bench.l", name="latency")
    async def handler(event: GenericEvent) -> None:
        latencies.append(time.time() - event.payload()["sent"])
        if len(latencies) >= expected:
            done.set()

    return latencies


async def child_handle(data: str, expected: int, out: str) -> None:
    """Handle ``expected`` events, then write their latencies to ``out``."""
    broker = Broker(data, index_events=False)
    done = asyncio.Event()
    latencies = subscribe_latencies(broker, expected, done)
    async with broker:
        print("ready", flush=True)
        await done.wait()
    Path(out).write_text(json.dumps(latencies))


# -- the measurements ---------------------------------------------------------------------------


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bench_processes", "--child", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def throughput(processes: int, n: int) -> tuple[float, float]:
    """(aggregate events/s, CPU seconds per event) of ``processes`` publishing ``n`` each."""
    with tempfile.TemporaryDirectory(prefix="lb-bench-proc-") as tmp:
        go = Path(tmp) / "go"
        children = [_spawn("publish", f"{tmp}/data", str(n), str(go)) for _ in range(processes)]
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        go.touch()
        results = []
        for child in children:
            out, _ = child.communicate(timeout=600)
            results.append(json.loads(out.strip().splitlines()[-1]))
        total = sum(r["n"] for r in results)
        span = max(r["end"] for r in results) - min(r["start"] for r in results)
        return total / span, sum(r["cpu"] for r in results) / total


async def latency(cross_process: bool, rate: float, seconds: float) -> tuple[float, float]:
    """(p50, p99) in ms of publish -> handler start at ``rate`` events/s."""
    expected = int(rate * seconds)
    with tempfile.TemporaryDirectory(prefix="lb-bench-lat-") as tmp:
        data = f"{tmp}/data"
        if cross_process:
            out = f"{tmp}/latencies.json"
            child = _spawn("handle", data, str(expected), out)
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            async with Broker(data, index_events=False) as broker:
                await offer(broker, rate, seconds)
            await asyncio.to_thread(child.wait, 120)
            values = sorted(json.loads(Path(out).read_text()))
        else:
            broker = Broker(data, index_events=False)
            done = asyncio.Event()
            values = subscribe_latencies(broker, expected, done)
            async with broker:
                await offer(broker, rate, seconds)
                await done.wait()
            values.sort()
    warm = values[len(values) // 10 :]  # the first tenth warms up (imports, first fsyncs)
    return statistics.median(warm) * 1000, warm[int(len(warm) * 0.99)] * 1000


def _summary(values: list[float]) -> str:
    return f"median of {len(values)}, spread {min(values):,.0f}..{max(values):,.0f}"


async def run(quick: bool) -> list[dict[str, Any]]:
    repeats = 1 if quick else 3
    n = 800 if quick else 4000
    rows: list[dict[str, Any]] = []
    rates: dict[int, list[float]] = {}
    cpus: dict[int, list[float]] = {}
    for _ in range(repeats):
        for processes in (1, 2, 4):
            rate, cpu = await asyncio.to_thread(throughput, processes, n)
            rates.setdefault(processes, []).append(rate)
            cpus.setdefault(processes, []).append(cpu)
    single = statistics.median(rates[1])
    single_cpu = statistics.median(cpus[1])
    for processes in (1, 2, 4):
        rows.append(
            row(
                f"durable publish, {processes} process(es) x {PUBLISHERS} publishers "
                f"({_summary(rates[processes])})",
                statistics.median(rates[processes]),
                "events/s",
                "1 process" if processes > 1 else None,
                single if processes > 1 else None,
            )
        )
        rows.append(
            row(
                f"CPU per event, {processes} process(es)",
                statistics.median(cpus[processes]) * 1e6,
                "us",
                "1 process" if processes > 1 else None,
                single_cpu * 1e6 if processes > 1 else None,
            )
        )
    seconds = 2.0 if quick else 5.0
    for rate in RATES:
        same = await latency(False, rate, seconds)
        cross = await latency(True, rate, seconds)
        for i, name in enumerate(("p50", "p99")):
            rows.append(
                row(f"publish -> handler {name}, one process, {rate:,.0f}/s", same[i], "ms")
            )
            rows.append(
                row(
                    f"publish -> handler {name}, across processes, {rate:,.0f}/s",
                    cross[i],
                    "ms",
                    "one process",
                    same[i],
                )
            )
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, *args = sys.argv[2:]
        if mode == "publish":
            asyncio.run(child_publish(args[0], int(args[1]), args[2]))
        else:
            asyncio.run(child_handle(args[0], int(args[1]), args[2]))
        return
    from benchmarks.__main__ import standalone

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    standalone(run, __doc__)


if __name__ == "__main__":
    main()

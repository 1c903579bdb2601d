"""Test mode: publish->handled round trips and start/close, TestBroker against the plain Broker.

Each figure is the median of repeated runs in this process, with the spread (min..max) in
the name, and its ratio to the plain ``Broker`` (fsync=always, the default) measured in the
same run. Run: ``python -m benchmarks.bench_testing [--quick]``.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.bench_core import row
from localbroker import Broker, Event
from localbroker.testing import TestBroker


class Ping(Event, topic="bench.ping"):
    n: int


async def round_trips(broker: Broker, n: int, *, drain: bool) -> tuple[float, float]:
    """Wall ms and CPU us per publish->handled, one event at a time (as a test does)."""
    handled = asyncio.Event()

    @broker.subscriber("bench.ping", name="pong")
    async def pong(event: Ping) -> None:
        handled.set()

    async with broker:
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            handled.clear()
            await broker.publish(Ping(n=i))
            if drain:
                assert isinstance(broker, TestBroker)
                await broker.drain()
            else:
                await handled.wait()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall / n * 1e3, cpu / n * 1e6


async def start_close(make: Callable[[], Broker], times: int) -> float:
    """Wall ms of one ``async with broker:`` with one subscriber and nothing published."""
    started = time.perf_counter()
    for _ in range(times):
        broker = make()
        broker.subscribe(_noop, "bench.ping", name="noop")
        async with broker:
            pass
    return (time.perf_counter() - started) / times * 1e3


async def _noop(event: Ping) -> None:
    return None


def _median_row(
    name: str, samples: list[float], unit: str, base: str | None, base_value: float | None
) -> dict[str, Any]:
    spread = f" [{min(samples):.3g}..{max(samples):.3g}]"
    return row(name + spread, statistics.median(samples), unit, base, base_value)


async def run(quick: bool) -> list[dict[str, Any]]:
    n, runs = (100, 3) if quick else (500, 7)
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="lb-bench-testing-") as tmp:
        for _ in range(runs):
            cases = {
                "Broker (fsync=always)": (lambda: Broker(tempfile.mkdtemp(dir=tmp)), False),
                "Broker (fsync=never)": (
                    lambda: Broker(tempfile.mkdtemp(dir=tmp), fsync="never"),
                    False,
                ),
                "TestBroker": (TestBroker, False),
                "TestBroker + drain()": (TestBroker, True),
            }
            for label, (make, drain) in cases.items():
                wall, cpu = await round_trips(make(), n, drain=drain)
                samples.setdefault(f"{label} wall", []).append(wall)
                samples.setdefault(f"{label} cpu", []).append(cpu)
            samples.setdefault("Broker start+close", []).append(
                await start_close(lambda: Broker(Path(tempfile.mkdtemp(dir=tmp))), 3)
            )
            samples.setdefault("TestBroker start+close", []).append(
                await start_close(TestBroker, 3)
            )
    base = "Broker (fsync=always)"
    base_wall = statistics.median(samples[f"{base} wall"])
    base_cpu = statistics.median(samples[f"{base} cpu"])
    rows = []
    for label in (
        "Broker (fsync=always)",
        "Broker (fsync=never)",
        "TestBroker",
        "TestBroker + drain()",
    ):
        rows.append(
            _median_row(
                f"publish->handled, {label}", samples[f"{label} wall"], "ms", base, base_wall
            )
        )
        rows.append(
            _median_row(f"  CPU per event, {label}", samples[f"{label} cpu"], "us", base, base_cpu)
        )
    base_start = statistics.median(samples["Broker start+close"])
    for label in ("Broker start+close", "TestBroker start+close"):
        rows.append(_median_row(label, samples[label], "ms", "Broker start+close", base_start))
    return rows


def main() -> None:
    from benchmarks.__main__ import standalone

    standalone(run, __doc__)


if __name__ == "__main__":
    main()

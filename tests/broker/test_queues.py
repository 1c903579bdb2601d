"""Per-subscriber queues: positions across restarts, ordering per key, start positions, DLQ retry."""

from __future__ import annotations

import asyncio
import sys
import types
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from localbroker import Broker, DeliveryContext, RetryPolicy
from localbroker.broker import subscriber as subscriber_module
from tests.broker.events import Note
from tests.broker.test_delivery import make_broker
from tests.waiting import wait_until


async def test_restart_resumes_and_redelivers_in_flight(tmp_path: Path) -> None:
    started = asyncio.Event()
    broker = make_broker(tmp_path)

    @broker.subscriber("note.added", name="worker")
    async def stuck(event: Note) -> None:
        if event.n == 3:
            started.set()
            await asyncio.sleep(60)  # still running when the broker stops

    async with broker:
        for i in range(6):
            await broker.publish(Note(n=i))
        # One handler at a time (concurrency 1): 0..2 were acked before 3 started.
        await asyncio.wait_for(started.wait(), 5)

    seen: list[int] = []
    broker2 = make_broker(tmp_path)

    @broker2.subscriber("note.added", name="worker")
    async def ok(event: Note) -> None:
        seen.append(event.n)

    async with broker2:
        await broker2.publish(Note(n=6))
        await broker2.wait_idle()
    # 0..2 were acked before the stop and are not seen again; 3 was in flight.
    assert 3 in seen
    assert 6 in seen
    assert not {0, 1, 2} & set(seen)
    assert len(seen) == len(set(seen))


async def test_tries_survive_a_restart(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, retry=RetryPolicy(backoff_initial=30))

    @broker.subscriber("note.added", name="w", max_tries=3)
    async def fails(event: Note) -> None:
        raise ValueError("x")

    async with broker:
        await broker.publish(Note(n=1))
        await wait_until(lambda: broker.store.errors(subscriber="w"), what="the first failure")

    broker2 = make_broker(tmp_path)
    attempts: list[int] = []

    @broker2.subscriber("note.added", name="w", max_tries=3)
    async def fails_again(event: Note, ctx: DeliveryContext) -> None:
        attempts.append(ctx.attempt)
        raise ValueError("y")

    async with broker2:
        await broker2.wait_idle()
        (entry,) = await broker2.dlq.list(subscriber="w")
    assert attempts == [2, 3]
    assert entry.tries == 3


async def test_events_of_one_key_are_ordered_and_a_failure_holds_only_its_key(
    tmp_path: Path,
) -> None:
    broker = make_broker(tmp_path, retry=RetryPolicy(backoff_initial=0.05, backoff_max=0.05))
    order: dict[str, list[int]] = defaultdict(list)
    running: Counter[str] = Counter()
    overlap: list[str] = []
    failed_once: set[int] = set()

    @broker.subscriber("note.added", name="ordered", concurrency=4)
    async def handle(event: Note) -> None:
        key = event.key or ""
        running[key] += 1
        if running[key] > 1:
            overlap.append(key)
        try:
            await asyncio.sleep(0.001)
            if key == "a" and event.n == 1 and event.n not in failed_once:
                failed_once.add(event.n)
                raise ValueError("first try of a/1 fails")
            order[key].append(event.n)
        finally:
            running[key] -= 1

    async with broker:
        await broker.publish_many(Note(n=i, key=k) for i in range(20) for k in ("a", "b", "c"))
        await broker.wait_idle()
    assert overlap == []
    for key in "abc":
        assert order[key] == list(range(20)), key
    # while a/1 waited for its retry, the other keys went on
    assert order["b"] == list(range(20))


async def test_concurrency_bounds_parallel_handlers(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)
    running = 0
    peak = 0

    @broker.subscriber("note.added", name="parallel", concurrency=3)
    async def handle(event: Note) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    async with broker:
        await broker.publish_many(Note(n=i) for i in range(30))
        await broker.wait_idle()
    assert peak == 3


async def test_start_positions(tmp_path: Path) -> None:
    async with Broker(tmp_path) as broker:
        await broker.publish_many(Note(n=i) for i in range(10))
    boundary = datetime.now(UTC)
    await asyncio.sleep(0.01)  # the clock moves on: event 10's timestamp is after the boundary
    got: dict[str, list[int]] = defaultdict(list)
    broker = Broker(tmp_path)

    def collect(name: str):
        def handler(event: Note) -> None:
            got[name].append(event.n)

        return handler

    for name, start in (("e", "earliest"), ("l", "latest"), ("o", 7), ("t", boundary)):
        broker.subscribe(collect(name), "note.added", name=name, start_from=start)
    async with broker:
        await broker.publish(Note(n=10))
        await broker.wait_idle()
    assert got["e"] == list(range(11))
    assert got["l"] == [10]
    assert got["o"] == [7, 8, 9, 10]
    assert got["t"] == [10]


async def test_dlq_retry_reaches_only_the_failing_subscriber(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)
    calls = Counter()
    fixed = False

    @broker.subscriber("note.added", name="blog")
    async def blog(event: Note) -> None:
        calls["blog"] += 1

    @broker.subscriber("note.added", name="comment", max_tries=2)
    async def comment(event: Note) -> None:
        calls["comment"] += 1
        if not fixed:
            raise RuntimeError("comment module is broken")

    async with broker:
        meta = await broker.publish(Note(n=1))
        await broker.wait_idle()
        (entry,) = await broker.dlq.list()
        assert (entry.subscriber, entry.event_id) == ("comment", meta.id)
        assert calls == {"blog": 1, "comment": 2}
        fixed = True
        await broker.dlq.retry(entry)
        await broker.wait_idle()
        assert calls == {"blog": 1, "comment": 3}
        assert await broker.dlq.list() == []
        resolved = await broker.dlq.show(entry.id)
        chain = await broker.chain(meta.id)
    assert (resolved.status, resolved.retries) == ("resolved", 1)
    states = {d.subscriber: (d.state, d.tries) for d in chain.roots[0].deliveries}
    assert states == {"blog": ("done", 1), "comment": ("done", 3)}


async def test_dlq_retry_that_fails_again_returns_to_dlq_and_discard(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)

    @broker.subscriber("note.added", name="broken", max_tries=2)
    async def broken(event: Note) -> None:
        raise RuntimeError("still broken")

    async with broker:
        await broker.publish(Note(n=1))
        await broker.wait_idle()
        (entry,) = await broker.dlq.list()
        await broker.dlq.retry(entry)
        await broker.wait_idle()
        (again,) = await broker.dlq.list()
        assert (again.id, again.tries, again.retries) == (entry.id, 4, 1)
        discarded = await broker.dlq.discard(again)
        assert discarded.status == "discarded"
        assert await broker.dlq.list() == []


async def test_dlq_retry_is_kept_for_a_subscriber_not_running(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)

    @broker.subscriber("note.added", name="later", max_tries=1)
    async def fails(event: Note) -> None:
        raise RuntimeError("x")

    async with broker:
        await broker.publish(Note(n=5))
        await broker.wait_idle()
    async with make_broker(tmp_path) as admin:  # no subscribers in this process
        (entry,) = await admin.dlq.list()
        await admin.dlq.retry(entry)
    got: list[int] = []
    broker3 = make_broker(tmp_path)

    @broker3.subscriber("note.added", name="later")
    async def works(event: Note) -> None:
        got.append(event.n)

    async with broker3:
        await broker3.wait_idle()
    assert got == [5]


async def _lines_per_delivery_behind_stuck_head(path: Path, behind: int, measured: int) -> float:
    """Lines of subscriber.py executed per delivery, with ``behind`` events finished behind a
    head that waits for its retry (an hour of backoff): counted, not timed."""
    # No position flush during the count: its cost is per interval, not per delivery.
    broker = make_broker(
        path,
        retry=RetryPolicy(backoff_initial=3600),
        max_in_flight=100,
        state_flush_interval=3600,
    )

    @broker.subscriber("note.added", name="behind")
    async def handler(event: Note) -> None:
        if event.n == -1:
            raise ValueError("the head waits an hour for its retry")

    async def publish(count: int) -> None:
        for start in range(0, count, 1000):
            await broker.publish_many([Note(n=i) for i in range(start, min(count, start + 1000))])

    lines = 0

    def count_lines(frame: types.FrameType, event: str, arg: object) -> Any:
        nonlocal lines
        if event == "line":
            lines += 1
        return count_lines

    def trace_subscriber(frame: types.FrameType, event: str, arg: object) -> Any:
        return count_lines if frame.f_code.co_filename == subscriber_module.__file__ else None

    async with broker:
        runtime = broker.runtime("behind")
        assert runtime is not None
        await broker.publish(Note(n=-1))
        await wait_until(lambda: runtime.state.failures == 1, what="the head's first failure")
        await publish(behind)
        await wait_until(lambda: runtime.state.processed == behind, what="the events behind")
        sys.settrace(trace_subscriber)  # the event loop's thread only
        try:
            await publish(measured)
            await wait_until(lambda: runtime.state.processed == behind + measured)
        finally:
            sys.settrace(None)
        assert runtime._committed() == 0, "the head moved: nothing was measured behind it"
    return lines / measured


async def test_a_stuck_head_costs_each_delivery_behind_it_the_same(tmp_path: Path) -> None:
    # Rebuilding the done-set on every finished delivery made each one cost O(events behind
    # the head): x4 the work with 4x as many events behind it.
    few = await _lines_per_delivery_behind_stuck_head(tmp_path / "few", 2000, 500)
    many = await _lines_per_delivery_behind_stuck_head(tmp_path / "many", 8000, 500)
    assert many < 1.5 * few, f"{few:.0f} lines per delivery with 2000 behind, {many:.0f} with 8000"

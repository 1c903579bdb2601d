"""Per-subscriber queues: positions across restarts, ordering per key, start positions, DLQ retry."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

from localbroker import Broker, DeliveryContext, RetryPolicy
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

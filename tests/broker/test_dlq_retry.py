"""DLQ retries requested by an operator (CLI or dashboard) and carried out by the running broker."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from localbroker import Broker, Event, GenericEvent, RetryPolicy
from localbroker.log import Record
from tests.broker.test_cold_reader import ColdExtension, MemoryColdReader
from tests.cli.test_cli import run_cli
from tests.waiting import wait_until


class PaymentRequested(Event, topic="payment.requested"):
    order: int


class PaymentCaptured(Event, topic="payment.captured"):
    order: int


async def test_retry_all_after_a_failed_retry_handles_each_event_once(tmp_path: Path) -> None:
    """Issue 9 item 3: one entry retried (and failing again), then "Retry all" of 142 entries.

    The requests come from another process (the CLI, as the dashboard records them) and the
    running broker carries them out, while its handlers (concurrency 4) publish follow-up
    events and the application publishes new events. Every event is handled once.
    """
    broker = Broker(
        tmp_path,
        retry=RetryPolicy.immediate(),
        start_from="earliest",
        max_tries=5,
        control_poll_interval=0.05,
    )
    broken = True
    runs: Counter[str] = Counter()  # successful runs per event id
    captured: Counter[int] = Counter()

    @broker.subscriber("payment.requested", name="payments", concurrency=4)
    async def pay(event: PaymentRequested) -> None:
        if broken and event.order < 1000:
            raise RuntimeError(f"card service down for order {event.order}")
        runs[event.id] += 1
        await asyncio.sleep(0.002)  # the card service's answer: other handlers run meanwhile
        await broker.publish(PaymentCaptured(order=event.order))

    @broker.subscriber("payment.captured", name="ledger", concurrency=2)
    async def book(event: PaymentCaptured) -> None:
        captured[event.order] += 1

    data = str(tmp_path)
    async with broker:
        for order in range(142):
            await broker.publish(PaymentRequested(order=order))
        await broker.wait_idle()
        dead = await broker.dlq.list(subscriber="payments")
        assert len(dead) == 142

        # One entry retried while the fault is still there: 5 more tries, dead again.
        code, out = await run_cli("dlq", "retry", str(dead[0].id), "--data", data)
        assert code == 0, out

        async def dead_again() -> bool:
            entry = await broker.dlq.show(dead[0].id)
            return entry.status == "dead" and entry.tries == 10

        await wait_until(dead_again, what="the retried entry to fail 5 more times")

        broken = False
        publishing = True

        async def app() -> None:  # the application goes on publishing meanwhile
            order = 1000
            while publishing:
                await broker.publish(PaymentRequested(order=order))
                order += 1
                await asyncio.sleep(0.001)

        publisher = asyncio.create_task(app())
        try:
            code, out = await run_cli(
                "dlq", "retry", "--all", "--subscriber", "payments", "--data", data
            )
            assert code == 0, out
            assert "retried:" in out

            async def all_resolved() -> bool:
                entries = await broker.dlq.list(subscriber="payments")
                retrying = await broker.store.retrying_dlq("payments")
                return not entries and not retrying

            await wait_until(all_resolved, what="every entry to be resolved")
        finally:
            publishing = False
            await publisher
        await broker.wait_idle()
        statuses = Counter([(await broker.dlq.show(e.id)).status for e in dead])
    assert statuses == {"resolved": 142}
    twice = {event_id: n for event_id, n in runs.items() if n != 1}
    assert not twice, f"events handled more than once: {twice}"
    assert len(runs) >= 142 + 1  # the 142 retried and at least one new one
    assert set(captured.values()) == {1}
    assert set(range(142)) <= set(captured)


class GatedColdReader(MemoryColdReader):
    """Cold storage whose reads wait until the test opens the gate (a slow archive)."""

    def __init__(self, records: list[Record]) -> None:
        super().__init__(records)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def read(self, offset: int, max_records: int) -> list[Record]:
        self.waiting.set()
        await self.gate.wait()
        return await super().read(offset, max_records)


async def test_a_delivery_finishing_while_the_pickup_reads_cold_storage_runs_once(
    tmp_path: Path,
) -> None:
    """The redelivery pick-up awaits a cold read of one entry while another entry, already
    redelivered, finishes: that one must not be handed out again (issue 9 item 3)."""
    failing = {5, 250}
    async with Broker(tmp_path, segment_bytes=4096, start_from="earliest") as first:

        @first.subscriber("t.x", name="payments", max_tries=1, concurrency=2)
        async def fail(event: GenericEvent) -> None:
            if event.payload()["n"] in failing:
                raise RuntimeError("card service down")

        for n in range(6):  # offset 5 dies first: its entry has the lower id
            await first.publish("t.x", {"n": n})
        await first.wait_idle()
        for n in range(6, 300):
            await first.publish("t.x", {"n": n})
        await first.wait_idle()
        cold_entry, local_entry = await first.dlq.list()
        deleted_to = first.log.segments()[3].next_offset
        assert cold_entry.offset < deleted_to <= local_entry.offset
        cold = first.log.read(0, max_records=deleted_to)
        first.log.delete_segments_before(deleted_to)

    reader = GatedColdReader(cold)
    broker = Broker(
        tmp_path,
        segment_bytes=4096,
        control_poll_interval=0.05,
        extensions=[ColdExtension(reader)],
    )
    runs: Counter[int] = Counter()
    release = asyncio.Event()
    started = asyncio.Event()

    # The held handler waits for two CLI runs: no ack timeout may end it meanwhile.
    @broker.subscriber("t.x", name="payments", max_tries=1, concurrency=2, ack_timeout=120)
    async def pay(event: GenericEvent) -> None:
        n = event.payload()["n"]
        if n == 250:
            started.set()
            await release.wait()
        runs[n] += 1

    data = str(tmp_path)
    async with broker:
        code, out = await run_cli("dlq", "retry", str(local_entry.id), "--data", data)
        assert code == 0, out
        await asyncio.wait_for(started.wait(), 20)  # redelivered, running
        code, out = await run_cli("dlq", "retry", str(cold_entry.id), "--data", data)
        assert code == 0, out
        await asyncio.wait_for(reader.waiting.wait(), 20)  # the pick-up awaits the cold read
        release.set()

        async def resolved() -> bool:
            return (await broker.dlq.show(local_entry.id)).status == "resolved"

        await wait_until(resolved, what="the local entry's redelivery to finish")
        reader.gate.set()
        await wait_until(lambda: runs[5] == 1, what="the cold entry to be redelivered")
        await broker.wait_idle()
        assert (await broker.dlq.show(cold_entry.id)).status == "resolved"
    assert runs == {250: 1, 5: 1}


async def test_a_retried_entry_whose_cold_read_fails_is_read_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An archive unreachable for a moment delays a DLQ retry; it never drops it."""
    async with Broker(tmp_path, segment_bytes=4096, start_from="earliest") as first:

        @first.subscriber("t.x", name="payments", max_tries=1)
        async def fail(event: GenericEvent) -> None:
            if event.payload()["n"] == 5:
                raise RuntimeError("card service down")

        for n in range(300):
            await first.publish("t.x", {"n": n})
        await first.wait_idle()
        (entry,) = await first.dlq.list()
        deleted_to = first.log.segments()[3].next_offset
        cold = first.log.read(0, max_records=deleted_to)
        first.log.delete_segments_before(deleted_to)

    reader = MemoryColdReader(cold)
    broker = Broker(tmp_path, segment_bytes=4096, extensions=[ColdExtension(reader)])
    runs: list[int] = []

    @broker.subscriber("t.x", name="payments", max_tries=1)
    async def pay(event: GenericEvent) -> None:
        runs.append(event.payload()["n"])

    async with broker:
        reader.failures_left = 1
        await broker.dlq.retry(entry)
        await wait_until(lambda: runs == [5], what="the entry to be read again and handled")
        await broker.wait_idle()
    assert f"DLQ entry {entry.id} of subscriber payments cannot be read yet" in caplog.text
    assert reader.reads >= 2

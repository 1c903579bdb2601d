"""The contract every sync target keeps, as one abstract suite subclassed per target.

A target's test module defines a :class:`Backend` (how to make the target against its server,
how to read back what the server holds, as a plain client of that system would) and a
subclass of :class:`SyncTargetContract` whose ``backend`` fixture returns one; every test here
then runs against that target (the pattern of pyeventsourcing's abstract recorder test case
and FastStream's ``BrokerRealConsumeTestcase``). What only one target has stays in its module.

Capability flags on the backend say which parts apply: ``has_inbound`` (the target consumes
other services' events), ``has_state`` (failed tries and DLQ entries are stored too),
``server_outlives_process`` (the server is not inside the broker's process, so a SIGKILL of
that process can be tested). A test that does not apply is skipped with the reason.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pytest

from localbroker import Broker, Event, GenericEvent, RetryPolicy
from localbroker.state.store import StateStore
from localbroker.sync import SyncTarget
from tests.broker.damage import Damage, damage_record, write_notes
from tests.sync.helpers import cli_sync_status, invoke, log_envelopes, log_ids, publish_n
from tests.waiting import wait_until

#: Envelope fields every target keeps, besides service, producer and offset.
ENVELOPE = ("id", "topic", "time", "version", "key", "correlation_id", "causation_id", "headers",
            "data")  # fmt: skip


class Server(Protocol):
    """What the suite does to a target's server (tests/servers/process.py, MemoryServer)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def kill(self) -> None: ...


class Backend(abc.ABC):
    """One kind of target against one server, for one test."""

    has_inbound: ClassVar[bool] = False
    has_state: ClassVar[bool] = False
    server_outlives_process: ClassVar[bool] = True
    #: The finest time the server keeps (MongoDB: milliseconds).
    time_resolution: ClassVar[timedelta] = timedelta(microseconds=1)

    server: Server

    @abc.abstractmethod
    def target(self, **options: Any) -> SyncTarget[Any]:
        """A new target against the server (``options`` come on top of the backend's own)."""

    def child_target(self, **options: Any) -> tuple[str, dict[str, Any]]:
        """For a child process: the class name in ``localbroker.sync`` and its keywords."""
        raise NotImplementedError

    @abc.abstractmethod
    def events(self) -> list[dict[str, Any]]:
        """Every event the server holds, read as a plain client would, in arrival order: the
        fields of :data:`ENVELOPE` (``time`` as an aware datetime) with ``service``,
        ``producer`` and ``offset``."""

    # -- has_state -------------------------------------------------------------------------

    def errors(self) -> list[dict[str, Any]]:
        """Stored failed tries: at least ``event_id``, ``attempt``, ``subscriber``,
        ``traceback``."""
        raise NotImplementedError

    def dlq(self) -> list[dict[str, Any]]:
        """Stored DLQ entries: at least ``event_id``, ``status``, ``tries``, ``subscriber``."""
        raise NotImplementedError

    def stats(self) -> list[dict[str, Any]]:
        """Stored subscriber stats: at least ``name``, ``processed``, ``dead``."""
        raise NotImplementedError

    # -- has_inbound -----------------------------------------------------------------------

    def inbound_target(self, topic: str, **options: Any) -> SyncTarget[Any]:
        """A target of service ``shop`` consuming ``topic``, reading often (``claim_idle`` and
        ``claim_interval`` as given)."""
        raise NotImplementedError

    def produce(self, topic: str, data: dict[str, Any], event_id: str | None = None) -> str:
        """Publish into ``topic`` as another service would with the system's own client; a
        reference of the entry (as log lines name it)."""
        raise NotImplementedError

    def produce_malformed(self, topic: str) -> str:
        """Publish an entry without a payload; its reference."""
        raise NotImplementedError

    def pending(self, topic: str) -> int:
        """Entries of ``topic`` delivered to the group ``shop`` and not acknowledged."""
        raise NotImplementedError

    def readers(self, topic: str) -> int:
        """Consumers of the group ``shop`` on ``topic`` that the server knows."""
        raise NotImplementedError

    def abandon(self, topic: str, count: int) -> None:
        """Another instance of ``shop`` takes ``count`` entries of ``topic`` and dies."""
        raise NotImplementedError


def ids_once(backend: Backend) -> list[str]:
    """Ids of the stored events in offset order, asserting that none is there twice."""
    events = backend.events()
    twice = [i for i, n in Counter(e["id"] for e in events).items() if n > 1]
    assert not twice, f"{len(twice)} events stored twice, e.g. {twice[:3]}"
    return [e["id"] for e in sorted(events, key=lambda e: e["offset"])]


async def in_thread(action: Any) -> None:
    """A server action (start, stop, kill) without blocking the broker's event loop."""
    await asyncio.to_thread(action)


CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    import localbroker.sync
    from localbroker import Broker, GenericEvent

    async def main() -> None:
        spec = json.loads(sys.argv[1])
        target = getattr(localbroker.sync, spec["cls"])(**spec["options"])
        n = spec["start"]
        async with Broker(spec["data"], sync=[target]) as broker:
            while True:
                await broker.publish_many(
                    [GenericEvent(topic="crash.sync", n=n + i) for i in range(100)]
                )
                n += 100
                print(n, target.sent, flush=True)

    asyncio.run(main())
    """
)


def run_and_kill(spec: dict[str, Any], after: float) -> int:
    """Run the child until its target mirrors, SIGKILL it ``after`` s later; events published."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.stdout is not None
    deadline = time.monotonic() + 60
    seen = b""
    while True:  # lines "published sent"
        line = child.stdout.readline()
        if not line:
            child.kill()
            _, err = child.communicate(timeout=20)
            raise AssertionError(f"the child died: {err.decode()}")
        seen += line
        if int(line.split()[1]) > 0:
            break  # publishing, and the target is mirroring
        if time.monotonic() > deadline:
            child.kill()
            child.communicate(timeout=20)
            raise AssertionError(f"the target sent nothing within 60 s: {line.decode()}")
    time.sleep(after)  # kill at some moment while publishing and mirroring go on
    os.kill(child.pid, signal.SIGKILL)
    rest, _ = child.communicate(timeout=20)
    return int((seen + rest).decode().splitlines()[-1].split()[0])


def recorder(into: list[int]) -> Any:
    """A handler appending each event's ``n`` to ``into``."""

    async def handler(event: Event) -> None:
        into.append(event.payload()["n"])

    return handler


def flip_back(damage: Damage) -> None:
    """Undo :func:`damage_record`: the record reads right again."""
    with damage.segment.open("r+b") as f:
        f.seek(damage.position + 40)
        byte = f.read(1)
        f.seek(damage.position + 40)
        f.write(bytes([byte[0] ^ 0x01]))


class SyncTargetContract:
    """The behaviour every sync target has; subclass it with a ``backend`` fixture."""

    @pytest.fixture
    def backend(self) -> Backend:
        raise NotImplementedError("a subclass gives the backend fixture")

    # -- outbound --------------------------------------------------------------------------

    async def test_mirrors_every_event_with_its_full_envelope(
        self, backend: Backend, data_dir: Path
    ) -> None:
        target = backend.target()
        broker = Broker(data_dir, sync=[target])
        caused: list[str] = []

        @broker.subscriber("contract.placed", name="chain", start_from="earliest")
        async def follow(event: Event) -> None:
            if event.key == "k1":
                caused.append((await broker.publish("contract.caused", {"by": event.id})).id)

        async with broker:
            ids = await publish_n(broker, "contract.bulk", 2_000)
            one = await broker.publish(
                "contract.placed", {"name": "Ann", "n": 1.5}, key="k1", headers={"trace": "t-1"}
            )
            await broker.publish_many(
                [GenericEvent(topic="contract.old", time=datetime(2020, 1, 1).astimezone())]
            )
            await wait_until(lambda: caused, what="the caused event")
            await target.wait_mirrored()
            status = broker.sync_status()[target.name]
        expected = log_envelopes(data_dir)
        stored = {e["id"]: e for e in backend.events()}
        assert ids_once(backend) == [e["id"] for e in expected]
        for envelope in expected:
            got = stored[envelope["id"]]
            for field in ENVELOPE:
                want = envelope.get(field)
                if field == "time":
                    gap = abs(got["time"] - datetime.fromisoformat(want))
                    assert gap < backend.time_resolution, (envelope["id"], got["time"], want)
                elif field in ("headers", "data"):
                    assert got[field] == (want or {}), (envelope["id"], field)
                elif field == "version":
                    assert got[field] == want, (envelope["id"], field)
                else:
                    assert got.get(field) == want, (envelope["id"], field)
            assert got["offset"] == envelope["offset"]
            assert got["service"] == target.service
            assert got["producer"] == target.producer
        caused_one = stored[caused[0]]
        assert (caused_one["correlation_id"], caused_one["causation_id"]) == (one.id, one.id)
        assert stored[one.id]["headers"] == {"trace": "t-1"}
        assert stored[ids[7]]["data"] == {"n": 7}
        assert status["connected"] is True
        assert status["cursor"] == len(expected)
        assert status["sent"] == len(expected)
        assert status["backlog"] == 0

    async def test_outage_buffers_and_resends_from_the_cursor(
        self, backend: Backend, data_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        target = backend.target(connect_timeout=0.5)
        async with Broker(data_dir, sync=[target]) as broker:
            await publish_n(broker, "contract.outage", 100)
            await target.wait_mirrored()
            await in_thread(backend.server.stop)
            with caplog.at_level(logging.WARNING, logger="localbroker.sync"):
                await publish_n(broker, "contract.outage", 3_000, start=100)
                await wait_until(lambda: not target.status()["connected"], what="the outage")
                assert target.status()["backlog"] == 3_000
                await in_thread(backend.server.start)
                await target.wait_mirrored()
        failed = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
        assert len(failed) == 1, failed  # one warning per outage, not per batch or attempt
        assert "from offset 100" in failed[0]
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        assert ids_once(backend) == log_ids(data_dir)

    async def test_resend_from_an_old_cursor_stores_nothing_twice(
        self, backend: Backend, data_dir: Path
    ) -> None:
        target = backend.target()
        async with Broker(data_dir, sync=[target]) as broker:
            await publish_n(broker, "contract.resend", 300)
            await target.wait_mirrored()
        # A crash before the cursor was saved: the whole log is sent again.
        async with Broker(data_dir) as broker:
            await broker.store.set_value(f"sync.state.{target.name}", {"cursor": 0})
        target = backend.target()
        async with Broker(data_dir, sync=[target]) as broker:
            await publish_n(broker, "contract.resend", 10, start=300)
            await target.wait_mirrored()
        assert ids_once(backend) == log_ids(data_dir)

    async def test_unreachable_at_start_then_catches_up(
        self, backend: Backend, data_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        await in_thread(backend.server.stop)
        target = backend.target(connect_timeout=0.3)
        with caplog.at_level(logging.WARNING, logger="localbroker.sync"):
            async with Broker(data_dir, sync=[target]) as broker:
                await publish_n(broker, "contract.late", 50)  # publish does not wait for it
                status = broker.sync_status()[target.name]
                assert status["connected"] is False
                assert status["backlog"] == 50
                assert status["last_error"]
                await in_thread(backend.server.start)
                await target.wait_mirrored()
        assert sum("failed" in r.getMessage() for r in caplog.records) == 1
        assert ids_once(backend) == log_ids(data_dir)

    async def test_status_shows_an_outage_even_when_idle(
        self, backend: Backend, data_dir: Path
    ) -> None:
        target = backend.target(connect_timeout=0.5, heartbeat_interval=0.1)
        async with Broker(data_dir, sync=[target]) as broker:
            await publish_n(broker, "contract.idle", 5)
            await target.wait_mirrored()
            await wait_until(lambda: target.status()["connected"], what="connected")
            await in_thread(backend.server.kill)  # nothing is published from now on
            await wait_until(lambda: not target.status()["connected"], what="the outage noticed")
            assert target.status()["last_error"]
            assert target.status()["backlog"] == 0
            await publish_n(broker, "contract.idle", 7, start=5)

            async def cli_sees_outage() -> bool:
                status = (await cli_sync_status(data_dir))[target.name]
                return status["running"] and not status["connected"] and status["backlog"] == 7

            await wait_until(cli_sees_outage, what="the outage in `localbroker sync status`")
            await in_thread(backend.server.start)
            await target.wait_mirrored()
            await wait_until(lambda: target.status()["connected"], what="reconnected")
            await target.save()
            status = (await cli_sync_status(data_dir))[target.name]
        assert status["kind"] == target.kind
        assert status["target"] == target.describe()
        assert status["service"] == target.service
        assert (status["running"], status["connected"]) == (True, True)
        assert (status["cursor"], status["backlog"], status["sent"]) == (12, 0, 12)
        assert status["last_error"]  # the last error stays visible after the outage
        status = (await cli_sync_status(data_dir))[target.name]  # nothing runs it now
        assert (status["running"], status["backlog"]) == (False, 0)

    async def test_damage_in_the_log_stalls_the_mirror_loudly_until_it_reads_again(
        self, backend: Backend, data_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A record that fails its checksum stops the mirror at its offset: an ERROR naming
        file, byte and offset, the status and health say stalled, and the loop keeps trying:
        once the record reads again, or after ``localbroker repair``, the mirror goes on."""
        await write_notes(data_dir, 200)
        first, second = damage_record(data_dir, 60), damage_record(data_dir, 150)
        target = backend.target()
        name = f"sync target {target.name}"
        async with Broker(data_dir, segment_bytes=4096, sync=[target]) as broker:
            await wait_until(lambda: target.stall, what="the mirror to stall at the damage")
            assert target.cursor == 60  # everything before the damage was sent
            assert first.named() in target.stall.cause
            stalled = broker.health().readers[name]
            assert (stalled.position, broker.health().ok) == (60, False)

            async def cli_sees_the_stall() -> bool:
                status = (await cli_sync_status(data_dir))[target.name]
                return status["running"] and (status["stalled"] or {}).get("position") == 60

            await wait_until(cli_sees_the_stall, what="the stall in `localbroker sync status`")
            result = await invoke("sync", "status", "--data", str(data_dir))
            assert "stalled" in result.output, result.output
            assert not any(task.done() for task in target._tasks), "a loop ended"
            flip_back(first)  # the bad byte reads right again: the mirror goes on by itself
            await wait_until(lambda: target.cursor == 150, what="the mirror to read on")
            assert target.stall is not None
            assert second.named() in target.stall.cause
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert sum(first.named() in line for line in errors) == 1, errors  # once, not per try
        assert any("localbroker repair" in line for line in errors)
        assert "the mirror reads again at offset 60" in caplog.text

        result = await invoke("repair", str(data_dir))
        assert result.exit_code == 0, result.output
        target = backend.target()
        async with Broker(data_dir, segment_bytes=4096, sync=[target]) as broker:
            await target.wait_mirrored()
            assert target.stall is None
            assert broker.health().ok
        mirrored = ids_once(backend)
        assert mirrored == log_ids(data_dir)
        assert len(mirrored) == 199  # offset 150 was cut out by repair, nothing else is lost

    @pytest.mark.slow
    async def test_server_kill_9_loses_and_doubles_no_event(
        self, backend: Backend, data_dir: Path
    ) -> None:
        target = backend.target(connect_timeout=0.5, batch_size=50)
        async with Broker(data_dir, sync=[target]) as broker:
            stop = asyncio.Event()

            async def produce() -> None:
                n = 0
                while not stop.is_set():
                    await publish_n(broker, "contract.kill", 10, start=n)
                    n += 10
                    await asyncio.sleep(0.002)  # a producer's pace: the mirror sends small batches

            producer = asyncio.create_task(produce())
            try:
                for _kill in range(3):
                    sent = target.sent
                    await wait_until(
                        lambda s=sent: target.sent >= s + 200 and target.status()["connected"],
                        what="the mirror sending",
                    )
                    await in_thread(backend.server.kill)
                    await wait_until(
                        lambda: not target.status()["connected"] and target.status()["backlog"],
                        what="the outage in the status",
                    )
                    await in_thread(backend.server.start)
                    await wait_until(lambda: target.status()["connected"], what="reconnect")
            finally:
                stop.set()
                await producer
            await target.wait_mirrored(timeout=60)
        ids = log_ids(data_dir)
        stored = ids_once(backend)
        missing = set(ids) - set(stored)
        assert not missing, f"{len(missing)} of {len(ids)} events never reached the server"
        assert stored == ids

    @pytest.mark.slow
    async def test_broker_sigkill_mid_mirror_loses_and_doubles_no_event(
        self, backend: Backend, data_dir: Path
    ) -> None:
        if not backend.server_outlives_process:
            pytest.skip("the server lives in the broker's process and dies with it")
        published = 0
        for after in (0.6, 0.9):
            cls, options = backend.child_target(status_interval=0.1, batch_size=500)
            spec = {"data": str(data_dir), "cls": cls, "options": options, "start": published}
            published = await asyncio.to_thread(run_and_kill, spec, after)
        name = backend.target().name
        store = await StateStore.open(data_dir / "state.db", readonly=True)
        saved = (await store.get_value(f"sync.state.{name}"))["cursor"]
        await store.close()
        target = backend.target()
        async with Broker(data_dir, sync=[target]):
            await target.wait_mirrored(timeout=60)
        ids = log_ids(data_dir)
        assert len(ids) >= published > 1000, "the children published too little to test anything"
        assert saved < len(ids), "killed after the mirror had caught up: nothing was tested"
        assert ids_once(backend) == ids

    # -- failed tries and the DLQ ----------------------------------------------------------

    async def test_failed_tries_and_dlq_entries_are_stored(
        self, backend: Backend, data_dir: Path
    ) -> None:
        if not backend.has_state:
            pytest.skip("this target stores events only")
        target = backend.target(poll_interval=0.05)
        broker = Broker(data_dir, sync=[target], max_tries=2, retry=RetryPolicy.immediate())

        @broker.subscriber("contract.order", name="billing", start_from="earliest")
        async def bill(event: Event) -> None:
            if event.payload()["n"] == 3:
                raise ValueError("card declined")

        async with broker:
            ids = await publish_n(broker, "contract.order", 10)
            await broker.wait_idle()
            await wait_until(lambda: target.dlq_sent >= 1, what="the DLQ entry stored")
            (entry,) = await broker.dlq.list()
            await broker.dlq.discard(entry.id)
            await wait_until(
                lambda: [d["status"] for d in backend.dlq()] == ["discarded"],
                what="the discard stored",
            )
            await wait_until(
                lambda: (
                    [(s["name"], s["processed"], s["dead"]) for s in backend.stats()]
                    == [("billing", 9, 1)]
                ),
                what="the subscriber's stats stored",
            )
            await target.wait_mirrored()
        errors = sorted(backend.errors(), key=lambda e: e["attempt"])
        assert [(e["event_id"], e["attempt"], e["subscriber"]) for e in errors] == [
            (ids[3], 1, "billing"),
            (ids[3], 2, "billing"),
        ]
        assert "card declined" in errors[0]["traceback"]
        (dlq,) = backend.dlq()
        assert (dlq["event_id"], dlq["tries"], dlq["subscriber"]) == (ids[3], 2, "billing")
        assert ids_once(backend) == ids

    # -- inbound ---------------------------------------------------------------------------

    def _inbound(self, backend: Backend) -> None:
        if not backend.has_inbound:
            pytest.skip("this target has no inbound side")

    async def test_inbound_event_is_appended_once_then_acknowledged(
        self, backend: Backend, data_dir: Path
    ) -> None:
        self._inbound(backend)
        target = backend.inbound_target("payment.done")
        broker = Broker(data_dir, sync=[target])
        received: list[Event] = []

        @broker.subscriber("payment.done", name="orders")
        async def on_payment(event: Event) -> None:
            received.append(event)

        async with broker:
            pending_at_append: list[int] = []
            append = broker.publish_many

            async def spy(events: Any) -> Any:
                # When the append starts, the server must still hold the entries as pending.
                pending_at_append.append(backend.pending("payment.done"))
                results = await append(events)
                assert set(log_ids(data_dir)) >= {r.id for r in results}  # in the log on return
                return results

            broker.publish_many = spy  # type: ignore[method-assign]
            await wait_until(lambda: backend.readers("payment.done"), what="the group reading")
            backend.produce("payment.done", {"order_id": "o1", "amount": 12}, event_id="pay-1")
            backend.produce("payment.done", {"order_id": "o2"})
            await wait_until(lambda: len(received) == 2, what="both events delivered")
            await wait_until(lambda: backend.pending("payment.done") == 0, what="acknowledged")
            # Nothing can come twice now: the server has nothing left to deliver again, the
            # mirror has looked at both records (it would have sent them back by now) and the
            # subscriber has handled whatever the log holds.
            await target.wait_mirrored()
            await broker.wait_idle()
        assert [e.payload() for e in received] == [{"order_id": "o1", "amount": 12},
                                                   {"order_id": "o2"}]  # fmt: skip
        assert received[0].id == "pay-1"
        assert sum(pending_at_append) >= 2, "acknowledged before the append"
        assert log_ids(data_dir) == [e.id for e in received]
        assert target.status()["inbound"]["received"] == 2
        assert [e["id"] for e in backend.events()] == [], "an inbound event was mirrored back"

    async def test_inbound_instances_of_one_service_share_the_entries(
        self, backend: Backend, tmp_path: Path
    ) -> None:
        self._inbound(backend)
        handled: dict[str, list[int]] = {"a": [], "b": []}
        brokers = []
        for name in ("a", "b"):
            target = backend.inbound_target("payment.done", inbound_batch=50, outbound=False)
            broker = Broker(tmp_path / name, sync=[target])
            broker.subscribe(recorder(handled[name]), "payment.done", name="orders")
            brokers.append(broker)
        async with brokers[0], brokers[1]:
            await wait_until(lambda: backend.readers("payment.done") == 2, what="both reading")
            for n in range(1_000):
                backend.produce("payment.done", {"n": n})
                if n % 100 == 99:
                    await asyncio.sleep(0.01)  # a producer's pace: both instances get to read
            await wait_until(lambda: len(handled["a"]) + len(handled["b"]) >= 1_000)
            await wait_until(lambda: backend.pending("payment.done") == 0, what="acknowledged")
            for broker in brokers:
                await broker.wait_idle()
        everything = handled["a"] + handled["b"]
        assert sorted(everything) == list(range(1_000)), Counter(everything).most_common(3)
        assert handled["a"]
        assert handled["b"]

    async def test_inbound_entries_a_dead_instance_left_are_taken_over(
        self, backend: Backend, data_dir: Path
    ) -> None:
        self._inbound(backend)
        for n in range(100):
            backend.produce("payment.done", {"n": n}, event_id=f"e{n}")
        backend.abandon("payment.done", 100)
        assert backend.pending("payment.done") == 100
        target = backend.inbound_target("payment.done", claim_idle=0.3, claim_interval=0.1)
        broker = Broker(data_dir, sync=[target])
        seen: list[str] = []

        @broker.subscriber("payment.done", name="orders")
        async def on_payment(event: Event) -> None:
            seen.append(event.id)

        async with broker:
            await wait_until(lambda: len(seen) == 100, what="the abandoned entries delivered")
            await wait_until(lambda: backend.pending("payment.done") == 0, what="acknowledged")
            await broker.wait_idle()
        assert sorted(seen) == sorted(f"e{n}" for n in range(100))

    async def test_inbound_entry_without_payload_is_refused_with_an_error_line(
        self, backend: Backend, data_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        self._inbound(backend)
        target = backend.inbound_target("payment.done")
        with caplog.at_level(logging.WARNING, logger="localbroker.sync"):
            async with Broker(data_dir, sync=[target]):
                await wait_until(lambda: backend.readers("payment.done"), what="the group")
                bad = backend.produce_malformed("payment.done")
                backend.produce("payment.done", {"order_id": "o4"}, event_id="ok-1")
                await wait_until(lambda: target.status()["inbound"]["received"] == 1)
                # Acknowledged, so it neither comes back nor holds back the group.
                await wait_until(lambda: backend.pending("payment.done") == 0)
                status = target.status()["inbound"]
        assert log_ids(data_dir) == ["ok-1"]
        assert status["rejected"] == 1
        assert bad in status["last_rejected"]
        (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert bad in line
        assert "data" in line

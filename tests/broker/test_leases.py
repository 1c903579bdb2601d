"""A broker among the processes on its directory: registry, leases, failover, per-process queues.

Other processes here are real children that take leases in state.db (``tests.state.lease_child``)
and are SIGKILLed; the broker's own queues move to it, and back, under their leases.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from localbroker import Broker, GenericEvent
from localbroker.cli.main import cli
from localbroker.dashboard import create_app
from localbroker.state.store import StateStore
from localbroker.view import BrokerView
from tests.dashboard.conftest import client_for
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def holder(data: Path, lease: str) -> subprocess.Popen[bytes]:
    """Another process holding ``lease`` (for 30 s, renewed) until killed."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.state.lease_child",
            "hold",
            str(data / "state.db"),
            lease,
            "30",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert child.stdout is not None
    line = child.stdout.readline().decode()
    assert line.startswith("held"), child.stderr.read().decode() if child.stderr else line
    return child


def leases(data: Path) -> dict[str, tuple[str | None, int]]:
    with sqlite3.connect(data / "state.db") as db:
        rows = db.execute("SELECT name, holder, epoch FROM leases").fetchall()
    return {name: (who, epoch) for name, who, epoch in rows}


async def test_health_shows_this_process_and_the_leases_it_holds(tmp_path: Path) -> None:
    broker = Broker(tmp_path, lease_timeout=1.0)

    @broker.subscriber("note.added", name="email")
    async def email(event: GenericEvent) -> None:
        pass

    async with broker:
        [me] = broker.health().processes
        assert (me.pid, me.host) == (os.getpid(), os.uname().nodename)
        assert set(me.roles) == {"indexer", "requests", "retention", "subscriber:email"}
        assert me.started <= me.heartbeat <= time.time()
        first_beat = me.heartbeat
        await wait_until(
            lambda: broker.health().processes[0].heartbeat > first_beat, what="a heartbeat"
        )
        held = {name: who for name, (who, _) in leases(tmp_path).items()}
        assert held == dict.fromkeys(me.roles, me.id)
    # Closed: unregistered, every lease free, the liveness lock gone.
    store = await StateStore.open(tmp_path / "state.db")
    try:
        assert await store._all("read", "SELECT * FROM processes") == []
    finally:
        await store.close()
    assert {who for who, _ in leases(tmp_path).values()} == {None}
    assert list((tmp_path / "processes").iterdir()) == []


async def test_a_queue_another_process_holds_moves_here_when_it_is_sigkilled(
    tmp_path: Path,
) -> None:
    other = holder(tmp_path, "subscriber:email")
    handled: list[int] = []
    broker = Broker(tmp_path, ack_timeout=30.0, start_from="earliest")

    @broker.subscriber("note.added", name="email")
    async def email(event: GenericEvent) -> None:
        handled.append(event.payload()["n"])

    try:
        async with broker:
            for n in range(10):
                await broker.publish("note.added", {"n": n})
            # The other process has the queue: this one runs the singletons only.
            [mine] = [p for p in broker.health().processes if p.pid == os.getpid()]
            assert "subscriber:email" not in mine.roles
            assert "indexer" in mine.roles
            assert broker.runtime("email") is None
            os.kill(other.pid, signal.SIGKILL)
            other.communicate(timeout=30)
            killed = time.monotonic()
            # Its liveness lock is free at once: taken over at the next round (1 s), not
            # when its 30 s lease would have expired.
            await wait_until(lambda: len(handled) == 10, what="the queue to move here")
            assert time.monotonic() - killed < 10
            assert handled == list(range(10))
            assert leases(tmp_path)["subscriber:email"][1] == 2  # a new epoch
    finally:
        if other.poll() is None:
            other.kill()
            other.communicate(timeout=30)


async def test_operator_requests_wait_for_the_process_holding_the_executor(
    tmp_path: Path,
) -> None:
    """The DLQ retry a CLI queues is carried out once, by the holder of 'requests'."""
    other = holder(tmp_path, "requests")
    tries: list[int] = []
    broker = Broker(tmp_path, ack_timeout=30.0, max_tries=1, control_poll_interval=0.05)

    @broker.subscriber("note.added", name="email")
    async def email(event: GenericEvent) -> None:
        tries.append(event.payload()["n"])
        if len(tries) == 1:
            raise ValueError("first try fails")

    try:
        async with broker:
            await broker.publish("note.added", {"n": 1})
            await wait_until(lambda: broker.store.dlq_counts(), what="the DLQ entry")
            [entry] = await broker.dlq.list()
            request = await broker.store.add_request("dlq.retry", {"id": entry.id})
            assert (await broker.store.request_result(request))[0] == "pending"
            os.kill(other.pid, signal.SIGKILL)
            other.communicate(timeout=30)

            async def done() -> bool:
                return (await broker.store.request_result(request))[0] == "done"

            await wait_until(done, what="this process to take the executor over")
            await wait_until(lambda: len(tries) == 2, what="the retried delivery")
            await broker.wait_idle()
        assert tries == [1, 1]
    finally:
        if other.poll() is None:
            other.kill()
            other.communicate(timeout=30)


def steal(path: Path) -> list[tuple[int, float]]:
    """Take lease 'subscriber:email' as another process would; the queue's row as it was."""
    with sqlite3.connect(path, timeout=30) as db:
        db.execute(
            "UPDATE leases SET holder = 'elsewhere', epoch = epoch + 1, expires = ?"
            " WHERE name = 'subscriber:email'",
            (time.time() + 60,),
        )
        return db.execute("SELECT committed, updated FROM subscribers").fetchall()


async def test_a_queue_whose_lease_was_taken_stops_and_saves_nothing_more(
    tmp_path: Path,
) -> None:
    """Another process took the lease (as after this one stalled): fenced from then on."""
    handled: list[int] = []
    broker = Broker(tmp_path, lease_timeout=1.0, start_from="earliest")

    @broker.subscriber("note.added", name="email")
    async def email(event: GenericEvent) -> None:
        handled.append(event.payload()["n"])

    async with broker:
        await broker.publish("note.added", {"n": 0})
        await broker.wait_idle()
        before = await asyncio.to_thread(steal, tmp_path / "state.db")
        await wait_until(lambda: broker.runtime("email") is None, what="the queue to stop")
        await broker.publish("note.added", {"n": 1})
    # The event after the takeover was not handled here; the row was left to the new holder.
    assert handled == [0]
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("SELECT committed, updated FROM subscribers").fetchall() == before


async def test_a_holder_that_cannot_renew_stops_before_its_lease_expires(tmp_path: Path) -> None:
    """state.db locked by another writer: renewals wait; the queue stops at 80% of the lease."""
    broker = Broker(tmp_path, lease_timeout=1.0)

    @broker.subscriber("note.added", name="email")
    async def email(event: GenericEvent) -> None:
        pass

    async with broker:
        # Another writer holds SQLite's write lock (from a thread: the event loop must run on,
        # or the broker's own transactions could not finish and let it take the lock).
        locker = sqlite3.connect(
            tmp_path / "state.db", isolation_level=None, check_same_thread=False, timeout=30
        )
        try:
            await asyncio.to_thread(locker.execute, "BEGIN IMMEDIATE")
            expires = locker.execute(
                "SELECT expires FROM leases WHERE name = 'subscriber:email'"
            ).fetchone()[0]
            await wait_until(lambda: broker.runtime("email") is None, what="the queue to stop")
            assert time.time() < expires, "stopped only after others could take the lease"
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        # Free again: taken back at a later round.
        await wait_until(lambda: broker.runtime("email") is not None, what="the queue back")


async def test_per_process_subscriber_keeps_its_position_under_the_process_name(
    tmp_path: Path,
) -> None:
    seen: list[int] = []

    def make(**options: object) -> Broker:
        broker = Broker(tmp_path, **options)

        @broker.subscriber("cache.invalidate", name="cache", per_process=True)
        async def invalidate(event: GenericEvent) -> None:
            seen.append(event.payload()["n"])

        return broker

    broker = make(process_name="web-1")
    async with broker:
        await broker.publish("cache.invalidate", {"n": 1})
        await broker.wait_idle()
        assert set(broker.health().subscribers) == {"cache@web-1"}
    async with make(process_name="web-1") as again:  # resumes: sees only what is new
        await again.publish("cache.invalidate", {"n": 2})
        await again.wait_idle()
    assert seen == [1, 2]
    anonymous = make()
    async with anonymous:
        [name] = anonymous.health().subscribers
        assert name == f"cache@{anonymous.health().processes[0].id}"
        await anonymous.publish("cache.invalidate", {"n": 3})
        await anonymous.wait_idle()
    assert seen == [1, 2, 3]
    with sqlite3.connect(tmp_path / "state.db") as db:
        names = [r[0] for r in db.execute("SELECT name FROM subscribers")]
    assert names == ["cache@web-1"]  # the unnamed start's position went with it


async def test_inspect_and_the_dashboard_show_the_processes_and_their_leases(
    tmp_path: Path,
) -> None:
    other = holder(tmp_path, "subscriber:email")
    broker = Broker(tmp_path)

    @broker.subscriber("note.added", name="email")
    async def email(event: GenericEvent) -> None:
        pass

    try:
        async with broker:
            result = await asyncio.to_thread(CliRunner().invoke, cli, ["inspect", str(tmp_path)])
            async with client_for(create_app(tmp_path)) as client:
                page = (await client.get("/subscribers")).text
            view = BrokerView(tmp_path)
            async with view:
                health = await view.health()
    finally:
        other.kill()
        other.communicate(timeout=30)
    assert result.exit_code == 0, result.output
    # A table that may wrap in the runner's narrow terminal: the parts are there.
    for part in ("Processes", f"{other.pid}@", f"{os.getpid()}@", "indexer"):
        assert part in result.output, part
    processes = dict(re.findall(r'<tr data-process="(\d+)">(.*?)</tr>', page, re.S))
    assert "subscriber:email" in processes[str(other.pid)]
    assert "indexer, requests, retention" in processes[str(os.getpid())]
    assert {p.pid: p.roles for p in health.processes} == {
        other.pid: ("subscriber:email",),
        os.getpid(): ("indexer", "requests", "retention"),
    }

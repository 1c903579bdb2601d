"""The process registry and leases in state.db, with real processes killed, frozen and racing."""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from localbroker.errors import LeaseLostError
from localbroker.state.coordination import Coordination, ProcessIdentity
from localbroker.state.store import StateStore
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def child(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.state.lease_child", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )


async def coordination(path: Path, dead_after: float = 5.0) -> Coordination:
    store = await StateStore.open(path, create=True)
    coord = Coordination(
        store, ProcessIdentity.new(), lock_dir=path.parent / "processes", dead_after=dead_after
    )
    await coord.register()
    return coord


async def test_register_heartbeat_unregister(tmp_path: Path) -> None:
    coord = await coordination(tmp_path / "state.db")
    try:
        [me] = await coord.processes()
        assert (me.id, me.pid, me.roles) == (coord.me.id, os.getpid(), ())
        assert (tmp_path / "processes" / f"{me.id}.lock").exists()
        lease = await coord.acquire("indexer", length=5.0)
        assert lease is not None
        assert lease.epoch == 1
        assert await coord.heartbeat()
        [me] = await coord.processes()
        assert me.roles == ("indexer",)
        assert me.heartbeat >= me.started
        # Taking a lease one already holds renews it under the same epoch.
        again = await coord.acquire("indexer", length=5.0)
        assert again is not None
        assert again.epoch == 1
    finally:
        await coord.unregister()
    assert await coord.processes() == []
    [lease] = await coord.leases()
    assert lease.holder is None  # released with the process
    assert not (tmp_path / "processes" / f"{coord.me.id}.lock").exists()
    await coord.store.close()


async def test_lease_taken_over_at_once_when_its_holder_is_sigkilled(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    holder = child("hold", str(path), "indexer", "30")  # a lease far longer than the test
    assert holder.stdout is not None
    line = holder.stdout.readline().decode()
    assert line.startswith("held"), holder.stderr.read().decode() if holder.stderr else line
    coord = await coordination(path, dead_after=30.0)
    try:
        assert await coord.acquire("indexer", length=30.0) is None  # alive: refused
        [other] = [p for p in await coord.processes() if p.id != coord.me.id]
        assert other.pid == holder.pid
        assert not coord.is_dead(other)
        os.kill(holder.pid, signal.SIGKILL)
        holder.communicate(timeout=30)  # also closes the pipes
        killed = time.monotonic()
        # The kernel freed its liveness lock: dead at once, not 30 s later.
        lease = await coord.acquire("indexer", length=30.0)
        assert lease is not None
        assert lease.holder == coord.me.id
        assert lease.epoch == int(line.split()[1]) + 1
        assert time.monotonic() - killed < 5
        reaped = await coord.reap()
        assert [p.pid for p in reaped] == [holder.pid]
        assert [p.id for p in await coord.processes()] == [coord.me.id]
    finally:
        await coord.unregister()
        await coord.store.close()


async def test_a_frozen_holder_loses_its_lease_and_its_writes_are_fenced(tmp_path: Path) -> None:
    """SIGSTOP: the process lives (its lock is held) but renews nothing; after the lease's
    length another takes it, and the frozen one, resumed, can neither renew nor write."""
    path = tmp_path / "state.db"
    length = 1.0
    holder = child("hold", str(path), "sync.redis", str(length))
    assert holder.stdout is not None
    line = holder.stdout.readline().decode()
    assert line.startswith("held"), holder.stderr.read().decode() if holder.stderr else line
    coord = await coordination(path, dead_after=length)
    try:
        os.kill(holder.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        assert await coord.acquire("sync.redis", length=length) is None  # not expired yet
        taken: list[object] = []

        async def take() -> bool:
            lease = await coord.acquire("sync.redis", length=60.0)
            if lease is not None:
                taken.append(lease)
            return lease is not None

        await wait_until(take, timeout=20, what="the frozen holder's lease to expire")
        # Its last renewal was at most a fifth of the lease before the freeze.
        assert time.monotonic() - stopped >= length * 0.75
        # Silent past dead_after: its row goes, but not its lock file (it is alive, frozen).
        assert [p.pid for p in await coord.reap()] == [holder.pid]
        assert len(list((tmp_path / "processes").glob("*.lock"))) == 2
        os.kill(holder.pid, signal.SIGCONT)
        out, err = holder.communicate(timeout=30)
        assert out.decode().splitlines()[-2:] == [
            "lost",
            f"fenced process {_id_of(out)} no longer holds lease 'sync.redis' (epoch 1): "
            "another process took it over; the change was not saved",
        ], (out, err)
        assert holder.returncode == 0, err.decode()
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT key FROM kv WHERE key LIKE 'writes.%'").fetchall() == []
        # And this process's own fenced write goes through.
        async with coord.store.transaction():
            await coord.check(taken[0])  # type: ignore[arg-type]
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.communicate(timeout=30)
        await coord.unregister()
        await coord.store.close()


def _id_of(out: bytes) -> str:
    """The process id the fencing message names (a child's identity is made in the child)."""
    last = out.decode().splitlines()[-1]
    return last.split()[2]


async def test_check_raises_lease_lost_after_a_takeover(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = await coordination(path, dead_after=0.2)
    second = Coordination(
        first.store,
        ProcessIdentity.new(),
        lock_dir=tmp_path / "processes",
        dead_after=0.2,
    )
    await second.register()
    lease = await first.acquire("retention", length=0.1)
    assert lease is not None
    await wait_until(
        lambda: second.acquire("retention", length=5.0), what="the short lease to expire"
    )
    with pytest.raises(LeaseLostError, match="retention"):
        async with first.store.transaction():
            await first.check(lease)
    assert await first.renew(lease, length=5.0) is None
    await first.release(lease)  # releasing a lost lease leaves the new holder's
    [now] = await second.leases()
    assert (now.holder, now.epoch) == (second.me.id, 2)
    await second.unregister()
    await first.unregister()
    await first.store.close()


@pytest.mark.slow
def test_never_two_holders_among_racing_processes(tmp_path: Path) -> None:
    """Four processes take, hold, release or abandon one lease for 4 s; one is SIGKILLed.

    Every epoch has one holder; the holds (as each holder counts them: up to 80% of the
    lease from before its take) never overlap; every fenced write was made by its epoch's
    holder.
    """
    path = tmp_path / "state.db"
    out = tmp_path / "holds.txt"
    created = subprocess.run(
        [sys.executable, "-c", _CREATE, str(path)], cwd=ROOT, capture_output=True, timeout=60
    )
    assert created.returncode == 0, created.stderr.decode()
    racers = [child("contend", str(path), "indexer", "0.3", "4", str(out)) for _ in range(4)]
    time.sleep(0.5)
    racers[0].kill()
    racers[0].communicate(timeout=30)
    for racer in racers[1:]:
        _, err = racer.communicate(timeout=120)
        assert racer.returncode == 0, err.decode()
    holds = [line.split() for line in out.read_text().splitlines()]
    assert len(holds) >= 6, holds
    by_epoch: dict[int, set[str]] = defaultdict(set)
    for epoch, pid, *_ in holds:
        by_epoch[int(epoch)].add(pid)
    assert all(len(pids) == 1 for pids in by_epoch.values()), by_epoch
    intervals = sorted((float(start), float(end), pid) for _, pid, start, end, _ in holds)
    for (_, end, pid), (start, _, other) in itertools.pairwise(intervals):
        assert end <= start, f"{pid} held until {end}, {other} from {start}"
    assert len({pid for _, pid, *_ in holds}) >= 2, "only one process ever held the lease"
    with sqlite3.connect(path) as db:
        writes = db.execute("SELECT key FROM kv WHERE key LIKE 'writes.%'").fetchall()
    for (key,) in writes:
        _, epoch, pid = key.split(".")
        assert by_epoch[int(epoch)] in ({pid}, set()), (key, by_epoch[int(epoch)])


_CREATE = (
    "import asyncio, sys\n"
    "from pathlib import Path\n"
    "from localbroker.state.store import StateStore\n"
    "async def main():\n"
    "    store = await StateStore.open(Path(sys.argv[1]), create=True)\n"
    "    await store.close()\n"
    "asyncio.run(main())\n"
)

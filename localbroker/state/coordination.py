"""Processes sharing a data directory, and the leases that let one of them at a time do a thing.

Several processes (web workers, a separate worker) open one data directory. Each registers
itself in ``state.db``'s ``processes`` table and renews a heartbeat there; what must run in one
process at a time (the event indexer, sync targets, retention, the operator-request executor,
a subscriber's queue) is guarded by a row of ``leases``: a holder, an expiry and an ``epoch``
that grows at every change of holder (a fencing token: a write made under a lease checks, in
its own transaction, that the lease still has that holder and epoch).

A process is dead when its heartbeat is older than ``dead_after`` seconds or, on the same host,
at once when its *liveness lock* is free: a file under ``processes/`` that the process holds
locked (``flock``) for its whole life, which the kernel releases when it dies, SIGKILL
included. A lease can be taken when it is free, expired, or held by a process whose lock is
free; a process only silent (frozen, or on another host) keeps its leases until they expire,
since it may still be running. Its holder counts a lease as its own only until 80% of its
length from before the renewal that extended it, so it stops before anyone can take it.

Every change here is one SQLite transaction (``BEGIN IMMEDIATE``): two processes never both
see a lease free and both take it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import aiosqlite
import orjson

from localbroker.errors import LeaseLostError
from localbroker.state.store import StateStore

__all__ = [
    "LOCKS_DIR",
    "Coordination",
    "Lease",
    "ProcessIdentity",
    "ProcessInfo",
    "ProcessLock",
    "lock_is_free",
    "read_processes",
    "renew_blocking",
]

logger = logging.getLogger("localbroker.coordination")

#: Directory (under the data directory) of the processes' liveness locks.
LOCKS_DIR = "processes"


def _package_version() -> str:
    try:
        return version("localbroker")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """Who this process is among those sharing the directory (new at every start)."""

    id: str
    pid: int
    host: str
    started: float
    version: str

    @classmethod
    def new(cls, clock: Callable[[], float] = time.time) -> ProcessIdentity:
        """An identity for this process, unique even when a pid is reused."""
        pid, host = os.getpid(), socket.gethostname()
        return cls(f"{pid}@{host}-{uuid.uuid4().hex[:8]}", pid, host, clock(), _package_version())


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessInfo:
    """A row of ``processes``: a process registered on the directory."""

    id: str
    pid: int
    host: str
    started: float
    heartbeat: float
    version: str
    roles: tuple[str, ...]
    """The leases it holds (unexpired): singletons by name, queues as ``subscriber:<name>``."""


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    """A row of ``leases``; ``holder`` is None when the lease is free."""

    name: str
    holder: str | None
    expires: float
    epoch: int


class ProcessLock:
    """A file under ``processes/`` locked by its process for life (the kernel frees it on death)."""

    def __init__(self, directory: Path, process_id: str) -> None:
        self.path = directory / f"{process_id}.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Unlock and delete the file. Idempotent."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)  # closing the descriptor drops the lock
        self._fd = None


def lock_is_free(directory: Path, process_id: str) -> bool:
    """Whether no live process holds ``process_id``'s liveness lock (its file may be gone)."""
    path = directory / f"{process_id}.lock"
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


class Coordination:
    """The process registry and the leases in ``state.db``, seen from one process.

    ``dead_after`` (seconds; the broker uses its ``ack_timeout``) bounds how long a process
    that stopped renewing its heartbeat is taken for alive. Each method is one transaction.

    Example::

        coordination = Coordination(store, me, lock_dir=data_dir / "processes", dead_after=5.0)
        await coordination.register()
        lease = await coordination.acquire("indexer", length=5.0)
        if lease is not None:   # this process runs the indexer until it fails to renew
            lease = await coordination.renew(lease, length=5.0)
    """

    def __init__(
        self,
        store: StateStore,
        me: ProcessIdentity,
        *,
        lock_dir: Path,
        dead_after: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.me = me
        self.lock_dir = lock_dir
        self.dead_after = dead_after
        self._clock = clock
        self._lock = ProcessLock(lock_dir, me.id)

    # -- processes -------------------------------------------------------------------------

    async def register(self) -> None:
        """Take this process's liveness lock and add its row."""
        self._lock.acquire()
        try:
            await self._insert_me()
        except BaseException:
            self._lock.release()
            raise

    async def _insert_me(self) -> None:
        me = self.me
        await self.store._write(
            f"register process {me.id}",
            "INSERT INTO processes (id, pid, host, started, heartbeat, version)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET heartbeat ="
            " excluded.heartbeat",
            (me.id, me.pid, me.host, me.started, self._clock(), me.version),
        )

    async def heartbeat(self) -> bool:
        """Renew this process's heartbeat; False if it had been reaped.

        A process taken for dead (its heartbeat stalled past ``dead_after``) lost its leases
        then; it is registered again, and must take them anew.
        """
        cursor = await self.store._write(
            f"renew the heartbeat of process {self.me.id}",
            "UPDATE processes SET heartbeat = ? WHERE id = ?",
            (self._clock(), self.me.id),
        )
        if cursor.rowcount:
            return True
        logger.warning(
            "process %s had been taken for dead (no heartbeat for %.1f s): registered again",
            self.me.id,
            self.dead_after,
        )
        await self._insert_me()
        return False

    async def unregister(self) -> None:
        """Release every lease this process holds, remove its row, then its liveness lock."""
        try:
            async with self.store.transaction(f"unregister process {self.me.id}"):
                await self.store.db.execute(
                    "UPDATE leases SET holder = NULL, expires = 0 WHERE holder = ?", (self.me.id,)
                )
                await self.store.db.execute("DELETE FROM processes WHERE id = ?", (self.me.id,))
                await self._forget_per_process(self.me.id)
        finally:
            self._lock.release()

    async def processes(self) -> list[ProcessInfo]:
        """Every registered process (dead ones not reaped yet included), oldest first."""
        return await read_processes(self.store, self._clock())

    def is_dead(self, process: ProcessInfo, now: float | None = None) -> bool:
        """Whether ``process`` is dead: heartbeat too old, or (same host) its lock is free."""
        now = self._clock() if now is None else now
        if process.id == self.me.id:
            return False
        return now - process.heartbeat > self.dead_after or self.certainly_dead(process)

    def certainly_dead(self, process: ProcessInfo) -> bool:
        """Dead beyond doubt: on this host, and its liveness lock is free (it cannot renew)."""
        return (
            process.id != self.me.id
            and process.host == self.me.host
            and lock_is_free(self.lock_dir, process.id)
        )

    async def reap(self) -> list[ProcessInfo]:
        """Remove the rows of dead processes; returns them.

        The leases of a process dead beyond doubt (:meth:`certainly_dead`) are freed at once.
        Those of a process only silent for ``dead_after`` (on another host, or frozen) are
        left to expire: it may still be running and renew them, and a lease is never longer
        than ``dead_after``.
        """
        reaped: list[tuple[ProcessInfo, bool]] = []
        async with self.store.transaction("remove dead processes"):
            now = self._clock()
            for process in await self.processes():
                if not self.is_dead(process, now):
                    continue
                certain = self.certainly_dead(process)
                if certain:
                    await self.store.db.execute(
                        "UPDATE leases SET holder = NULL, expires = 0 WHERE holder = ?",
                        (process.id,),
                    )
                await self.store.db.execute("DELETE FROM processes WHERE id = ?", (process.id,))
                await self._forget_per_process(process.id)
                reaped.append((process, certain))
        for process, certain in reaped:
            if certain:
                with contextlib.suppress(FileNotFoundError):
                    (self.lock_dir / f"{process.id}.lock").unlink()
            logger.warning(
                "process %s (pid %d on %s) is dead (%s); its leases %s %s",
                process.id,
                process.pid,
                process.host,
                "its liveness lock is free"
                if certain
                else f"no heartbeat for {now - process.heartbeat:.1f} s",
                ", ".join(process.roles) or "(none)",
                "are free" if certain else "are free once they expire",
            )
        return [process for process, _ in reaped]

    async def _forget_per_process(self, process_id: str) -> None:
        """Delete the positions of per-process subscribers named after a process start.

        Such a subscriber (``<name>@<process id>``; one named by ``process_name`` keeps its
        position) belongs to that start only: nobody resumes it.
        """
        suffix = f"@{process_id}"
        await self.store.db.execute(
            "DELETE FROM subscribers WHERE substr(name, -?) = ?", (len(suffix), suffix)
        )

    # -- leases ----------------------------------------------------------------------------

    async def acquire(self, name: str, *, length: float) -> Lease | None:
        """Take (or renew) lease ``name`` for ``length`` seconds; None while another holds it.

        It is taken when free, expired, or held by a process dead beyond doubt (see
        :meth:`certainly_dead`; a process only silent keeps its leases until they expire). A
        change of holder increases the epoch.
        """
        async with self.store.transaction(f"take lease {name!r}"):
            row = await self.store._one(
                f"read lease {name!r}",
                "SELECT holder, expires, epoch FROM leases WHERE name = ?",
                (name,),
            )
            now = self._clock()
            expires = now + length
            if row is None:
                await self.store.db.execute(
                    "INSERT INTO leases (name, holder, expires, epoch) VALUES (?, ?, ?, 1)",
                    (name, self.me.id, expires),
                )
                return Lease(name, self.me.id, expires, 1)
            holder, until, epoch = row[0], row[1], row[2]
            if holder != self.me.id:
                if holder is not None and until > now and not await self._holder_dead(holder):
                    return None
                epoch += 1
            await self.store.db.execute(
                "UPDATE leases SET holder = ?, expires = ?, epoch = ? WHERE name = ?",
                (self.me.id, expires, epoch, name),
            )
            return Lease(name, self.me.id, expires, epoch)

    async def _holder_dead(self, holder: str) -> bool:
        row = await self.store._one(
            "read a lease holder",
            "SELECT *, '[]' AS held FROM processes WHERE id = ?",
            (holder,),
        )
        # No row: it closed (and released) or was reaped as silent; its lease expires.
        return row is not None and self.certainly_dead(_process(row))

    async def renew(self, lease: Lease, *, length: float) -> Lease | None:
        """Extend a lease still held under its epoch; None if it was lost meanwhile."""
        expires = self._clock() + length
        cursor = await self.store._write(
            f"renew lease {lease.name!r}",
            "UPDATE leases SET expires = ? WHERE name = ? AND holder = ? AND epoch = ?",
            (expires, lease.name, self.me.id, lease.epoch),
        )
        return dataclasses.replace(lease, expires=expires) if cursor.rowcount else None

    async def release(self, lease: Lease) -> None:
        """Free a lease this process holds (nothing happens if it was lost meanwhile)."""
        await self.store._write(
            f"release lease {lease.name!r}",
            "UPDATE leases SET holder = NULL, expires = 0 WHERE name = ? AND holder = ?"
            " AND epoch = ?",
            (lease.name, self.me.id, lease.epoch),
        )

    async def check(self, lease: Lease) -> None:
        """Inside a transaction: raise :class:`LeaseLostError` unless ``lease`` still holds.

        Example::

            async with store.transaction("save the cursor"):
                await coordination.check(lease)
                await store.set_value("sync.cursor.redis", 42)
        """
        row = await self.store._one(
            f"check lease {lease.name!r}",
            "SELECT 1 FROM leases WHERE name = ? AND holder = ? AND epoch = ?",
            (lease.name, self.me.id, lease.epoch),
        )
        if row is None:
            raise LeaseLostError(lease.name, self.me.id, lease.epoch)

    async def leases(self) -> list[Lease]:
        """Every lease, by name."""
        rows = await self.store._all(
            "read the leases", "SELECT name, holder, expires, epoch FROM leases ORDER BY name"
        )
        return [Lease(r[0], r[1], r[2], r[3]) for r in rows]


def renew_blocking(
    db: sqlite3.Connection,
    process_id: str,
    leases: Iterable[Lease],
    *,
    length: float,
    clock: Callable[[], float] = time.time,
) -> set[str]:
    """Heartbeat and renew ``leases`` in one transaction on a plain ``sqlite3`` connection.

    For a thread of its own (the broker's renewer): renewals then never wait for a busy
    event loop. Returns the names of the leases still held (renewed).
    """
    renewed: set[str] = set()
    db.execute("BEGIN IMMEDIATE")
    try:
        now = clock()
        db.execute("UPDATE processes SET heartbeat = ? WHERE id = ?", (now, process_id))
        for lease in leases:
            cursor = db.execute(
                "UPDATE leases SET expires = ? WHERE name = ? AND holder = ? AND epoch = ?",
                (now + length, lease.name, process_id, lease.epoch),
            )
            if cursor.rowcount:
                renewed.add(lease.name)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return renewed


async def read_processes(store: StateStore, now: float | None = None) -> list[ProcessInfo]:
    """The processes registered on the directory, oldest first, each with the leases it holds
    now (unexpired) as its ``roles``. For tools beside the broker too (``BrokerView``)."""
    now = time.time() if now is None else now
    rows = await store._all(
        "read the processes",
        "SELECT p.*, (SELECT json_group_array(l.name) FROM (SELECT name FROM leases"
        " WHERE holder = p.id AND expires > ? ORDER BY name) AS l) AS held"
        " FROM processes AS p ORDER BY p.started, p.id",
        (now,),
    )
    return [_process(r) for r in rows]


def _process(r: aiosqlite.Row) -> ProcessInfo:
    return ProcessInfo(
        id=r["id"],
        pid=r["pid"],
        host=r["host"],
        started=r["started"],
        heartbeat=r["heartbeat"],
        version=r["version"],
        roles=tuple(orjson.loads(r["held"])),
    )

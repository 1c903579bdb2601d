"""Runs the roles of one process among those sharing a data directory, each under its lease.

A *role* is something one process at a time may do: a singleton (the event indexer, the
extensions, history retention, the operator-request executor) or a share of the work
(a subscriber's queue). The coordinator of each process registers it in ``state.db``, then
every ``interval`` (a fifth of the lease, at most 1 s) renews its heartbeat and its leases,
reaps dead processes, and takes the leases it can: singletons whenever they are free, shares
up to its fair part (``ceil(shares / live processes)``), handing back one share per round
above it (the role is stopped — its in-flight work finished or given up — before the lease is
released).

Renewals (and the heartbeat) run in a thread of their own, on a connection of their own, so a
busy event loop or a long transaction of the broker does not make the process lose its
leases; the thread renews only while the event loop shows signs of life (within half a
lease), so a process whose loop is stuck lets its leases lapse. A role is counted as held only
until 80% of the lease after the start of the last renewal: past that, or once a renewal finds
the lease taken, the role is stopped, before another process can have taken it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from localbroker.state.coordination import Coordination, Lease, ProcessInfo, renew_blocking
from localbroker.state.store import BUSY_TIMEOUT_MS

__all__ = ["Coordinator", "Role"]

logger = logging.getLogger("localbroker.coordination")

#: Share of the lease a holder counts as its own (from before the renewal that extended it).
HOLD_FRACTION = 0.8


@dataclasses.dataclass(slots=True)
class Role:
    """What the process does while it holds lease ``name``."""

    name: str
    start: Callable[[Lease], Awaitable[None]]
    stop: Callable[[bool], Awaitable[None]]
    """Stop the role; ``True``: let the work under way finish first (a share handed back)."""
    share: bool = False
    """A share of work spread over the processes (fair part each), not a singleton."""


class _Renewer:
    """Renews the heartbeat and the held leases every ``interval`` s from a thread."""

    def __init__(self, path: Path, process_id: str, *, length: float, interval: float) -> None:
        self.path = path
        self.process_id = process_id
        self.length = length
        self.interval = interval
        self._lock = threading.Lock()
        self._leases: dict[str, Lease] = {}
        self.renewed_at: dict[str, float] = {}
        """Per lease, the time (``time.monotonic()``) its last renewal began."""
        self.lost: set[str] = set()
        """Leases a renewal found taken by another process."""
        self.loop_seen = time.monotonic()
        """Set by the event loop (see Coordinator._watch): renew only while it is recent."""
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="localbroker-leases", daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def close(self) -> None:
        """Stop renewing; return once the thread has ended.

        Polled rather than joined in a worker thread: asyncio's default executor would keep a
        thread of its own alive after the broker closed.
        """
        self._stopped.set()
        while self._thread.is_alive():  # noqa: ASYNC110 (a thread ending: no loop event)
            await asyncio.sleep(0.01)

    def hold(self, lease: Lease, began: float) -> None:
        with self._lock:
            self._leases[lease.name] = lease
            self.renewed_at[lease.name] = began
            self.lost.discard(lease.name)

    def drop(self, name: str) -> None:
        with self._lock:
            self._leases.pop(name, None)
            self.renewed_at.pop(name, None)
            self.lost.discard(name)

    def _run(self) -> None:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            while not self._stopped.wait(self.interval):
                if time.monotonic() - self.loop_seen > self.length / 2:
                    continue  # the event loop is stuck: let the leases lapse
                self._renew(db)
        finally:
            db.close()

    def _renew(self, db: sqlite3.Connection) -> None:
        with self._lock:
            leases = list(self._leases.values())
        began = time.monotonic()
        try:
            renewed = renew_blocking(db, self.process_id, leases, length=self.length)
        except sqlite3.Error as exc:
            logger.warning("process %s could not renew its leases: %s", self.process_id, exc)
            return
        with self._lock:
            for lease in leases:
                if self._leases.get(lease.name) != lease:
                    continue  # dropped or taken anew meanwhile
                if lease.name in renewed:
                    self.renewed_at[lease.name] = began
                else:
                    self.lost.add(lease.name)


class Coordinator:
    """Keeps this process's leases and starts and stops its roles with them."""

    def __init__(self, coordination: Coordination, *, lease_length: float) -> None:
        self.coordination = coordination
        self.lease_length = lease_length
        self.interval = min(1.0, lease_length / 5)
        self.roles: dict[str, Role] = {}
        self.held: dict[str, Lease] = {}
        self._stopping: dict[str, asyncio.Task[None]] = {}
        self.processes: list[ProcessInfo] = []
        """The processes on the directory, as of the last round."""
        self.leases: list[Lease] = []
        """Every lease, as of the last round."""
        self._tasks: list[asyncio.Task[None]] = []
        self._renewer = _Renewer(
            coordination.store.path, self.me, length=lease_length, interval=self.interval
        )

    @property
    def me(self) -> str:
        """This process's id."""
        return self.coordination.me.id

    @property
    def running(self) -> bool:
        """Whether :meth:`start` ran (rounds go on in the background)."""
        return bool(self._tasks)

    def add(self, role: Role) -> None:
        """Want ``role``: taken at the next round when its lease can be had."""
        self.roles[role.name] = role

    async def register(self) -> None:
        """Register this process (its row and its liveness lock) and start renewing."""
        await self.coordination.register()
        self._renewer.start()

    async def start(self) -> None:
        """Take what can be had now (a role that fails to start raises), then keep at it."""
        self._tasks.append(asyncio.create_task(self._watch(), name="localbroker-lease-watch"))
        await self.round(raise_errors=True)
        self._tasks.append(asyncio.create_task(self._run(), name="localbroker-coordinator"))

    async def close(self) -> None:
        """Stop every role, release the leases, unregister."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._stopping.values(), return_exceptions=True)
        try:
            # Shares first (subscriber queues publish through the singletons' writer).
            for name in sorted(self.held, key=lambda n: not self.roles[n].share):
                await self._hand_back(name, drain=False)
        finally:
            # Whatever failed above (a full disk under state.db, say): stop renewing and free
            # the liveness lock, so that other processes, or a broker opened again in this
            # one, see this registration dead at once and take its leases.
            await self._renewer.close()
            await self.coordination.unregister()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.round()
            except Exception:
                logger.exception("coordination round failed; trying again")

    async def _watch(self) -> None:
        """Show the renewer the loop is alive; stop the roles whose lease is no longer sure."""
        renewer = self._renewer
        while True:
            renewer.loop_seen = now = time.monotonic()
            for name in list(self.held):
                if name in renewer.lost:
                    why = "another process took it over"
                elif now > renewer.renewed_at.get(name, now) + HOLD_FRACTION * self.lease_length:
                    why = f"not renewed for {now - renewer.renewed_at[name]:.1f} s (state.db busy?)"
                else:
                    continue
                logger.error("process %s lost %s (%s); stopping it", self.me, name, why)
                self._drop(name)
                self._stopping[name] = asyncio.create_task(self._stop(name), name=f"stop {name}")
            await asyncio.sleep(self.interval / 2)

    async def round(self, *, raise_errors: bool = False) -> None:
        """Reap dead processes, take what is free, hand back what is above the fair part."""
        coordination = self.coordination
        await coordination.reap()
        self.processes = await coordination.processes()
        if all(p.id != self.me for p in self.processes):
            await coordination.heartbeat()  # taken for dead while silent: registers again
        self.leases = await coordination.leases()
        free = {
            lease.name
            for lease in self.leases
            if lease.holder in (None, self.me) or lease.expires <= coordination._clock()
        }
        known = {lease.name for lease in self.leases}  # a dead holder's were freed by reap
        shares = [r for r in self.roles.values() if r.share]
        fair = math.ceil(len(shares) / max(1, len(self.processes)))
        mine = sum(1 for name in self.held if self.roles[name].share)
        for role in self.roles.values():
            if role.name in self.held or role.name in self._stopping:
                continue
            if role.name in known and role.name not in free:
                continue
            if role.share and mine >= fair:
                continue
            if await self._take(role, raise_errors=raise_errors) and role.share:
                mine += 1
        if mine > fair:
            extra = next(n for n in reversed(self.held) if self.roles[n].share)
            logger.info(
                "process %s hands back %s (%d processes share %d: %d each)",
                self.me,
                extra,
                len(self.processes),
                len(shares),
                fair,
            )
            await self._hand_back(extra, drain=True)
        self.processes = await coordination.processes()  # with what this round took

    async def try_take(self, role: Role) -> None:
        """Want ``role`` and try to take it now (a subscriber added while running)."""
        self.add(role)
        if role.name not in self.held:
            await self._take(role, raise_errors=False)

    async def _take(self, role: Role, *, raise_errors: bool) -> bool:
        began = time.monotonic()
        lease = await self.coordination.acquire(role.name, length=self.lease_length)
        if lease is None:
            return False
        self.held[role.name] = lease
        self._renewer.hold(lease, began)
        try:
            await role.start(lease)
        except Exception:
            self._drop(role.name)
            await self.coordination.release(lease)
            if raise_errors:
                raise
            logger.exception("process %s could not start %s; released it", self.me, role.name)
            return False
        logger.info("process %s took %s (epoch %d)", self.me, role.name, lease.epoch)
        return True

    def _drop(self, name: str) -> Lease | None:
        self._renewer.drop(name)
        return self.held.pop(name, None)

    async def _stop(self, name: str) -> None:
        try:
            await self.roles[name].stop(False)
        except Exception:
            logger.exception("process %s: stopping %s failed", self.me, name)
        finally:
            self._stopping.pop(name, None)

    async def hand_back(self, name: str) -> None:
        """Stop role ``name`` now if this process runs it, and release its lease."""
        if name in self.held:
            await self._hand_back(name, drain=False)

    async def _hand_back(self, name: str, *, drain: bool) -> None:
        """Stop the role (after its work under way, with ``drain``), then release its lease."""
        try:
            await self.roles[name].stop(drain)  # the renewer keeps the lease meanwhile
        except Exception:
            logger.exception("process %s: stopping %s failed", self.me, name)
        lease = self._drop(name)
        if lease is not None:
            await self.coordination.release(lease)

"""Which process runs the parts of a broker that must run in one process only.

Interim mechanism (issue 10, until the coordination in ``state.db`` lands: leases with
heartbeats): each role is an exclusive ``flock`` on ``DATA/roles/<role>.lock``, tried without
waiting. The process that gets it runs the role until it closes or dies (the kernel then
releases the lock); the others try again every ``retry_interval`` seconds, so a dead
holder's role moves to a live process within about that time. The broker only calls
:meth:`RoleLocks.run` and :meth:`RoleLocks.close`, so leases can replace this class.

Roles: ``subscriber-<name>`` (each subscriber's queue runs in one process), ``indexer``
(``index.db``), ``extensions`` (sync targets, the archive, alerts), ``control`` (DLQ actions
queued by the CLI and the dashboard) and ``history`` (trimming old delivery history).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from localbroker.log.sharing import FileLock

__all__ = ["ROLES_DIR", "RoleLocks"]

logger = logging.getLogger("localbroker.roles")

ROLES_DIR = "roles"


class RoleLocks:
    """Try-locks per role in ``data_dir/roles/``, retried until this process gets them."""

    def __init__(self, data_dir: Path, *, retry_interval: float = 1.0) -> None:
        self._directory = data_dir / ROLES_DIR
        self._retry_interval = retry_interval
        self._held: dict[str, FileLock] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def held(self, role: str) -> bool:
        """Whether this process holds ``role``."""
        return role in self._held

    def try_acquire(self, role: str) -> bool:
        """Take ``role`` if no other process holds it (never waits)."""
        if role in self._held:
            return True
        self._directory.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self._directory / f"{role}.lock")
        if not lock.acquire(blocking=False):
            lock.release()
            return False
        self._held[role] = lock
        return True

    async def run(self, role: str, start: Callable[[], Awaitable[None]]) -> None:
        """Call ``start()`` once this process holds ``role``: now, or when its holder is gone.

        When the role is free now, ``start()`` is awaited here, and what it raises reaches the
        caller (a broker's start fails as it would in a single process). Otherwise a task tries
        again every ``retry_interval``; what ``start()`` raises then is logged, and the role is
        released so that another process can take it.
        """
        if self.try_acquire(role):
            try:
                await start()
            except BaseException:
                self.release(role)
                raise
            return
        self._tasks.append(asyncio.create_task(self._retry(role, start), name=f"lb-{role}"))

    async def _retry(self, role: str, start: Callable[[], Awaitable[None]]) -> None:
        # A try-lock has no wake-up to wait for: poll it (once a second by default).
        while not self.try_acquire(role):  # noqa: ASYNC110
            await asyncio.sleep(self._retry_interval)
        logger.info("process %d took over %s of %s", os.getpid(), role, self._directory.parent)
        try:
            await start()
        except Exception:
            logger.exception("could not start %s; releasing the role", role)
            self.release(role)

    def release(self, role: str) -> None:
        """Give ``role`` up (another process takes it at its next try)."""
        lock = self._held.pop(role, None)
        if lock is not None:
            lock.release()

    async def stop_trying(self) -> None:
        """Stop waiting for roles (first thing when closing: nothing starts any more)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def release_all(self) -> None:
        """Release every role held (last thing when closing: the roles' work has stopped)."""
        for role in list(self._held):
            self.release(role)

"""Repairing ``state.db`` of a data directory no broker runs on (``localbroker state repair``)."""

from __future__ import annotations

from pathlib import Path

import filelock

from localbroker.errors import LogLockedError, NotFoundError
from localbroker.state.store import StateStore

__all__ = ["repair_state"]


async def repair_state(data_dir: Path) -> list[str]:
    """Replace damaged values in ``DIR/state.db`` with ones that skip nothing; list each change.

    Takes the directory's writer lock, so it refuses (:class:`LogLockedError`) while a broker
    runs on it. Damage to the file itself (``PRAGMA integrity_check``) raises
    :class:`~localbroker.errors.StateStoreError` saying how to recover. What each damaged
    value becomes: :meth:`StateStore.repair`.
    """
    log_dir = data_dir / "log"
    if not log_dir.is_dir():
        raise NotFoundError(f"{data_dir} holds no localbroker log (no {log_dir})")
    lock = filelock.FileLock(log_dir / "writer.lock")
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise LogLockedError(log_dir) from None
    try:
        store = await StateStore.open(data_dir / "state.db")
        try:
            return await store.repair()
        finally:
            await store.close()
    finally:
        lock.release()

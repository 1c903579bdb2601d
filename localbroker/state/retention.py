"""History retention: ``state.db`` keeps the errors and tries of finished deliveries for a while.

Without it every failed try stays forever (about 760 bytes each, traceback included), even
when the delivery succeeded later. What is deleted, and what never is, is said in
:meth:`~localbroker.state.store.StateStore.trim_history`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from localbroker.state.store import StateStore

__all__ = ["HistoryTrimmer"]

logger = logging.getLogger("localbroker.state")

#: Seconds between two passes (the first runs at start).
TRIM_INTERVAL = 300.0
#: Rows per table and transaction: other writers wait at most for one such batch.
TRIM_BATCH = 500


class HistoryTrimmer:
    """Deletes history older than ``retention`` seconds from ``store``, in small batches."""

    def __init__(
        self,
        store: StateStore,
        retention: float,
        *,
        clock: Callable[[], float] = time.time,
        interval: float = TRIM_INTERVAL,
        batch: int = TRIM_BATCH,
    ) -> None:
        self.store = store
        self.retention = retention
        self.interval = interval
        self.batch = batch
        self._clock = clock

    async def trim(self) -> int:
        """Delete everything due now; returns the number of rows deleted."""
        before = self._clock() - self.retention
        total = 0
        while deleted := await self.store.trim_history(before, batch=self.batch):
            total += deleted
            await asyncio.sleep(0)  # between batches, other writers get the store
        return total

    async def run(self) -> None:
        """Trim now, then every ``interval`` seconds, until cancelled."""
        while True:
            try:
                deleted = await self.trim()
            except Exception:
                logger.exception(
                    "could not trim the delivery history in %s; will try again", self.store.path
                )
            else:
                if deleted:
                    logger.info(
                        "deleted %d rows of delivery history older than %.0f s from %s",
                        deleted,
                        self.retention,
                        self.store.path,
                    )
            await asyncio.sleep(self.interval)

"""Appends to the commit log with group commit.

Publishers hand encoded records to the writer and wait. One writer task takes everything
buffered so far, writes it with one ``write`` and (with ``fsync="always"``) one fsync, both in
a dedicated thread (the append waits there for the log's append lock while another process
appends), then wakes every publisher of the batch. While a fsync runs, new records
pile up for the next batch, so concurrent publishers share fsyncs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from localbroker.config import FsyncPolicy
from localbroker.errors import BrokerStateError, LocalBrokerError
from localbroker.log import CommitLog
from localbroker.state.event_index import IndexMeta

__all__ = ["LogWriter"]

logger = logging.getLogger("localbroker.writer")


class LogWriter:
    """Single writer of a :class:`CommitLog`, batching publishers into shared writes and fsyncs."""

    def __init__(
        self,
        log: CommitLog,
        *,
        fsync: FsyncPolicy,
        fsync_interval: float,
        on_visible: Callable[[int], None],
        on_appended: Callable[[int, list[IndexMeta]], None] | None = None,
    ) -> None:
        self._log = log
        self._fsync = fsync
        self._interval = fsync_interval
        self._on_visible = on_visible
        self._on_appended = on_appended
        self._records: list[tuple[int, bytes]] = []
        self._metas: list[IndexMeta] = []
        self._waiters: list[tuple[int, asyncio.Future[int]]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._unsynced = False
        # fsync gets a thread of its own so that blocking sync handlers using the default
        # executor can never hold back durability of publishes.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="localbroker-fsync")
        self._task: asyncio.Task[None] | None = None
        self._interval_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="localbroker-writer")
        if self._fsync is FsyncPolicy.INTERVAL:
            self._interval_task = asyncio.create_task(self._sync_every_interval())

    async def append(self, records: Sequence[tuple[int, bytes]], metas: Sequence[IndexMeta]) -> int:
        """Append ``(timestamp_ms, payload)`` records; return the first offset once stored.

        ``metas`` (one per record) go to ``on_appended`` with the records' offsets, so the
        event index is fed without decoding the records again.
        """
        if self._closing or self._task is None:
            raise BrokerStateError.not_running()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._records.extend(records)
        self._metas.extend(metas)
        self._waiters.append((len(records), future))
        self._wake.set()
        return await future

    async def close(self) -> None:
        """Write and sync what is buffered, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._interval_task is not None:
            self._interval_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._interval_task
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._records:
                if self._closing:
                    return
                continue
            records, waiters, metas = self._records, self._waiters, self._metas
            self._records, self._waiters, self._metas = [], [], []
            try:
                # In the writer's thread: the append may wait for append.lock while another
                # process appends, which must not hold up the event loop.
                first = await loop.run_in_executor(self._executor, self._write, records)
                if self._fsync is not FsyncPolicy.ALWAYS:
                    self._unsynced = True
            except Exception as exc:
                logger.exception("append to the commit log failed")
                error = LocalBrokerError(f"append to the commit log failed: {exc!r}")
                for _, future in waiters:
                    if not future.done():
                        future.set_exception(error)
                continue
            offset = first
            for count, future in waiters:
                if not future.done():
                    future.set_result(offset)
                offset += count
            if self._on_appended is not None:
                self._on_appended(first, metas)
            self._on_visible(offset)
            if self._closing and not self._records:
                return

    def _write(self, records: list[tuple[int, bytes]]) -> int:
        first = self._log.append(records)
        if self._fsync is FsyncPolicy.ALWAYS:
            self._log.sync()
        return first

    async def _sync_every_interval(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._interval)
            if self._unsynced:
                self._unsynced = False
                started = time.perf_counter()
                await loop.run_in_executor(self._executor, self._log.sync)
                if time.perf_counter() - started > self._interval:
                    logger.warning("fsync took longer than fsync_interval_ms")

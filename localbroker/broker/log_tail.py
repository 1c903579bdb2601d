"""The end of the log as this process's readers see it: visible offset, wait, read.

Records become visible here when this process's writer has stored them (under the fsync
policy), or when another process published them and woke this one (a datagram, see
:mod:`localbroker.log.notify`), or at the latest at the slow safety poll. Subscribers, the
event indexer and sync targets wait on it instead of polling the files.

Example::

    tail = LogTail(log, durable_only=True)
    tail.start()
    await tail.wait_for_append(offset)      # returns once offset is visible
    records = tail.read(offset, 100)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from localbroker.log import CommitLog, Record
from localbroker.log.notify import Notifier

__all__ = ["POLL_INTERVAL", "LogTail"]

logger = logging.getLogger("localbroker.log")

#: Seconds between two looks at the tail state when no wake-up came (a lost datagram, a
#: platform without abstract sockets): a bound on how late an append is seen, not a busy loop.
POLL_INTERVAL = 0.5


class LogTail:
    """Visible offset of a shared :class:`CommitLog`, with waiting for appends."""

    def __init__(
        self, log: CommitLog, *, durable_only: bool, poll_interval: float = POLL_INTERVAL
    ) -> None:
        self._log = log
        # fsync="always": what other processes appended is visible once they fsynced it, as
        # for this process's own appends.
        self._durable_only = durable_only
        self._poll_interval = poll_interval
        self.visible_offset = log.next_offset
        """Records below this offset may be read (stored according to the fsync policy)."""
        self._event = asyncio.Event()
        self._notifier = Notifier(log.directory)
        self._listening = False
        self._poll: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Listen for other processes' wake-ups and start the safety poll (in the event loop)."""
        loop = asyncio.get_running_loop()
        if self._notifier.open():
            loop.add_reader(self._notifier.fileno(), self._woken)
            self._listening = True
        self._poll = asyncio.create_task(self._poll_loop(), name="localbroker-log-tail")

    def advance(self, next_offset: int) -> None:
        """This process stored records up to ``next_offset``: show them, wake the others."""
        self._show(next_offset)
        self._notifier.notify_others()

    def refresh(self) -> None:
        """Take in what other processes published (cheap when nothing changed)."""
        log = self._log
        if not log.is_open:
            return
        try:
            log.refresh()
        except Exception:
            logger.exception("could not follow the other writers of %s", log.directory)
            return
        end = log.next_offset
        self._show(min(end, log.durable_offset) if self._durable_only else end)

    def _show(self, next_offset: int) -> None:
        if next_offset > self.visible_offset:
            self.visible_offset = next_offset
            self._event.set()

    def _woken(self) -> None:
        if self._notifier.drain():
            self.refresh()

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            self.refresh()

    async def wait_for_append(self, offset: int) -> None:
        """Return once the record at ``offset`` is visible."""
        event = self._event
        while self.visible_offset <= offset:
            if event.is_set():
                # Everybody waiting was woken; re-arm for the next append.
                event.clear()
            await event.wait()

    def read(self, offset: int, max_records: int) -> list[Record]:
        """Visible records from ``offset`` on (at most ``max_records``)."""
        records = self._log.read(offset, max_records=max_records)
        visible = self.visible_offset
        if records and records[-1].offset >= visible:
            records = [r for r in records if r.offset < visible]
        return records

    async def close(self) -> None:
        """Stop listening and polling."""
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll
            self._poll = None
        if self._listening:
            asyncio.get_running_loop().remove_reader(self._notifier.fileno())
            self._listening = False
        self._notifier.close()

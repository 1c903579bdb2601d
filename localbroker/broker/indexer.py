"""Keeps ``index.db`` up with the log: event metadata for chain and dashboard queries."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from localbroker.errors import SerializationError
from localbroker.events import decode_envelope
from localbroker.log import Record
from localbroker.state.event_index import EventIndex, IndexedEvent, IndexMeta

if TYPE_CHECKING:
    from localbroker.broker.broker import Broker

__all__ = ["EventIndexer", "index_records"]

logger = logging.getLogger("localbroker.index")

BATCH = 5000
INDEX_DELAY = 0.1
FEED_LIMIT = 100_000  # rows kept in memory while the index falls behind
SLICE = 100  # records decoded between two yields to the event loop (~0.2 ms)
RETRY_DELAY = 5.0  # seconds between tries when the log cannot be read (damage)


def index_records(records: list[Record]) -> list[IndexedEvent]:
    """Index rows of records (a record that holds no envelope is indexed as topic ``?``)."""
    rows = []
    for record in records:
        try:
            env = decode_envelope(record.payload)
        except SerializationError:
            env = {"id": f"offset-{record.offset}", "topic": "?"}
        rows.append(
            IndexedEvent(
                offset=record.offset,
                id=env["id"],
                topic=env["topic"],
                key=env.get("key"),
                time=record.timestamp / 1000,
                correlation_id=env.get("correlation_id"),
                causation_id=env.get("causation_id"),
            )
        )
    return rows


class EventIndexer:
    """Follows the log like a subscriber would and writes index rows in batches."""

    def __init__(self, broker: Broker, index: EventIndex, *, max_lag: int) -> None:
        self.broker = broker
        self.index = index
        self.position: int | None = None
        self.max_lag = max_lag
        # Set at every step forward, and when the indexer fails or stops: wakes publishers
        # held by wait_for_room.
        self._progress = asyncio.Event()
        self._indexing = False  # run() is going and its last step succeeded
        # Rows of events this process appended, handed over by the writer: indexing them
        # needs no read and no JSON decoding of the log. Bounded: past the cap the indexer
        # drops them and reads the log instead.
        self._fed: list[IndexedEvent] = []

    async def wait_for_room(self) -> None:
        """Hold a publisher while the index is ``max_lag`` events behind the log.

        Past that, rows fed by the writer would be dropped and the indexer would have to
        decode the log, which is slower still: the lag would grow without end under a load
        above its rate. Only a working indexer holds publishers: while it fails (a damaged
        record, a full disk) or once it has stopped, publishing goes on.
        """
        while (
            self._indexing
            and self.position is not None
            and self.broker.visible_offset - self.position >= self.max_lag
        ):
            self._progress.clear()
            await self._progress.wait()

    def feed(self, first_offset: int, metas: list[IndexMeta]) -> None:
        """Rows for records just appended at ``first_offset``, ``first_offset + 1``, ..."""
        if len(self._fed) > FEED_LIMIT:
            return
        if self._fed and self._fed[-1].offset + 1 != first_offset:
            self._fed.clear()  # not contiguous: fall back to reading the log
        self._fed.extend(IndexedEvent(first_offset + i, *meta) for i, meta in enumerate(metas))

    def _take_fed(self, position: int, visible: int) -> list[IndexedEvent]:
        fed = self._fed
        if not fed or fed[0].offset != position:
            self._fed = [r for r in fed if r.offset >= position] if fed else fed
            if not self._fed or self._fed[0].offset != position:
                return []
            fed = self._fed
        count = min(len(fed), visible - position, BATCH)
        rows, self._fed = fed[:count], fed[count:]
        return rows

    async def catch_up(self, deadline: float | None = None) -> bool:
        """Index everything visible now; True once done.

        With ``deadline`` (event loop time), stop at the first batch boundary after it and
        return False: what is left is indexed later (at the next start, for ``close()``).
        """
        if self.position is None:
            self.position = max(await self.index.next_offset(), self.broker.log.start_offset)
        loop = asyncio.get_running_loop()
        while self.position < self.broker.visible_offset:
            if deadline is not None and loop.time() >= deadline:
                return False
            fed = self._take_fed(self.position, self.broker.visible_offset)
            if fed:
                await self.index.add(fed)
                self.position = fed[-1].offset + 1
                self._progress.set()
                continue
            records = self.broker.read_log(self.position, BATCH)
            if not records:
                break
            rows: list[IndexedEvent] = []
            for start in range(0, len(records), SLICE):
                rows.extend(index_records(records[start : start + SLICE]))
                await asyncio.sleep(0)  # decoding is CPU work on the loop: let deliveries in
            await self.index.add(rows)
            self.position = records[-1].offset + 1
            self._progress.set()
        return True

    async def run(self) -> None:
        try:
            self._indexing = True
            await self._run()
        finally:
            self._indexing = False
            self._progress.set()

    async def _run(self) -> None:
        reported = ""
        while True:
            try:
                await self.catch_up()
            except Exception as exc:
                self._indexing = False
                self._progress.set()
                # E.g. a damaged record: report it once, retry slowly, never die silently.
                if str(exc) != reported:
                    reported = str(exc)
                    logger.error(
                        "the event index (index.db) cannot go on at offset %s: %s; chain "
                        "queries miss the events after it until the read succeeds",
                        self.position,
                        exc,
                    )
                await asyncio.sleep(RETRY_DELAY)
                continue
            reported = ""
            self._indexing = True
            assert self.position is not None
            await self.broker.wait_for_append(self.position)
            # Index in batches a tenth of a second apart rather than after every append: the
            # index may lag that much (queries read the rest from the log), publishing is not
            # slowed down by a database write per group commit.
            await asyncio.sleep(INDEX_DELAY)

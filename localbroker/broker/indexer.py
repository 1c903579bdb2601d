"""Keeps ``index.db`` up with the log: event metadata for chain and dashboard queries."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from localbroker.errors import SerializationError
from localbroker.events import decode_envelope
from localbroker.log import Record
from localbroker.state.event_index import EventIndex, IndexedEvent

if TYPE_CHECKING:
    from localbroker.broker.broker import Broker

__all__ = ["EventIndexer", "index_records"]

logger = logging.getLogger("localbroker.index")

BATCH = 5000
INDEX_DELAY = 0.1
SLICE = 100  # records decoded between two yields to the event loop (~0.2 ms)


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

    def __init__(self, broker: Broker, index: EventIndex) -> None:
        self.broker = broker
        self.index = index
        self.position: int | None = None

    async def catch_up(self) -> None:
        """Index everything visible now."""
        if self.position is None:
            self.position = max(await self.index.next_offset(), self.broker.log.start_offset)
        while self.position < self.broker.visible_offset:
            records = self.broker.read_log(self.position, BATCH)
            if not records:
                break
            rows: list[IndexedEvent] = []
            for start in range(0, len(records), SLICE):
                rows.extend(index_records(records[start : start + SLICE]))
                await asyncio.sleep(0)  # decoding is CPU work on the loop: let deliveries in
            await self.index.add(rows)
            self.position = records[-1].offset + 1

    async def run(self) -> None:
        while True:
            await self.catch_up()
            assert self.position is not None
            await self.broker.wait_for_append(self.position)
            # Index in batches a tenth of a second apart rather than after every append: the
            # index may lag that much (queries read the rest from the log), publishing is not
            # slowed down by a database write per group commit.
            await asyncio.sleep(INDEX_DELAY)

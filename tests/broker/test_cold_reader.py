"""The ColdReader hook: offsets deleted locally are read from an extension's cold storage."""

from __future__ import annotations

from pathlib import Path

from localbroker import Broker, ColdReader, GenericEvent
from localbroker.errors import ArchiveError
from localbroker.log import Record


class MemoryColdReader:
    """Cold storage in memory: records copied before retention deleted them."""

    def __init__(self, records: list[Record]) -> None:
        self.records = {r.offset: r for r in records}
        self.failures_left = 0
        self.reads = 0

    def first_offset(self) -> int | None:
        return min(self.records) if self.records else None

    async def read(self, offset: int, max_records: int) -> list[Record]:
        self.reads += 1
        if self.failures_left:
            self.failures_left -= 1
            raise ArchiveError("cold storage unavailable for now")  # retriable
        out = []
        while offset in self.records and len(out) < max_records:
            out.append(self.records[offset])
            offset += 1
        return out


class ColdExtension:
    def __init__(self, reader: MemoryColdReader) -> None:
        self.reader = reader

    async def start(self, broker: Broker) -> None:
        broker.cold_reader = self.reader

    async def close(self) -> None:
        pass


async def test_earliest_reads_cold_records_then_local_once_each(tmp_path: Path) -> None:
    async with Broker(tmp_path, segment_bytes=4096) as broker:
        for n in range(300):
            await broker.publish("t.x", {"n": n})
        deleted_to = broker.log.segments()[3].next_offset
        cold = broker.log.read(0, max_records=deleted_to)
        broker.log.delete_segments_before(deleted_to)
        assert broker.log.start_offset == deleted_to

    reader = MemoryColdReader(cold)
    assert isinstance(reader, ColdReader)
    reader.failures_left = 2  # a retriable error delays reading, loses nothing
    seen: list[int] = []
    broker = Broker(tmp_path, segment_bytes=4096, extensions=[ColdExtension(reader)])

    @broker.subscriber("t.x", name="replay", start_from="earliest")
    async def handle(event: GenericEvent) -> None:
        seen.append(event.payload()["n"])

    async with broker:
        assert broker.first_offset == 0
        await broker.wait_idle(timeout=10)
    assert seen == list(range(300))
    assert reader.reads >= 3

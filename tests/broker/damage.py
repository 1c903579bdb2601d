"""Data directories with real damage: a flipped byte in a record written by a real broker."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from localbroker import Broker, SubscriberStalledError
from localbroker.log.record import iter_records
from tests.broker.events import Note

__all__ = ["Damage", "damage_record", "reader", "stall_reader", "write_notes"]


@dataclass(frozen=True)
class Damage:
    """Where the damaged record is."""

    segment: Path
    position: int
    offset: int

    def named(self) -> str:
        """How errors name it: file, byte and offset."""
        return f"{self.segment} at byte {self.position} (offset {self.offset})"


async def write_notes(data: Path, count: int = 200, segment_bytes: int = 4096) -> None:
    """``count`` notes (n = offset), about 18 to a segment of 4 KiB."""
    async with Broker(data, segment_bytes=segment_bytes) as broker:
        await broker.publish_many(Note(n=i) for i in range(count))


def damage_record(data: Path, offset: int) -> Damage:
    """Flip a byte in the payload of the record at ``offset``."""
    for segment in sorted((data / "log").glob("*.log"), reverse=True):
        if int(segment.name[:20]) <= offset:
            break
    fd = os.open(segment, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        (position,) = (
            pos
            for pos, _end, rec in iter_records(fd, 0, size, payloads=False)
            if rec.offset == offset
        )
        byte = os.pread(fd, 1, position + 40)
        os.pwrite(fd, bytes([byte[0] ^ 0x01]), position + 40)
    finally:
        os.close(fd)
    return Damage(segment, position, offset)


def reader(data: Path, seen: list[int]) -> Broker:
    """A broker whose subscriber ``reader`` appends each note's ``n`` to ``seen``."""
    broker = Broker(data, start_from="earliest")

    @broker.subscriber("note.added", name="reader")
    async def read(event: Note) -> None:
        seen.append(event.n)

    return broker


async def stall_reader(data: Path) -> list[int]:
    """Run ``reader`` until it stalls on the damage; what it received."""
    seen: list[int] = []
    with contextlib.suppress(SubscriberStalledError):
        async with reader(data, seen) as broker:
            await broker.wait_idle()
    return seen

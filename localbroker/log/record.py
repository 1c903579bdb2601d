"""The record frame of the commit log (docs/log-format.md, "Records").

A record is a 25-byte big-endian header followed by its payload::

    u32 size        bytes that follow this field (21 + payload length)
    u32 crc         CRC-32 (zlib) of bytes 8 .. end of record
    u64 offset      absolute offset in the log
    i64 timestamp   milliseconds since the Unix epoch
    u8  attributes  0 = UTF-8 JSON envelope (other values reserved)
    ... payload

This module only knows the frame. Which file a record lives in, and what a bad one means
(a torn tail to truncate, or corruption of durable data), is decided by the callers.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Iterator
from typing import NamedTuple

__all__ = [
    "ATTRIBUTES_JSON",
    "HEADER",
    "HEADER_SIZE",
    "MIN_SIZE_FIELD",
    "Record",
    "RecordError",
    "decode_record",
    "encode_record",
    "find_record",
    "iter_records",
]

#: The whole header: size, crc, offset, timestamp, attributes.
HEADER = struct.Struct(">IIQqB")
HEADER_SIZE = HEADER.size  # 25
#: The part covered by the CRC that precedes the payload: offset, timestamp, attributes.
CRC_HEAD = struct.Struct(">QqB")
#: The part before the CRC'd bytes: size, crc.
PREFIX = struct.Struct(">II")
#: Bytes of header counted by ``size`` (everything after the size field).
MIN_SIZE_FIELD = HEADER_SIZE - 4  # 21
#: ``attributes`` value of a record whose payload is a UTF-8 JSON envelope.
ATTRIBUTES_JSON = 0
#: Where the CRC'd bytes of a record start, relative to the record.
CRC_START = 8

assert HEADER_SIZE == 25


class Record(NamedTuple):
    """One record of the log: its absolute offset, timestamp (ms since epoch) and payload."""

    offset: int
    timestamp: int
    payload: bytes


class RecordError(Exception):
    """A frame that cannot be decoded at ``position``.

    ``incomplete`` is true when the bytes simply end inside the record (a torn write or a
    writer still appending); false when the bytes are there but wrong (checksum, size field,
    unexpected offset).
    """

    def __init__(self, position: int, reason: str, *, incomplete: bool = False) -> None:
        self.position = position
        self.reason = reason
        self.incomplete = incomplete
        super().__init__(f"{reason} at byte {position}")


def encode_record(offset: int, timestamp: int, payload: bytes) -> bytes:
    """Frame one record.

    The log's append path inlines the same steps for a whole batch; this function is the
    readable reference (and what tests compare against).

    >>> encode_record(0, 1, b"{}")[:4]
    b'\\x00\\x00\\x00\\x17'
    """
    head = CRC_HEAD.pack(offset, timestamp, ATTRIBUTES_JSON)
    crc = zlib.crc32(payload, zlib.crc32(head))
    return PREFIX.pack(MIN_SIZE_FIELD + len(payload), crc) + head + bytes(payload)


def decode_record(buf: bytes | bytearray | memoryview, position: int = 0) -> tuple[Record, int]:
    """Decode the record that starts at ``position`` of ``buf``, checking its frame and CRC.

    Returns the record and the position just after it. Raises :class:`RecordError` if the
    buffer ends inside the record or the record is bad.
    """
    view = memoryview(buf)
    available = len(view) - position
    if available < HEADER_SIZE:
        raise RecordError(position, "incomplete record header", incomplete=True)
    size, crc, offset, timestamp, _attributes = HEADER.unpack_from(view, position)
    if size < MIN_SIZE_FIELD:
        raise RecordError(position, f"size field {size} is smaller than a header")
    end = position + 4 + size
    if end > len(view):
        raise RecordError(
            position, f"record of {4 + size} bytes but only {available} left", incomplete=True
        )
    actual = zlib.crc32(view[position + CRC_START : end])
    if actual != crc:
        raise RecordError(position, f"crc mismatch (stored {crc:#010x}, computed {actual:#010x})")
    return Record(offset, timestamp, bytes(view[position + HEADER_SIZE : end])), end


#: How much a scan reads per pread. Big enough to amortise the syscall, small enough not to
#: matter for memory.
SCAN_CHUNK = 1 << 20


def iter_records(
    fd: int,
    start: int,
    end: int,
    *,
    expected_offset: int | None = None,
    payloads: bool = True,
    chunk_size: int = SCAN_CHUNK,
) -> Iterator[tuple[int, int, Record]]:
    """Yield ``(position, end, record)`` for each record of ``fd`` from ``start`` to ``end``.

    Every record is checked (frame, CRC and, when ``expected_offset`` is given, that offsets
    continue from it one by one). At the first problem :class:`RecordError` is raised with the
    position of the bad record; a scan that ends exactly at ``end`` simply stops. With
    ``payloads=False`` records carry an empty payload, which saves a copy when only offsets,
    timestamps and positions are needed (index rebuilds, recovery).
    """
    crc32 = zlib.crc32
    unpack_from = HEADER.unpack_from
    pos = start
    buf = b""
    view = memoryview(buf)
    buf_pos = start  # file position of buf[0]
    while pos < end:
        rel = pos - buf_pos
        if rel + HEADER_SIZE > len(buf):
            buf = os.pread(fd, min(max(chunk_size, HEADER_SIZE), end - pos), pos)
            buf_pos, rel = pos, 0
            if len(buf) < HEADER_SIZE:
                raise RecordError(pos, "incomplete record header", incomplete=True)
        size, crc, offset, timestamp, _attributes = unpack_from(buf, rel)
        if size < MIN_SIZE_FIELD:
            raise RecordError(pos, f"size field {size} is smaller than a header")
        record_end = pos + 4 + size
        if record_end > end:
            raise RecordError(
                pos, f"record of {4 + size} bytes but only {end - pos} left", incomplete=True
            )
        if record_end - buf_pos > len(buf):
            # The record straddles the chunk: read it (and what follows) in one go.
            buf = os.pread(fd, min(max(chunk_size, 4 + size), end - pos), pos)
            buf_pos, rel = pos, 0
            if len(buf) < 4 + size:
                raise RecordError(pos, "file shrank while reading", incomplete=True)
        if view.obj is not buf:
            view = memoryview(buf)
        actual = crc32(view[rel + CRC_START : rel + 4 + size])
        if actual != crc:
            raise RecordError(pos, f"crc mismatch (stored {crc:#010x}, computed {actual:#010x})")
        if expected_offset is not None:
            if offset != expected_offset:
                raise RecordError(pos, f"offset {offset} where {expected_offset} was expected")
            expected_offset += 1
        payload = buf[rel + HEADER_SIZE : rel + 4 + size] if payloads else b""
        yield pos, record_end, Record(offset, timestamp, payload)
        pos = record_end


_NONZERO = re.compile(rb"[^\x00]")


def find_record(fd: int, start: int, end: int, min_offset: int) -> tuple[int, int] | None:
    """The first whole, valid record of ``fd`` at or after byte ``start``: ``(position, offset)``.

    Only records with an offset of at least ``min_offset`` count. Used after a bad record to
    tell damage in the middle (valid records follow) from a torn tail (nothing valid follows).
    Candidates are found by the bytes their offset field must start with, so a scan through
    payloads or zeroed space costs C-speed searches, not a Python step per byte.
    """
    # Every record takes at least HEADER_SIZE bytes: that bounds the offsets that can follow.
    max_offset = min_offset + (end - start) // HEADER_SIZE
    low, high = min_offset.to_bytes(8, "big"), max_offset.to_bytes(8, "big")
    shared = 0
    while shared < 8 and low[shared] == high[shared]:
        shared += 1
    prefix = low[:shared]
    at = start
    while at + HEADER_SIZE <= end:
        buf = os.pread(fd, min(SCAN_CHUNK + HEADER_SIZE, end - at), at)
        if len(buf) < HEADER_SIZE:
            break  # the file is shorter than ``end``
        limit = len(buf) - HEADER_SIZE  # candidates whose header lies in this chunk
        i = 0
        while i <= limit:
            hit = buf.find(prefix, i + 8, limit + 8 + shared) if prefix else i + 8
            if hit < 0:
                break
            i = hit - 8
            size, _crc, offset, _ts, _attributes = HEADER.unpack_from(buf, i)
            position = at + i
            if (
                size >= MIN_SIZE_FIELD
                and position + 4 + size <= end
                and min_offset <= offset <= max_offset
                and _valid_at(fd, position, size)
            ):
                return position, offset
            if size == 0:
                # Zeroed space: jump to the first byte that could end a size field.
                nonzero = _NONZERO.search(buf, i)
                i = max(i + 1, nonzero.start() - 3) if nonzero else len(buf)
            else:
                i += 1
        at += limit + 1
    return None


def _valid_at(fd: int, position: int, size: int) -> bool:
    data = os.pread(fd, 4 + size, position)
    try:
        decode_record(data)
    except RecordError:
        return False
    return True

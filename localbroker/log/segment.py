"""One segment of the commit log: a ``.log`` file of records and its ``.index``.

A segment is named by its base offset (``%020d.log``). Only the last segment of a log is
written to (the *active* one); :meth:`Segment.seal` makes it read-only history. The segment
keeps its size and next offset in memory; the files are the truth only at open, where
:mod:`localbroker.log.commit_log` decides how much of them to trust.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from localbroker.errors import CorruptLogError, NotFoundError
from localbroker.log.index import OffsetIndex
from localbroker.log.record import (
    CRC_HEAD,
    CRC_START,
    HEADER,
    HEADER_SIZE,
    MIN_SIZE_FIELD,
    PREFIX,
    Record,
    RecordError,
    iter_records,
)

__all__ = ["Segment", "SegmentEnd", "index_path_for", "log_path_for", "parse_base_offset"]

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
#: Smallest and largest pread of the read path: start small so that reading a handful of
#: records does not copy a megabyte, grow for long sequential reads.
READ_CHUNK_MIN = 16 * 1024
READ_CHUNK_MAX = 1024 * 1024


def log_path_for(directory: Path, base_offset: int) -> Path:
    """Path of the ``.log`` file of the segment starting at ``base_offset``."""
    return directory / f"{base_offset:020d}{LOG_SUFFIX}"


def index_path_for(directory: Path, base_offset: int) -> Path:
    """Path of the ``.index`` file of the segment starting at ``base_offset``."""
    return directory / f"{base_offset:020d}{INDEX_SUFFIX}"


def parse_base_offset(name: str, suffix: str = LOG_SUFFIX) -> int | None:
    """Base offset encoded in a segment file name, or None if ``name`` is not one."""
    stem = name[: -len(suffix)] if name.endswith(suffix) else ""
    if len(stem) == 20 and stem.isdigit():
        return int(stem)
    return None


@dataclass(frozen=True, slots=True)
class SegmentEnd:
    """Where a segment ended at one moment: what :meth:`Segment.cut_back` restores."""

    size: int
    next_offset: int
    index_entries: int
    next_index_pos: int
    first_timestamp: int | None
    last_timestamp: int | None


class _StaleIndexError(Exception):
    """An index entry points at a record with another offset: rebuild the index."""


class Segment:
    """A ``.log`` + ``.index`` pair starting at :attr:`base_offset`.

    ``size`` and ``next_offset`` describe the valid records (for a reader of a live log, the
    file may already hold more bytes than that). The log file descriptor of a sealed segment
    and its index are opened/loaded lazily, on the first read.
    """

    __slots__ = (
        "_index",
        "_next_index_pos",
        "base_offset",
        "fd",
        "first_timestamp",
        "index_interval",
        "index_path",
        "last_timestamp",
        "next_offset",
        "path",
        "persist_index",
        "sealed",
        "size",
        "writable",
    )

    def __init__(
        self,
        directory: Path,
        base_offset: int,
        *,
        index_interval: int,
        writable: bool,
    ) -> None:
        self.base_offset = base_offset
        self.path = log_path_for(directory, base_offset)
        self.index_path = index_path_for(directory, base_offset)
        self.index_interval = index_interval
        self.writable = writable
        # Readers never write index files; writers keep them in step with the log.
        self.persist_index = writable
        self.fd: int | None = None
        self.size = 0
        self.next_offset = base_offset
        self.sealed = False
        self.first_timestamp: int | None = None
        self.last_timestamp: int | None = None
        self._index: OffsetIndex | None = None
        self._next_index_pos = index_interval

    # -- lifecycle ----------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, base_offset: int, *, index_interval: int) -> Segment:
        """Create a new, empty active segment (the caller fsyncs the directory)."""
        seg = cls(directory, base_offset, index_interval=index_interval, writable=True)
        # O_EXCL: a file by that name would mean two segments claim the same offsets.
        seg.fd = os.open(seg.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            seg._index = OffsetIndex(seg.index_path)
            seg._index.write_file()
            seg._index.open_for_append()
        except BaseException:
            seg.delete()  # a half-created segment would block the next try (O_EXCL)
            raise
        return seg

    def open_fd(self) -> int:
        """The log file descriptor, opened on first use.

        Raises :class:`NotFoundError` if the file is gone (deleted by the writer's retention
        while this process was reading an older listing).
        """
        if self.fd is None:
            flags = os.O_RDWR | os.O_APPEND if self.writable and not self.sealed else os.O_RDONLY
            try:
                self.fd = os.open(self.path, flags)
            except FileNotFoundError as exc:
                raise NotFoundError(f"segment {self.path.name} was deleted (retention)") from exc
        return self.fd

    def close_log_fd(self) -> None:
        """Close the log file descriptor only; :meth:`open_fd` reopens it on demand."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def close(self) -> None:
        """Close the file descriptors (in-memory state stays valid)."""
        if self._index is not None:
            self._index.close()
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def make_active(self) -> None:
        """Turn a segment found on disk into the active one: writable fd, index open to append."""
        self.sealed = False
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)
        self.open_fd()
        if self.persist_index:
            self.index.open_for_append()

    def seal(self) -> None:
        """Make this segment history: fsync the log and index, stop writing to them."""
        if self.sealed:
            return
        if self.fd is not None and self.writable:
            os.fsync(self.fd)
        if self._index is not None:
            self._index.sync()
            self._index.close()
        self.sealed = True

    def delete(self) -> None:
        """Close and unlink both files (the ``.log`` first: a lone ``.index`` is ignored)."""
        self.close()
        for path in (self.path, self.index_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # -- index --------------------------------------------------------------------------------

    @property
    def index(self) -> OffsetIndex:
        """The in-memory index, loaded (and completed if short) on first use."""
        if self._index is None:
            index, complete = OffsetIndex.load(self.index_path, self.size)
            self._index = index
            if not complete or not self._index_tail_ok():
                self.rebuild_index()
        return self._index

    def _index_tail_ok(self) -> bool:
        last = self._index.last() if self._index is not None else None
        return last is None or self.check_index_entry(*last)

    def check_index_entry(self, relative_offset: int, position: int) -> bool:
        """Whether a record with offset ``base + relative_offset`` starts at ``position``."""
        if position + HEADER_SIZE > self.size:
            return False
        header = os.pread(self.open_fd(), HEADER_SIZE, position)
        if len(header) < HEADER_SIZE:
            return False
        return bool(HEADER.unpack(header)[2] == self.base_offset + relative_offset)

    def rebuild_index(self) -> None:
        """Rebuild the index by scanning the whole log (and replace the file if writing).

        A bad record ends the index there: records before it stay readable, and a read past
        it scans into the damage and reports it.
        """
        index = OffsetIndex(self.index_path)
        next_pos = self.index_interval
        base = self.base_offset
        with contextlib.suppress(RecordError):
            for pos, _end, rec in iter_records(
                self.open_fd(), 0, self.size, expected_offset=base, payloads=False
            ):
                if pos >= next_pos:
                    index.add(rec.offset - base, pos)
                    next_pos = pos + self.index_interval
        if self._index is not None:
            self._index.close()
        self._index = index
        self._next_index_pos = next_pos
        if self.persist_index:
            index.write_file()
            if not self.sealed:
                index.open_for_append()

    def adopt_index(self, index: OffsetIndex, next_index_pos: int) -> None:
        """Install an index built during recovery; write it out if this process writes."""
        if self._index is not None:
            self._index.close()
        self._index = index
        self._next_index_pos = next_index_pos
        if self.persist_index:
            index.write_file()
            if not self.sealed:
                index.open_for_append()

    def note_scanned(self, entries: array[int], next_index_pos: int) -> None:
        """Add index entries found while scanning records another process appended.

        In memory only: the process that appended them wrote them to the file.
        """
        self.index.extend(entries, to_file=False)
        self._next_index_pos = next_index_pos

    def start_following(self) -> None:
        """A segment another process created: start with an empty in-memory index.

        Its index file belongs to the process appending to it; it is never rewritten here.
        """
        if self._index is not None:
            self._index.close()
        self._index = OffsetIndex(self.index_path)
        self._next_index_pos = self.index_interval

    def resume_index_file(self) -> None:
        """Before this process appends: cut the index file to the in-memory entries, open it.

        Entries past them were written by a process that died before it published its batch.
        """
        index = self.index
        index.close()
        index.truncate_file(len(index))
        index.open_for_append()

    @property
    def index_appending(self) -> bool:
        """Whether this process's appends also go to the index file."""
        return self._index is not None and self._index.appending

    @property
    def next_index_pos(self) -> int:
        """Byte position from which the next record gets an index entry."""
        return self._next_index_pos

    # -- writing ------------------------------------------------------------------------------

    def append(self, records: Sequence[tuple[int, bytes]], start: int, limit_bytes: int) -> int:
        """Write ``records[start:]`` until the segment would exceed ``limit_bytes``.

        At least one record is written when the segment is empty, so an oversized record
        still finds a home. Everything goes out in one ``os.write``. Returns the index in
        ``records`` of the first record not written.
        """
        fd = self.fd
        assert fd is not None
        assert not self.sealed
        crc32 = zlib.crc32
        pack_head = CRC_HEAD.pack
        pack_prefix = PREFIX.pack
        parts: list[bytes] = []
        add = parts.append
        entries: array[int] = array("I")
        base = self.base_offset
        offset = self.next_offset
        pos = self.size
        next_index_pos = self._next_index_pos
        interval = self.index_interval
        end = len(records)
        i = start
        # The hot loop: two struct packs, two crc32 calls and three list appends per record.
        while i < end:
            timestamp, payload = records[i]
            record_len = HEADER_SIZE + len(payload)
            if pos + record_len > limit_bytes and pos > 0:
                break
            head = pack_head(offset, timestamp, 0)
            add(pack_prefix(MIN_SIZE_FIELD + len(payload), crc32(payload, crc32(head))))
            add(head)
            add(payload)
            if pos >= next_index_pos:
                entries.append(offset - base)
                entries.append(pos)
                next_index_pos = pos + interval
            pos += record_len
            offset += 1
            i += 1
        if i == start:
            return i
        data = b"".join(parts)
        try:
            _write_all(fd, data)
        except BaseException:
            # Undo a partial write so that the file and the in-memory state agree again.
            os.ftruncate(fd, self.size)
            raise
        if self.first_timestamp is None:
            self.first_timestamp = records[start][0]
        self.last_timestamp = records[i - 1][0]
        if entries:
            self.index.extend(entries)
            self._next_index_pos = next_index_pos
        self.size = pos
        self.next_offset = offset
        return i

    def end(self) -> SegmentEnd:
        """The current end of the valid records, for a later :meth:`cut_back`."""
        return SegmentEnd(
            self.size,
            self.next_offset,
            len(self.index),
            self._next_index_pos,
            self.first_timestamp,
            self.last_timestamp,
        )

    def cut_back(self, end: SegmentEnd) -> None:
        """Undo every append since ``end`` was taken, in memory and on disk; write again.

        Only shrinks files (truncation needs no free space), so it works on a full disk.
        A segment sealed meanwhile (by a roll) becomes the active one again.
        """
        if self.sealed:
            self.close_log_fd()
            self.sealed = False
        os.truncate(self.path, end.size)
        index = self.index
        index.truncate(end.index_entries)
        if self.persist_index:
            index.truncate_file(end.index_entries)
            index.open_for_append()
        self.size = end.size
        self.next_offset = end.next_offset
        self._next_index_pos = end.next_index_pos
        self.first_timestamp = end.first_timestamp
        self.last_timestamp = end.last_timestamp
        self.open_fd()

    def load_last_timestamp(self) -> None:
        """Fill in :attr:`last_timestamp` by scanning from the last index entry."""
        if self.size == 0:
            return
        _rel, pos = self.index.lookup(self.next_offset - self.base_offset)
        with contextlib.suppress(RecordError):
            for _pos, _end, rec in iter_records(self.open_fd(), pos, self.size, payloads=False):
                self.last_timestamp = rec.timestamp

    def truncate(self, position: int) -> None:
        """Cut the log file at ``position`` (recovery of a torn tail)."""
        os.truncate(self.path, position)
        self.size = position

    def sync(self) -> None:
        """fdatasync the log file."""
        if self.fd is not None:
            os.fdatasync(self.fd)

    # -- reading ------------------------------------------------------------------------------

    def read_header(self, position: int) -> tuple[int, int, int] | None:
        """``(size field, offset, timestamp)`` of the record at ``position``, None past the end."""
        data = os.pread(self.open_fd(), HEADER_SIZE, position)
        if len(data) < HEADER_SIZE:
            return None
        size, _crc, offset, timestamp, _attributes = HEADER.unpack(data)
        return size, offset, timestamp

    def read(
        self,
        offset: int,
        out: list[Record],
        max_records: int,
        max_bytes: int,
    ) -> int:
        """Append records from ``offset`` on to ``out``; return the record bytes used.

        Stops at ``max_records`` records, before exceeding ``max_bytes`` (unless ``out`` is
        still empty: a reader always gets at least one record), or at the end of the segment.
        """
        try:
            return self._read(offset, out, max_records, max_bytes)
        except _StaleIndexError:
            self.rebuild_index()
            return self._read(offset, out, max_records, max_bytes)

    def _read(self, offset: int, out: list[Record], max_records: int, max_bytes: int) -> int:
        fd = self.open_fd()
        base = self.base_offset
        rel_offset, pos = self.index.lookup(offset - base)
        current = base + rel_offset
        end = self.size
        unpack_from = HEADER.unpack_from
        crc32 = zlib.crc32
        add = out.append
        # tuple.__new__ skips the NamedTuple's Python-level __new__: ~100 ns per record.
        new_record = tuple.__new__
        used = 0
        count = 0
        entry_pos = pos  # where the index sent us: a mismatch there means a stale index
        chunk = min(
            READ_CHUNK_MAX, max(READ_CHUNK_MIN, self.index_interval + min(max_bytes, 1 << 16))
        )
        buf = b""
        view = memoryview(buf)
        buf_pos = pos
        while pos < end and count < max_records:
            rel = pos - buf_pos
            if rel + HEADER_SIZE > len(buf):
                buf = os.pread(fd, min(chunk, end - pos), pos)
                view = memoryview(buf)
                buf_pos, rel = pos, 0
                chunk = min(chunk * 2, READ_CHUNK_MAX)
                if len(buf) < HEADER_SIZE:
                    raise CorruptLogError(
                        self.path, pos, "log file shorter than expected", offset=current
                    )
            size, crc, record_offset, timestamp, _attributes = unpack_from(buf, rel)
            record_len = 4 + size
            if size < MIN_SIZE_FIELD or pos + record_len > end:
                if pos == entry_pos and pos != 0:
                    raise _StaleIndexError
                raise CorruptLogError(self.path, pos, f"bad size field {size}", offset=current)
            if record_offset != current:
                if pos == entry_pos and pos != 0:
                    raise _StaleIndexError
                raise CorruptLogError(
                    self.path,
                    pos,
                    f"offset {record_offset} where {current} was expected",
                    offset=current,
                )
            if record_offset < offset:
                pos += record_len
                current += 1
                continue
            if used + record_len > max_bytes and (out or used):
                break
            if rel + record_len > len(buf):
                buf = os.pread(fd, min(max(chunk, record_len), end - pos), pos)
                view = memoryview(buf)
                buf_pos, rel = pos, 0
                chunk = min(chunk * 2, READ_CHUNK_MAX)
                if len(buf) < record_len:
                    raise CorruptLogError(
                        self.path, pos, "log file shorter than expected", offset=current
                    )
            actual = crc32(view[rel + CRC_START : rel + record_len])
            if actual != crc:
                raise CorruptLogError(
                    self.path,
                    pos,
                    f"crc mismatch (stored {crc:#010x}, computed {actual:#010x})",
                    offset=current,
                )
            add(
                new_record(
                    Record, (record_offset, timestamp, buf[rel + HEADER_SIZE : rel + record_len])
                )
            )
            used += record_len
            pos += record_len
            current += 1
            count += 1
        if pos >= end and current < self.next_offset and count < max_records:
            # A sealed segment ends where the next one (or a recorded gap) starts.
            raise CorruptLogError(
                self.path,
                end,
                f"the segment ends at offset {current}, but the next segment starts at offset "
                f"{self.next_offset} and no gap is recorded for the offsets in between",
                offset=current,
            )
        return used


def _write_all(fd: int, data: bytes) -> None:
    # os.write on a regular file rarely writes short, but it may (signals, quotas): loop.
    written = os.write(fd, data)
    if written < len(data):
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]

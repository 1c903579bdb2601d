"""The segmented commit log: segment list, active segment, append, roll, read, recovery.

The on-disk format is specified in ``docs/log-format.md``. The log is synchronous and does
blocking file I/O; the broker calls :meth:`CommitLog.append` and :meth:`CommitLog.read` from its
event loop (they only touch the page cache) and runs :meth:`CommitLog.sync` (an ``fdatasync``)
in a worker thread.

Example::

    with CommitLog("data/log") as log:
        first = log.append([(timestamp_ms, b'{"topic": "a"}'), (timestamp_ms, b'{"topic": "b"}')])
        log.sync()                      # both records are durable now
        for record in log.read(first):
            print(record.offset, record.payload)
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import struct
import threading
import time
import zlib
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import filelock

from localbroker.errors import (
    BrokerStateError,
    ConfigurationError,
    CorruptLogError,
    LogLockedError,
    NotFoundError,
)
from localbroker.log.index import ENTRY_SIZE, OffsetIndex
from localbroker.log.record import HEADER, HEADER_SIZE, Record, RecordError, iter_records
from localbroker.log.segment import (
    INDEX_SUFFIX,
    Segment,
    SegmentEnd,
    index_path_for,
    log_path_for,
    parse_base_offset,
)

__all__ = [
    "CHECKPOINT_FILE",
    "LOCK_FILE",
    "Checkpoint",
    "CommitLog",
    "SegmentInfo",
    "VerifyReport",
    "read_checkpoint",
    "scan_segment",
    "verify",
]

logger = logging.getLogger("localbroker.log")

CHECKPOINT_FILE = "checkpoint"
LOCK_FILE = "writer.lock"
_CHECKPOINT = struct.Struct(">IQQQ")
_CHECKPOINT_BODY = struct.Struct(">QQQ")
#: sync() rewrites the checkpoint at most this often (seconds): it only bounds recovery work.
CHECKPOINT_INTERVAL = 1.0
#: How many sealed segments keep an open descriptor for reads (least recently read closed).
MAX_OPEN_SEALED = 64
#: Largest segment whose positions fit the index's u32 position column.
MAX_SEGMENT_BYTES = 2**32 - 1


# -- checkpoint ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Recovery point: every byte before ``position`` of segment ``segment_base`` was fsynced."""

    segment_base: int
    position: int
    next_offset: int

    def encode(self) -> bytes:
        """The 28-byte on-disk form (CRC first)."""
        body = _CHECKPOINT_BODY.pack(self.segment_base, self.position, self.next_offset)
        return struct.pack(">I", zlib.crc32(body)) + body


def read_checkpoint(directory: Path) -> Checkpoint | None:
    """The checkpoint of a log directory, or None when it is missing or unreadable."""
    path = directory / CHECKPOINT_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) != _CHECKPOINT.size:
        logger.warning("%s: ignoring checkpoint of %d bytes (expected 28)", path, len(data))
        return None
    crc, base, position, next_offset = _CHECKPOINT.unpack(data)
    if zlib.crc32(data[4:]) != crc:
        logger.warning("%s: ignoring checkpoint with a bad checksum", path)
        return None
    return Checkpoint(base, position, next_offset)


def _write_checkpoint(directory: Path, checkpoint: Checkpoint) -> None:
    # Not fsynced on purpose: it only names data that was fsynced before it was written, so
    # whichever version survives a crash is correct; a stale one only means a longer scan.
    tmp = directory / (CHECKPOINT_FILE + ".tmp")
    tmp.write_bytes(checkpoint.encode())
    os.replace(tmp, directory / CHECKPOINT_FILE)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- public value types -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """A snapshot of one segment, for retention, the CLI and the dashboard."""

    base_offset: int
    #: Offset after the segment's last record (== base_offset when empty).
    next_offset: int
    size_bytes: int
    #: The ``.log`` file.
    path: Path
    index_path: Path
    #: False only for the active (last) segment.
    sealed: bool
    #: Seconds since the epoch: the first record's timestamp, or the file's mtime when empty.
    created: float
    #: Milliseconds since the epoch of the first and last records, None when empty.
    first_timestamp: int | None
    last_timestamp: int | None

    @property
    def record_count(self) -> int:
        """Number of records in the segment."""
        return self.next_offset - self.base_offset


@dataclass(slots=True)
class VerifyReport:
    """What :func:`verify` found. ``problems`` name the file and byte position of each."""

    segments: int = 0
    records: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


# -- the log ------------------------------------------------------------------------------------


class CommitLog:
    """An append-only sequence of records split into segment files.

    One process appends (it holds ``writer.lock``); any number of processes may open the same
    directory with ``readonly=True`` and follow the writer with :meth:`refresh`.

    Thread safety: :meth:`sync` may run in a worker thread while the owning thread calls
    :meth:`append`, :meth:`read` and :meth:`roll`; everything else belongs to one thread.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        segment_bytes: int = 64 * 1024 * 1024,
        segment_max_age: float | None = None,
        index_interval_bytes: int = 4096,
        readonly: bool = False,
    ) -> None:
        if not 1 <= segment_bytes <= MAX_SEGMENT_BYTES:
            raise ConfigurationError(
                f"segment_bytes must be between 1 and {MAX_SEGMENT_BYTES}, got {segment_bytes}"
            )
        if segment_max_age is not None and not segment_max_age > 0:
            raise ConfigurationError(
                f"segment_max_age must be a positive number of seconds or None, "
                f"got {segment_max_age}"
            )
        if index_interval_bytes < 1:
            raise ConfigurationError(
                f"index_interval_bytes must be positive, got {index_interval_bytes}"
            )
        self._directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.segment_max_age = segment_max_age
        self.index_interval_bytes = index_interval_bytes
        self.readonly = readonly
        self._segments: list[Segment] = []
        self._bases: list[int] = []
        self._file_lock: filelock.BaseFileLock | None = None
        self._is_open = False
        # Guards the active segment's identity, its fd and (size, next_offset) as one unit, so
        # that sync() in a worker thread takes a consistent snapshot. Held only for in-memory
        # work and page-cache writes, never across an fdatasync of sync().
        self._lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        self._checkpoint_offset = -1
        self._last_checkpoint = 0.0
        self._durable_offset = 0
        self._dir_mtime = -1
        # Sealed segments with an open fd, least recently read first: a log with thousands of
        # segments must not hold thousands of descriptors.
        self._open_sealed: OrderedDict[int, Segment] = OrderedDict()

    # -- properties ---------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        """The log directory."""
        return self._directory

    @property
    def start_offset(self) -> int:
        """First offset still in the log (0 when empty)."""
        return self._segments[0].base_offset if self._segments else 0

    @property
    def next_offset(self) -> int:
        """Offset the next appended record gets (the end of the log)."""
        return self._segments[-1].next_offset if self._segments else 0

    @property
    def durable_offset(self) -> int:
        """Every record below this offset is known to be fsynced."""
        return self._durable_offset

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` was called and :meth:`close` was not."""
        return self._is_open

    # -- open / close -------------------------------------------------------------------------

    def open(self) -> CommitLog:
        """Open the directory: take the writer lock (unless readonly) and recover.

        Raises :class:`LogLockedError` when another writer holds the directory and
        :class:`CorruptLogError` when data before the checkpoint is damaged.
        """
        if self._is_open:
            return self
        if not self.readonly:
            self._directory.mkdir(parents=True, exist_ok=True)
            lock = filelock.FileLock(self._directory / LOCK_FILE, thread_local=False)
            try:
                lock.acquire(blocking=False)
            except filelock.Timeout:
                raise LogLockedError(self._directory) from None
            self._file_lock = lock
        try:
            self._recover()
        except BaseException:
            self._release()
            raise
        self._is_open = True
        return self

    def close(self) -> None:
        """Sync, write the checkpoint at the log end, release the lock. Idempotent."""
        if not self._is_open:
            return
        try:
            if not self.readonly:
                with self._lock:
                    active = self._segments[-1]
                    active.sync()
                    self._durable_offset = active.next_offset
                    self._store_checkpoint(
                        Checkpoint(active.base_offset, active.size, active.next_offset),
                        force=True,
                    )
        finally:
            self._is_open = False
            self._release()

    def _release(self) -> None:
        with self._lock:
            for seg in self._segments:
                seg.close()
            self._segments = []
            self._bases = []
            self._open_sealed.clear()
        if self._file_lock is not None:
            self._file_lock.release()
            self._file_lock = None

    def __enter__(self) -> CommitLog:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _require_open(self) -> None:
        if not self._is_open:
            raise BrokerStateError(f"commit log {self._directory} is not open")

    def _require_writable(self) -> None:
        self._require_open()
        if self.readonly:
            raise BrokerStateError(f"commit log {self._directory} was opened read-only")

    # -- recovery -----------------------------------------------------------------------------

    def _list_bases(self) -> list[int]:
        bases: list[int] = []
        with os.scandir(self._directory) as entries:
            for entry in entries:
                base = parse_base_offset(entry.name)
                if base is not None:
                    bases.append(base)
        bases.sort()
        return bases

    def _cleanup(self, bases: list[int]) -> None:
        # Leftovers of interrupted replacements and index files whose log was deleted.
        live = set(bases)
        with os.scandir(self._directory) as entries:
            for entry in entries:
                name = entry.name
                index_base = parse_base_offset(name, INDEX_SUFFIX)
                if name.endswith(".tmp") or (index_base is not None and index_base not in live):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    def _recover(self) -> None:
        directory = self._directory
        writable = not self.readonly
        if not directory.is_dir():
            # A reader may start before the writer has created anything: an empty log that
            # refresh() fills in later.
            self._segments, self._bases = [], []
            return
        self._dir_mtime = os.stat(directory).st_mtime_ns
        # The checkpoint before the listing: a live writer only moves it forward, to segments
        # that exist by then.
        checkpoint = read_checkpoint(directory)
        bases = self._list_bases()
        if writable:
            self._cleanup(bases)
        interval = self.index_interval_bytes
        if not bases:
            if checkpoint is not None and checkpoint.next_offset > 0:
                raise CorruptLogError(
                    log_path_for(directory, checkpoint.segment_base),
                    checkpoint.position,
                    "the checkpoint names this segment but no segment file exists",
                )
            if writable:
                seg = Segment.create(directory, 0, index_interval=interval)
                _fsync_dir(directory)
                self._segments, self._bases = [seg], [0]
                self._store_checkpoint(Checkpoint(0, 0, 0), force=True)
            return

        segments = [
            Segment(directory, b, index_interval=interval, writable=writable) for b in bases
        ]
        for seg, following in itertools.pairwise(segments):
            seg.sealed = True
            seg.size = seg.path.stat().st_size
            seg.next_offset = following.base_offset

        # Where does the trusted part end?
        if checkpoint is not None and checkpoint.segment_base in bases:
            k = bases.index(checkpoint.segment_base)
            ck_pos, ck_next = checkpoint.position, checkpoint.next_offset
        elif writable and checkpoint is not None and checkpoint.segment_base > bases[0]:
            raise CorruptLogError(
                log_path_for(directory, checkpoint.segment_base),
                checkpoint.position,
                "the checkpoint names this segment but the file is missing",
            )
        else:
            # No usable checkpoint: sealed segments were fsynced when they were rolled, so
            # only the last one needs checking.
            k = len(segments) - 1
            ck_pos, ck_next = 0, segments[k].base_offset

        dropped = 0
        drop_from: tuple[Path, int] | None = None
        keep = len(segments)
        for i in range(k, len(segments)):
            seg = segments[i]
            expected = segments[i - 1].next_offset if i > k else ck_next
            if i > k and seg.base_offset != expected:
                # A segment that does not continue the log cannot be trusted past a hole.
                keep = i
                drop_from = drop_from or (seg.path, 0)
                break
            valid_end, error = self._recover_segment(
                seg, ck_pos if i == k else 0, ck_next if i == k else seg.base_offset
            )
            file_size = seg.path.stat().st_size
            if error is not None:
                dropped += file_size - valid_end
                drop_from = (seg.path, valid_end)
                if writable:
                    seg.truncate(valid_end)
                keep = i + 1
                break
        for seg in segments[keep:]:
            dropped += seg.path.stat().st_size
            if writable:
                seg.delete()
        if drop_from is not None and (dropped or keep < len(segments)):
            logger.warning(
                "%s: dropped %d bytes of incomplete or corrupt records after the checkpoint "
                "(from %s at byte %d, %d later segment(s) removed); the log now ends at offset %d",
                directory,
                dropped,
                drop_from[0].name,
                drop_from[1],
                len(segments) - keep,
                segments[keep - 1].next_offset,
            )
        segments = segments[:keep]
        active = segments[-1]
        active.sealed = False
        self._segments = segments
        self._bases = [s.base_offset for s in segments]
        self._close_idle_fds()
        if not writable:
            self._durable_offset = ck_next
            return
        active.make_active()
        if keep < len(bases):
            _fsync_dir(directory)
        if (active.base_offset, active.size) != (segments[k].base_offset, ck_pos):
            # Make what recovery accepted durable, so that the checkpoint can move to the end
            # and the next open has nothing to scan.
            active.sync()
        self._durable_offset = active.next_offset
        self._store_checkpoint(
            Checkpoint(active.base_offset, active.size, active.next_offset), force=True
        )

    def _recover_segment(
        self, seg: Segment, ck_pos: int, ck_next: int
    ) -> tuple[int, RecordError | None]:
        """Check ``seg`` from (about) ``ck_pos`` to its end; set its size, offsets and index.

        Returns the end of the valid records and the error that ended them, if any. Raises
        :class:`CorruptLogError` for a bad record before ``ck_pos``.
        """
        file_size = seg.path.stat().st_size
        if ck_pos > file_size:
            raise CorruptLogError(
                seg.path,
                ck_pos,
                f"the file has {file_size} bytes but the checkpoint says {ck_pos} were fsynced",
            )
        seg.size = file_size
        index, _complete = OffsetIndex.load(seg.index_path, file_size)
        # Keep the entries up to the checkpoint, if the last of them points where it should;
        # the scan below regenerates everything after it.
        index.truncate(index.count_at_or_before(ck_pos))
        last = index.last()
        if last is not None and not seg.check_index_entry(*last):
            index.truncate(0)
            last = None
        if last is not None and last[1] < ck_pos:
            start, expected = last[1], seg.base_offset + last[0]
            next_index_pos = last[1] + seg.index_interval
        elif last is not None:  # an entry exactly at the checkpoint position
            start, expected = ck_pos, ck_next
            next_index_pos = last[1] + seg.index_interval
        elif ck_pos == 0:
            start, expected, next_index_pos = 0, ck_next, seg.index_interval
        else:
            start, expected, next_index_pos = 0, seg.base_offset, seg.index_interval

        entries: array[int] = array("I")
        base = seg.base_offset
        interval = seg.index_interval
        valid_end = start
        next_offset = expected
        last_ts: int | None = None
        first_ts: int | None = None
        error: RecordError | None = None
        at_boundary = start == ck_pos
        fd = seg.open_fd()
        try:
            for pos, end, rec in iter_records(
                fd, start, file_size, expected_offset=expected, payloads=False
            ):
                if pos == 0:
                    first_ts = rec.timestamp
                if pos >= next_index_pos:
                    entries.append(rec.offset - base)
                    entries.append(pos)
                    next_index_pos = pos + interval
                if pos < ck_pos < end:
                    raise CorruptLogError(
                        seg.path, pos, f"the checkpoint position {ck_pos} is inside this record"
                    )
                if end == ck_pos:
                    at_boundary = True
                    if rec.offset + 1 != ck_next:
                        raise CorruptLogError(
                            seg.path,
                            pos,
                            f"record has offset {rec.offset} but the checkpoint says the next "
                            f"offset is {ck_next}",
                        )
                valid_end, next_offset, last_ts = end, rec.offset + 1, rec.timestamp
        except RecordError as exc:
            if exc.position < ck_pos:
                raise CorruptLogError(seg.path, exc.position, exc.reason) from None
            error = exc
        if not at_boundary:
            raise CorruptLogError(
                seg.path, ck_pos, "the checkpoint position is not at a record boundary"
            )
        index.extend(entries)
        seg.size = valid_end
        seg.next_offset = next_offset
        seg.adopt_index(index, next_index_pos)
        if valid_end > 0:
            seg.first_timestamp = first_ts
            if first_ts is None:
                header = seg.read_header(0)
                seg.first_timestamp = header[2] if header else None
            seg.last_timestamp = last_ts
            if last_ts is None:
                _load_last_timestamp(seg)
        return valid_end, error

    # -- checkpoint ---------------------------------------------------------------------------

    def _store_checkpoint(
        self, checkpoint: Checkpoint, *, force: bool = False, backwards: bool = False
    ) -> None:
        with self._checkpoint_lock:
            # Never move the checkpoint backwards (a slow sync() racing a roll()), except to
            # undo a failed append.
            if checkpoint.next_offset < self._checkpoint_offset and not backwards:
                return
            if checkpoint.next_offset == self._checkpoint_offset and not force:
                return
            _write_checkpoint(self._directory, checkpoint)
            self._checkpoint_offset = checkpoint.next_offset
            self._last_checkpoint = time.monotonic()

    # -- writing ------------------------------------------------------------------------------

    def append(self, records: Sequence[tuple[int, bytes]]) -> int:
        """Append ``(timestamp_ms, payload)`` records; return the offset of the first one.

        Offsets are consecutive. The records reach the page cache (one ``os.write`` per segment
        touched), not the disk: call :meth:`sync` for durability. Rolls to a new segment first
        when the active one is too old, and whenever the next record would push a non-empty
        segment past ``segment_bytes``.

        All or nothing: if anything fails (a full disk after a roll included), the log is cut
        back to where it was before the call, segments the call created are removed, and the
        error is raised; the log stays usable.
        """
        self._require_writable()
        with self._lock:
            active = self._segments[-1]
            first = active.next_offset
            if not records:
                return first
            count, end, durable = len(self._segments), active.end(), self._durable_offset
            try:
                if (
                    self.segment_max_age is not None
                    and active.size > 0
                    and active.first_timestamp is not None
                    and time.time() * 1000 - active.first_timestamp > self.segment_max_age * 1000
                ):
                    self._roll_locked()
                limit = self.segment_bytes
                done = self._segments[-1].append(records, 0, limit)
                while done < len(records):
                    self._roll_locked()
                    done = self._segments[-1].append(records, done, limit)
            except BaseException:
                self._cut_back_locked(count, end, durable)
                raise
            return first

    def _cut_back_locked(self, count: int, end: SegmentEnd, durable: int) -> None:
        """Undo a failed append: drop the segments it created, cut the one it started in."""
        created = self._segments[count:]
        del self._segments[count:]
        del self._bases[count:]
        for seg in created:
            self._open_sealed.pop(seg.base_offset, None)
            seg.delete()
        active = self._segments[-1]
        self._open_sealed.pop(active.base_offset, None)
        active.cut_back(end)
        if created:
            _fsync_dir(self._directory)
            # A roll moved the checkpoint to a segment that is gone now; everything before
            # ``end`` was fsynced by that roll (seal), so the checkpoint can name it exactly.
            self._durable_offset = end.next_offset
            self._store_checkpoint(
                Checkpoint(active.base_offset, end.size, end.next_offset), backwards=True
            )
        else:
            self._durable_offset = durable

    def roll(self) -> None:
        """Seal the active segment (fsync it, finish its index) and start a new one.

        Does nothing when the active segment is empty.
        """
        self._require_writable()
        with self._lock:
            self._roll_locked()

    def roll_if_due(self) -> bool:
        """Roll when the active segment is older than ``segment_max_age``; True if it rolled.

        :meth:`append` checks the age itself; this is for an idle log, so that age-based
        retention can still delete its data. Call it from a timer.
        """
        self._require_writable()
        with self._lock:
            active = self._segments[-1]
            if (
                self.segment_max_age is None
                or active.size == 0
                or active.first_timestamp is None
                or time.time() * 1000 - active.first_timestamp <= self.segment_max_age * 1000
            ):
                return False
            self._roll_locked()
            return True

    def _roll_locked(self) -> None:
        old = self._segments[-1]
        if old.size == 0:
            return
        old.seal()
        # Reads reopen it read-only on demand (and an LRU bounds how many stay open).
        old.close_log_fd()
        new = Segment.create(
            self._directory, old.next_offset, index_interval=self.index_interval_bytes
        )
        _fsync_dir(self._directory)
        self._segments.append(new)
        self._bases.append(new.base_offset)
        self._durable_offset = max(self._durable_offset, new.base_offset)
        self._store_checkpoint(Checkpoint(new.base_offset, 0, new.base_offset))

    def sync(self) -> int:
        """fdatasync the active segment; return the offset below which everything is durable.

        Safe to call from a worker thread while the owning thread appends: the fdatasync runs
        on a duplicate of the active segment's descriptor, outside the lock, so appends are not
        held up by the disk. Earlier segments were fsynced when they were rolled.
        """
        if self.readonly:
            raise BrokerStateError(f"commit log {self._directory} was opened read-only")
        with self._lock:
            if not self._is_open or not self._segments:
                # Closed meanwhile (close() syncs everything itself).
                return self._durable_offset
            active = self._segments[-1]
            if active.next_offset <= self._durable_offset:
                return self._durable_offset
            assert active.fd is not None
            fd = os.dup(active.fd)
            snapshot = Checkpoint(active.base_offset, active.size, active.next_offset)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
        with self._lock:
            self._durable_offset = max(self._durable_offset, snapshot.next_offset)
        if time.monotonic() - self._last_checkpoint >= CHECKPOINT_INTERVAL:
            self._store_checkpoint(snapshot)
        return snapshot.next_offset

    # -- reading ------------------------------------------------------------------------------

    def read(self, offset: int, max_records: int = 1000, max_bytes: int = 1 << 20) -> list[Record]:
        """Records from ``offset`` on, at most ``max_records`` and about ``max_bytes`` of them.

        At least one record is returned when ``offset < next_offset``, however big it is;
        ``[]`` when ``offset == next_offset``. Raises :class:`NotFoundError` for an offset
        before :attr:`start_offset` (deleted by retention) or after :attr:`next_offset`, and
        :class:`CorruptLogError` for a record that fails its checksum.
        """
        self._require_open()
        segments = self._segments
        end = segments[-1].next_offset if segments else 0
        if offset == end:
            return []
        start = segments[0].base_offset if segments else 0
        if offset < start or offset > end:
            raise NotFoundError(
                f"offset {offset} is not in the log {self._directory} "
                f"(it holds offsets {start} to {end - 1})"
            )
        out: list[Record] = []
        i = bisect_right(self._bases, offset) - 1
        used = 0
        while i < len(segments) and len(out) < max_records and (used < max_bytes or not out):
            seg = segments[i]
            if offset < seg.next_offset:
                if seg.sealed:
                    self._note_sealed_read(seg)
                used += seg.read(offset, out, max_records - len(out), max_bytes - used)
                if out:
                    offset = out[-1].offset + 1
                if offset < seg.next_offset:
                    break  # stopped by a limit inside this segment
            i += 1
        return out

    def _note_sealed_read(self, seg: Segment) -> None:
        open_sealed = self._open_sealed
        if seg.base_offset in open_sealed:
            open_sealed.move_to_end(seg.base_offset)
            return
        open_sealed[seg.base_offset] = seg
        if len(open_sealed) > MAX_OPEN_SEALED:
            _base, coldest = open_sealed.popitem(last=False)
            coldest.close_log_fd()

    def refresh(self) -> None:
        """Readers: pick up what the writer appended, rolled or deleted since the last call.

        Cheap when nothing changed (an ``fstat`` and a ``stat``). Never exposes a partial
        record: a record is visible once all of its bytes are there and its checksum matches.
        """
        self._require_open()
        if not self.readonly:
            return
        directory = self._directory
        try:
            mtime = os.stat(directory).st_mtime_ns
        except FileNotFoundError:
            return
        if not self._segments:
            self._recover()
            return
        if mtime != self._dir_mtime:
            self._dir_mtime = mtime
            present = set(self._list_bases())
            if self._segments[-1].base_offset not in present:
                # Retention overtook this reader entirely: start over from what is there now.
                with self._lock:
                    for seg in self._segments:
                        seg.close()
                    self._open_sealed.clear()
                self._recover()
                return
            self._forget_deleted(present)
        while True:
            last = self._segments[-1]
            grew = self._follow(last)
            following = log_path_for(directory, last.next_offset)
            # An empty segment is never rolled (and its successor's name would be its own).
            if last.next_offset > last.base_offset and following.exists():
                # The writer rolled: the old segment is complete now. Take its last bytes.
                self._follow(last)
                if last.size < os.fstat(last.open_fd()).st_size:
                    raise CorruptLogError(
                        last.path, last.size, "bad record in a segment that was rolled"
                    )
                last.sealed = True
                seg = Segment(
                    directory,
                    last.next_offset,
                    index_interval=self.index_interval_bytes,
                    writable=False,
                )
                seg.adopt_index(OffsetIndex(seg.index_path), seg.index_interval)
                self._segments.append(seg)
                self._bases.append(seg.base_offset)
                continue
            if not grew:
                return

    def _follow(self, seg: Segment) -> bool:
        """Parse the complete records appended to ``seg`` since the last look."""
        try:
            fd = seg.open_fd()
        except NotFoundError:
            return False
        size = os.fstat(fd).st_size
        if size <= seg.size:
            return False
        entries: array[int] = array("I")
        next_index_pos = seg.next_index_pos
        base = seg.base_offset
        interval = seg.index_interval
        start_size = seg.size
        with contextlib.suppress(RecordError):
            # A bad or short record at the tail is a write in progress: look again next time.
            for pos, end, rec in iter_records(
                fd, seg.size, size, expected_offset=seg.next_offset, payloads=False
            ):
                if pos >= next_index_pos:
                    entries.append(rec.offset - base)
                    entries.append(pos)
                    next_index_pos = pos + interval
                if seg.first_timestamp is None:
                    seg.first_timestamp = rec.timestamp
                seg.last_timestamp = rec.timestamp
                seg.size = end
                seg.next_offset = rec.offset + 1
        seg.note_scanned(entries, next_index_pos)
        return seg.size > start_size

    def _forget_deleted(self, present: set[int]) -> None:
        while len(self._segments) > 1 and self._segments[0].base_offset not in present:
            seg = self._segments.pop(0)
            self._bases.pop(0)
            self._open_sealed.pop(seg.base_offset, None)
            seg.close()

    # -- segments and retention ---------------------------------------------------------------

    def segments(self) -> list[SegmentInfo]:
        """A snapshot of every segment, oldest first."""
        self._require_open()
        infos = [_info(seg) for seg in self._segments]
        self._close_idle_fds()
        return infos

    def _close_idle_fds(self) -> None:
        # Descriptors opened for a one-off look (timestamps, recovery) are not worth keeping.
        for seg in self._segments:
            if seg.sealed and seg.fd is not None and seg.base_offset not in self._open_sealed:
                seg.close_log_fd()

    def delete_segments_before(self, offset: int) -> list[SegmentInfo]:
        """Retention: delete the sealed segments whose records are all below ``offset``.

        The active segment is never deleted. Returns what was deleted, oldest first.
        """
        self._require_writable()
        deleted: list[SegmentInfo] = []
        with self._lock:
            while len(self._segments) > 1 and self._segments[0].next_offset <= offset:
                deleted.append(self._delete_first_locked())
        if deleted:
            # So that a crash cannot bring back an old segment next to a gap.
            _fsync_dir(self._directory)
        return deleted

    def delete_segment(self, base_offset: int) -> SegmentInfo:
        """Delete the oldest segment, named by its base offset (a hole in the middle is refused).

        Raises :class:`NotFoundError` if there is no such segment and
        :class:`BrokerStateError` if it is not the oldest or is the active one.
        """
        self._require_writable()
        with self._lock:
            if base_offset not in self._bases:
                raise NotFoundError(f"no segment with base offset {base_offset}")
            if len(self._segments) == 1 or self._segments[-1].base_offset == base_offset:
                raise BrokerStateError("the active segment cannot be deleted")
            if self._segments[0].base_offset != base_offset:
                raise BrokerStateError(
                    f"segment {base_offset} is not the oldest ({self._segments[0].base_offset}); "
                    "deleting it would leave a hole in the log"
                )
            info = self._delete_first_locked()
        _fsync_dir(self._directory)
        return info

    def _delete_first_locked(self) -> SegmentInfo:
        seg = self._segments.pop(0)
        self._bases.pop(0)
        self._open_sealed.pop(seg.base_offset, None)
        info = _info(seg)
        seg.delete()
        return info


def _load_last_timestamp(seg: Segment) -> None:
    """Fill in ``seg.last_timestamp`` by scanning from its last index entry."""
    if seg.size == 0:
        return
    _rel, pos = seg.index.lookup(seg.next_offset - seg.base_offset)
    with contextlib.suppress(RecordError):
        for _pos, _end, rec in iter_records(seg.open_fd(), pos, seg.size, payloads=False):
            seg.last_timestamp = rec.timestamp


def _info(seg: Segment) -> SegmentInfo:
    if seg.size > 0 and seg.first_timestamp is None:
        with contextlib.suppress(NotFoundError):
            header = seg.read_header(0)
            seg.first_timestamp = header[2] if header else None
    if seg.size > 0 and seg.last_timestamp is None:
        with contextlib.suppress(NotFoundError, CorruptLogError):
            _load_last_timestamp(seg)
    if seg.first_timestamp is not None:
        created = seg.first_timestamp / 1000
    else:
        try:
            created = seg.path.stat().st_mtime
        except FileNotFoundError:
            created = 0.0
    return SegmentInfo(
        base_offset=seg.base_offset,
        next_offset=seg.next_offset,
        size_bytes=seg.size,
        path=seg.path,
        index_path=seg.index_path,
        sealed=seg.sealed,
        created=created,
        first_timestamp=seg.first_timestamp,
        last_timestamp=seg.last_timestamp,
    )


# -- standalone readers -------------------------------------------------------------------------


def scan_segment(path: Path | str) -> Iterator[Record]:
    """Iterate the records of one ``.log`` file on its own (e.g. one downloaded from an archive).

    Offsets must start at the base offset in the file name (when it is a segment name) and
    continue one by one. Raises :class:`CorruptLogError` on a bad or truncated record; stops
    cleanly at the end of the file.
    """
    path = Path(path)
    expected = parse_base_offset(path.name)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        try:
            for _pos, _end, rec in iter_records(fd, 0, size, expected_offset=expected):
                yield rec
        except RecordError as exc:
            raise CorruptLogError(path, exc.position, exc.reason) from None
    finally:
        os.close(fd)


def verify(directory: Path | str) -> VerifyReport:
    """Check every record of every segment of a log directory, without changing anything.

    Checks framing and CRCs, that offsets are contiguous within and across segments, and that
    every index entry points at the record it names. Each problem names the file and the byte
    position. Safe to run next to a live writer, though its last record may be reported as
    incomplete if it is being written.
    """
    directory = Path(directory)
    report = VerifyReport()
    if not directory.is_dir():
        report.problems.append(f"{directory}: not a directory")
        return report
    bases = sorted(
        b for b in (parse_base_offset(name) for name in os.listdir(directory)) if b is not None
    )
    expected: int | None = None
    for base in bases:
        path = log_path_for(directory, base)
        report.segments += 1
        if expected is not None and base != expected:
            report.problems.append(
                f"{path.name}: base offset {base} does not continue the previous segment, "
                f"which ends at offset {expected}"
            )
        positions: dict[int, int] = {}  # offset -> position, only for offsets in the index
        index = _read_index_entries(index_path_for(directory, base), report)
        wanted = {base + rel for rel, _pos in index}
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            report.problems.append(f"{path.name}: disappeared while verifying")
            continue
        try:
            size = os.fstat(fd).st_size
            next_offset, scanned_to = _verify_records(
                fd, path, base, size, wanted, positions, report
            )
            report.bytes += size
        finally:
            os.close(fd)
        for i, (rel, pos) in enumerate(index):
            if pos < scanned_to and positions.get(base + rel) != pos:
                report.problems.append(
                    f"{index_path_for(directory, base).name}: entry {i} (byte {i * ENTRY_SIZE}) "
                    f"says offset {base + rel} is at byte {pos} of {path.name}, but it is not"
                )
        # After a segment we could not read to its end, its successor's base is the best guess.
        expected = next_offset if scanned_to == size else None
    checkpoint = read_checkpoint(directory)
    if checkpoint is not None and bases:
        path = log_path_for(directory, checkpoint.segment_base)
        if checkpoint.segment_base in bases and checkpoint.position > path.stat().st_size:
            report.problems.append(
                f"{CHECKPOINT_FILE}: position {checkpoint.position} is past the end of {path.name}"
            )
        elif checkpoint.segment_base not in bases and checkpoint.segment_base > bases[0]:
            report.problems.append(f"{CHECKPOINT_FILE}: names missing segment {path.name}")
    return report


def _verify_records(
    fd: int,
    path: Path,
    base: int,
    size: int,
    wanted: set[int],
    positions: dict[int, int],
    report: VerifyReport,
) -> tuple[int, int]:
    """Check every record of one segment; return its next offset and how far it was readable.

    A record that fails its CRC but whose header still frames it (the expected offset, a size
    that fits) is reported and stepped over, so that one flipped bit yields one problem.
    """
    start, expected = 0, base
    while True:
        try:
            for pos, _end, rec in iter_records(
                fd, start, size, expected_offset=expected, payloads=False
            ):
                report.records += 1
                if rec.offset in wanted:
                    positions[rec.offset] = pos
                expected = rec.offset + 1
            return expected, size
        except RecordError as exc:
            report.problems.append(f"{path.name}: byte {exc.position}: {exc.reason}")
            header = os.pread(fd, HEADER_SIZE, exc.position)
            if exc.incomplete or len(header) < HEADER_SIZE:
                return expected, exc.position
            size_field, _crc, offset, _ts, _attributes = HEADER.unpack(header)
            end = exc.position + 4 + size_field
            if offset != expected or size_field < HEADER_SIZE - 4 or end > size:
                return expected, exc.position
            report.records += 1
            start, expected = end, expected + 1


def _read_index_entries(path: Path, report: VerifyReport) -> list[tuple[int, int]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []  # a cache; missing is allowed
    if len(data) % ENTRY_SIZE:
        report.problems.append(
            f"{path.name}: {len(data)} bytes is not a whole number of 8-byte entries"
        )
    whole = len(data) - len(data) % ENTRY_SIZE
    return [struct.unpack_from(">II", data, i) for i in range(0, whole, ENTRY_SIZE)]

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
import logging
import os
import threading
import time
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from localbroker.errors import (
    BrokerStateError,
    ConfigurationError,
    CorruptLogError,
    LogLockedError,
    NotFoundError,
)
from localbroker.log.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    CheckpointFile,
    read_checkpoint,
)
from localbroker.log.files import fsync_dir
from localbroker.log.gaps import Gap, add_gaps, make_gap, read_gaps, reserved_end
from localbroker.log.index import OffsetIndex
from localbroker.log.record import Record, RecordError, iter_records
from localbroker.log.recovery import list_bases, recover
from localbroker.log.segment import Segment, SegmentEnd, index_path_for, log_path_for
from localbroker.log.sharing import (
    APPEND_LOCK_FILE,
    MEMBERS_LOCK_FILE,
    FileLock,
    TailFile,
    TailState,
    current_boot,
    read_tail,
)

__all__ = ["CHECKPOINT_FILE", "LOCK_FILE", "CommitLog", "SegmentInfo"]

logger = logging.getLogger("localbroker.log")

LOCK_FILE = MEMBERS_LOCK_FILE
#: How many sealed segments keep an open descriptor for reads (least recently read closed).
MAX_OPEN_SEALED = 64
#: Largest segment whose positions fit the index's u32 position column.
MAX_SEGMENT_BYTES = 2**32 - 1


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


# -- the log ------------------------------------------------------------------------------------


class CommitLog:
    """An append-only sequence of records split into segment files.

    Several processes may open the same directory for writing: each batch is appended under
    ``append.lock`` at the end the others published in ``tail`` (docs/log-format.md,
    "Several writers"), so offsets stay dense and totally ordered; :meth:`refresh` picks up
    what the others appended. ``exclusive=True`` refuses (:class:`LogLockedError`) while any
    other process has the log open for writing, and keeps others out. Any number of processes
    may open it with ``readonly=True`` and follow the writers with :meth:`refresh`.

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
        exclusive: bool = False,
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
        self.exclusive = exclusive
        self._segments: list[Segment] = []
        self._bases: list[int] = []
        # Held shared by every writer process (exclusive: alone); see localbroker.log.sharing.
        self._members = FileLock(self._directory / MEMBERS_LOCK_FILE)
        self._append_lock = FileLock(self._directory / APPEND_LOCK_FILE)
        # flock belongs to the open file, not the thread: threads of this process take this
        # first, so that only one of them at a time believes it holds append.lock.
        self._append_mutex = threading.Lock()
        self._tail_file = TailFile(self._directory)
        self._seen_seq = 0
        self.opened_alone = False
        """Whether :meth:`open` found no other writer (it then ran the full recovery scan)."""
        self._is_open = False
        # Guards the active segment's identity, its fd and (size, next_offset) as one unit, so
        # that sync() in a worker thread takes a consistent snapshot. Held only for in-memory
        # work and page-cache writes, never across an fdatasync of sync().
        self._lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        self._checkpoint_file = CheckpointFile(self._directory)
        self._checkpoint_offset = -1
        self._durable_point = Checkpoint(0, 0, 0)
        self._durable_offset = 0
        self._dir_mtime = -1
        self._gaps: list[Gap] = []
        # The next append starts at this offset at least: the end of the last recorded gap.
        self._reserved = 0
        self.damage: CorruptLogError | None = None
        """Readers: damage that ends the readable log early (None when there is none).

        A writer refuses to open a damaged log instead (:class:`CorruptLogError`)."""
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
    def gaps(self) -> list[Gap]:
        """Recorded gaps: offsets that hold no record because they were lost (oldest first)."""
        return list(self._gaps)

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` was called and :meth:`close` was not."""
        return self._is_open

    # -- open / close -------------------------------------------------------------------------

    def open(self) -> CommitLog:
        """Open the directory: join the writers (unless readonly) and recover.

        A writer that finds no other writer runs the full recovery scan; one that joins
        others trusts the published tail and only cuts what a dead writer left past it.
        Raises :class:`LogLockedError` when a process holds the directory for itself
        (``localbroker repair``, an ``exclusive`` opener), or, with ``exclusive=True``, when
        any other writer has it open. A writer raises :class:`CorruptLogError` for damage in
        the middle of the log (see :mod:`localbroker.log.recovery`); a reader opens, and reads
        up to it (:attr:`damage`).
        """
        if self._is_open:
            return self
        self._checkpoint_offset = -1  # the files may have changed since a previous open
        self._seen_seq = 0
        try:
            if self.readonly:
                self._recover()
            else:
                self._open_writer()
        except BaseException:
            self._release()
            raise
        self._is_open = True
        return self

    def _open_writer(self) -> None:
        self._directory.mkdir(parents=True, exist_ok=True)
        # Under append.lock no batch is half written, and no other opener recovers meanwhile
        # (the exclusive-to-shared conversion of the members lock below is not atomic).
        with self._append_mutex:
            self._append_lock.acquire()
            try:
                alone = self._members.acquire(blocking=False)
                if not alone and (
                    self.exclusive or not self._members.acquire(shared=True, blocking=False)
                ):
                    raise LogLockedError(self._directory)
                self.opened_alone = alone
                tail = self._tail_file.read()
                self._seen_seq = tail.seq if tail is not None else 0
                if tail is not None and tail.fresh:
                    self._discard_unpublished_files(tail)
                    # Alone: check everything from the checkpoint on, as after any crash.
                    # Joining live writers: what they published is trusted.
                    self._recover(trusted=None if alone else tail.end)
                else:
                    self._recover()
                with self._lock:
                    self._publish_locked()
                if alone and not self.exclusive:
                    self._members.acquire(shared=True)
            finally:
                self._append_lock.unlock()

    def _discard_unpublished_files(self, tail: TailState) -> None:
        """Cut what a writer that died mid-batch left past the published end (never acked).

        Segments after the published one, and the bytes and index entries of the published
        one past its published end. The caller holds append.lock.
        """
        directory = self._directory
        if not directory.is_dir():
            return
        end = tail.end
        discarded = False
        for base in list_bases(directory):
            if base > end.segment_base:
                logger.warning(
                    "%s: removing segment %d, created by a writer that died before it "
                    "published it (its records were never acknowledged)",
                    directory,
                    base,
                )
                for path in (log_path_for(directory, base), index_path_for(directory, base)):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                discarded = True
        path = log_path_for(directory, end.segment_base)
        with contextlib.suppress(FileNotFoundError):
            size = path.stat().st_size
            if size > end.position:
                _warn_unpublished(path, size, end.position, end.next_offset)
                os.truncate(path, end.position)
                index, _complete = OffsetIndex.load(
                    index_path_for(directory, end.segment_base), end.position
                )
                index.truncate_file(len(index))
                discarded = True
        if discarded:
            fsync_dir(directory)
            # The dead writer may have moved the checkpoint to what is gone now.
            if (ck := read_checkpoint(directory)) is None or ck.next_offset > end.next_offset:
                self._checkpoint_file.store(tail.durable)

    def close(self) -> None:
        """Sync, write the checkpoint at the log end, release the lock. Idempotent."""
        if not self._is_open:
            return
        try:
            if not self.readonly:
                with self._exclusive():
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
        self._checkpoint_file.close()
        self._tail_file.close()
        self._append_lock.release()
        self._members.release()

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

    def _recover(self, trusted: Checkpoint | None = None) -> None:
        directory = self._directory
        if not directory.is_dir():
            # A reader may start before the writer has created anything: an empty log that
            # refresh() fills in later.
            self._segments, self._bases = [], []
            return
        self._dir_mtime = os.stat(directory).st_mtime_ns
        recovered = recover(
            directory,
            writable=not self.readonly,
            index_interval=self.index_interval_bytes,
            trusted=trusted,
        )
        self._gaps = recovered.gaps
        self._reserved = reserved_end(recovered.gaps)
        self.damage = recovered.damage
        segments = recovered.segments
        self._durable_offset = recovered.durable_offset
        if not segments:
            self._segments, self._bases = [], []
            if not self.readonly:
                seg = Segment.create(directory, 0, index_interval=self.index_interval_bytes)
                fsync_dir(directory)
                self._segments, self._bases = [seg], [0]
                self._store_checkpoint(Checkpoint(0, 0, 0), force=True)
            return
        active = segments[-1]
        active.sealed = False
        self._segments = segments
        self._bases = [s.base_offset for s in segments]
        self._close_idle_fds()
        if self.readonly:
            return
        active.make_active()
        if recovered.unsynced or active.next_offset > recovered.durable_offset:
            # Make what recovery accepted durable, so that the checkpoint can move to the end
            # and the next open has nothing to scan.
            active.sync()
        self._durable_offset = active.next_offset
        self._store_checkpoint(
            Checkpoint(active.base_offset, active.size, active.next_offset), force=True
        )

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
            self._checkpoint_file.store(checkpoint)
            self._checkpoint_offset = checkpoint.next_offset
            self._durable_point = checkpoint

    # -- sharing with other writer processes --------------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold append.lock (and the in-process lock), caught up with the other writers.

        What the block changes is published in the tail state before the lock is released.
        """
        with self._append_mutex:
            self._append_lock.acquire()
            try:
                with self._lock:
                    self._catch_up_locked(owner=True)
                    yield
                    self._publish_locked()
            finally:
                self._append_lock.unlock()

    def _publish_locked(self) -> None:
        active = self._segments[-1]
        self._seen_seq += 1
        self._tail_file.write(
            TailState(
                self._seen_seq,
                current_boot(),
                Checkpoint(active.base_offset, active.size, active.next_offset),
                self._reserved,
                self._durable_point,
            )
        )

    def _catch_up_locked(self, *, owner: bool) -> bool:
        """Take in what other writers published since; ``owner``: we hold append.lock.

        The owner also cuts what a writer that died mid-batch left past the published end,
        before it appends there. False: a reload from the files is left to the owner.
        """
        tail = self._tail_file.read()
        if tail is not None and tail.seq != self._seen_seq:
            if not self._follow_tail(tail):
                if not owner:
                    return False  # left to the next holder of append.lock (see refresh)
                self._reload(tail)
            self._seen_seq = tail.seq
            if tail.durable.next_offset > self._checkpoint_offset:
                self._checkpoint_offset = tail.durable.next_offset
                self._durable_point = tail.durable
            self._durable_offset = max(self._durable_offset, tail.durable.next_offset)
        if owner:
            active = self._segments[-1]
            size = os.fstat(active.open_fd()).st_size
            if size > active.size:
                _warn_unpublished(active.path, size, active.size, active.next_offset)
                os.ftruncate(active.open_fd(), active.size)
                active.resume_index_file()
            elif size < active.size:
                raise CorruptLogError(
                    active.path,
                    size,
                    f"the file ends at byte {size} but the writers published {active.size} bytes",
                    offset=active.next_offset,
                )
            if not active.index_appending:
                active.resume_index_file()
        return True

    def _follow_tail(self, tail: TailState) -> bool:
        """Follow other writers' appends and rolls up to ``tail``; False: reload instead."""
        directory = self._directory
        end = tail.end
        if tail.reserved != self._reserved:
            self._gaps = read_gaps(directory)
            self._reserved = tail.reserved
        mtime = os.stat(directory).st_mtime_ns
        if mtime != self._dir_mtime:
            self._dir_mtime = mtime
            present = set(list_bases(directory))
            if self._segments[-1].base_offset not in present:
                return False
            self._forget_deleted(present)
        active = self._segments[-1]
        if active.base_offset > end.segment_base:
            return False
        if active.base_offset < end.segment_base:
            bases = [b for b in list_bases(directory) if active.base_offset < b <= end.segment_base]
            if not bases or bases[-1] != end.segment_base:
                return False
            # Another process rolled past it: it is complete (and fsynced) on disk.
            self._follow(active, strict=True)
            active.close()
            active.sealed = True
            for base in bases:
                seg = Segment(
                    directory,
                    base,
                    index_interval=self.index_interval_bytes,
                    writable=not self.readonly,
                )
                seg.start_following()
                self._segments.append(seg)
                self._bases.append(base)
                if base != end.segment_base:
                    self._follow(seg, strict=True)
                    seg.close()
                    seg.sealed = True
        last = self._segments[-1]
        self._follow(last, limit=end.position, strict=True)
        if last.size != end.position or last.next_offset != end.next_offset:
            raise CorruptLogError(
                last.path,
                last.size,
                f"the records end at byte {last.size} (next offset {last.next_offset}) but the "
                f"writers published byte {end.position} (next offset {end.next_offset})",
                offset=last.next_offset,
            )
        self._close_idle_fds()
        return True

    def _reload(self, tail: TailState) -> None:
        """Start over from the files (another writer replaced or deleted our active segment)."""
        for seg in self._segments:
            seg.close()
        self._open_sealed.clear()
        self._discard_unpublished_files(tail)
        self._recover(trusted=tail.end)

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
        with self._exclusive():
            if not records:
                return max(self._segments[-1].next_offset, self._reserved)
            if self._reserved > self._segments[-1].next_offset:
                self._roll_locked(self._reserved)
            active = self._segments[-1]
            first = active.next_offset
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
            fsync_dir(self._directory)
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
        with self._exclusive():
            self._roll_locked()

    def roll_if_due(self) -> bool:
        """Roll when the active segment is older than ``segment_max_age``; True if it rolled.

        :meth:`append` checks the age itself; this is for an idle log, so that age-based
        retention can still delete its data. Call it from a timer.
        """
        self._require_writable()
        with self._exclusive():
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

    def _roll_locked(self, base: int | None = None) -> None:
        """Start a new segment at ``base`` (default: right after the active one).

        A ``base`` past the active segment's end skips the offsets in between, which must be
        a recorded gap. An empty active segment is not kept: the new one replaces it.
        """
        old = self._segments[-1]
        if base is None:
            if old.size == 0:
                return
            base = old.next_offset
        if old.size:
            old.seal()
        # Reads reopen it read-only on demand (and an LRU bounds how many stay open).
        old.close_log_fd()
        orphan = log_path_for(self._directory, base)
        if orphan.exists():
            # Created by a writer that died before it published the roll (we hold append.lock
            # and the tail names an older segment): it holds nothing acknowledged.
            logger.warning("%s: removing a segment a dead writer never published", orphan)
            orphan.unlink()
            index_path_for(self._directory, base).unlink(missing_ok=True)
        new = Segment.create(self._directory, base, index_interval=self.index_interval_bytes)
        fsync_dir(self._directory)
        self._segments.append(new)
        self._bases.append(new.base_offset)
        self._durable_offset = max(self._durable_offset, new.base_offset)
        # The checkpoint moves first: it must never name a segment that is gone.
        self._store_checkpoint(Checkpoint(new.base_offset, 0, new.base_offset))
        if old.size == 0:
            del self._segments[-2]
            del self._bases[-2]
            old.delete()
            fsync_dir(self._directory)

    def skip_to(self, offset: int, reason: str) -> Gap | None:
        """Never use the offsets from the current end up to ``offset`` (exclusive).

        For offsets that were handed out (a subscriber's position, a mirror's cursor) but
        are not in the log any more: they are recorded as a gap (durably, with ``reason``) and
        the next append starts at ``offset``. Returns the gap, or None when ``offset`` is not
        past the end (nothing to skip).
        """
        self._require_writable()
        with self._exclusive():
            end = max(self._segments[-1].next_offset, self._reserved)
            if offset <= end:
                return None
            gap = make_gap(end, offset, reason)
            self._gaps = add_gaps(self._directory, [gap])
            self._reserved = offset
            return gap

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
            fd = os.dup(active.open_fd())
            snapshot = Checkpoint(active.base_offset, active.size, active.next_offset)
        try:
            shared = self._tail_file.read()
            # Another writer's fsync may have covered these bytes already (one file, one
            # page cache): then there is nothing left to wait for.
            if shared is None or shared.durable.next_offset < snapshot.next_offset:
                os.fdatasync(fd)
                self._note_durable(snapshot)
        finally:
            os.close(fd)
        with self._lock:
            self._durable_offset = max(self._durable_offset, snapshot.next_offset)
        return snapshot.next_offset

    def _note_durable(self, snapshot: Checkpoint) -> None:
        """Publish a durable point (checkpoint and tail) after an fsync, if it moves forward.

        After every fsync, so that the checkpoint names exactly what is durable: recovery
        treats damage before it as lost acknowledged data, never as a torn tail.
        """
        with self._append_mutex:
            self._append_lock.acquire()
            try:
                tail = self._tail_file.read()
                if tail is not None:
                    if tail.durable.next_offset >= snapshot.next_offset:
                        return
                    with self._checkpoint_lock:
                        self._checkpoint_offset = max(
                            self._checkpoint_offset, tail.durable.next_offset
                        )
                self._store_checkpoint(snapshot)
                if tail is not None:
                    self._tail_file.write(
                        TailState(tail.seq + 1, tail.boot, tail.end, tail.reserved, snapshot)
                    )
                    with self._lock:
                        if self._seen_seq == tail.seq:
                            self._seen_seq = tail.seq + 1
            finally:
                self._append_lock.unlock()

    # -- reading ------------------------------------------------------------------------------

    def read(self, offset: int, max_records: int = 1000, max_bytes: int = 1 << 20) -> list[Record]:
        """Records from ``offset`` on, at most ``max_records`` and about ``max_bytes`` of them.

        At least one record is returned when ``offset < next_offset``, however big it is;
        ``[]`` when ``offset == next_offset``. Offsets in a recorded gap hold no record: a read
        from one starts at the first record after the gap (so the first record returned may
        have a larger offset than asked for), or returns ``[]`` when no record follows the gap
        yet (the next append starts after it). Raises :class:`NotFoundError` for an offset
        before :attr:`start_offset` (deleted by retention) or after :attr:`next_offset`.

        At a bad record (checksum, framing): the good records before it are returned, and the
        read that starts at it raises :class:`CorruptLogError` naming file, byte and offset.
        """
        self._require_open()
        with self._lock:  # a writer's append (or catch-up) may run in another thread
            return self._read_locked(offset, max_records, max_bytes)

    def _read_locked(self, offset: int, max_records: int, max_bytes: int) -> list[Record]:
        segments = self._segments
        end = segments[-1].next_offset if segments else 0
        if end <= offset <= max(end, self._reserved):
            return []  # the end of the log, or a gap the next append will skip
        start = segments[0].base_offset if segments else 0
        if offset < start or offset > end:
            raise NotFoundError(
                f"offset {offset} is not in the log {self._directory} "
                f"(it holds offsets {start} to {end - 1})"
            )
        out: list[Record] = []
        i = bisect_right(self._bases, offset) - 1
        used = 0
        try:
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
        except CorruptLogError:
            if not out:
                raise
            # What is good before the damage is delivered; the next read starts at it.
        return out

    def get(self, offset: int) -> Record:
        """The record at ``offset`` itself.

        Raises :class:`NotFoundError` when the log does not hold it (deleted by retention,
        lost in a recorded gap, past the end) and :class:`CorruptLogError` when it is damaged.
        """
        records = self.read(offset, max_records=1)
        if not records or records[0].offset != offset:
            lost = next((g for g in self._gaps if g.first <= offset < g.end), None)
            why = f": it was lost ({lost.reason})" if lost is not None else ""
            raise NotFoundError(f"offset {offset} is not in the log {self._directory}{why}")
        return records[0]

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
        """Pick up what other processes appended, rolled or deleted since the last call.

        Cheap when nothing changed (a read of the tail state; for readers an ``fstat`` and
        a ``stat``). Never exposes a partial record: a record is visible once its batch is
        published in the tail state, all of its bytes are there and its checksum matches.
        Damage the writer has fsynced past stops a reader there, in :attr:`damage`.
        """
        self._require_open()
        if not self.readonly:
            with self._lock:
                caught_up = self._catch_up_locked(owner=False)
            if not caught_up:
                with self._exclusive():
                    pass  # the holder of append.lock reloads from the files
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
            present = set(list_bases(directory))
            if self._segments[-1].base_offset not in present:
                # Retention overtook this reader entirely: start over from what is there now.
                with self._lock:
                    for seg in self._segments:
                        seg.close()
                    self._open_sealed.clear()
                self._recover()
                return
            self._forget_deleted(present)
            with contextlib.suppress(CorruptLogError):  # a bad file is the writer's to report
                self._gaps = read_gaps(directory)
                self._reserved = reserved_end(self._gaps)
        tail = read_tail(directory)
        while self.damage is None:
            last = self._segments[-1]
            limit = None
            if tail is not None and tail.fresh and tail.end.segment_base == last.base_offset:
                limit = tail.end.position  # bytes past it are a batch not yet published
            grew = self._follow(last, limit=limit)
            following = self._successor(last)
            if following is not None:
                # The writer rolled: the old segment is complete now. Take its last bytes.
                self._follow(last)
                if last.size < os.fstat(last.open_fd()).st_size:
                    self.damage = CorruptLogError(
                        last.path,
                        last.size,
                        "bad record in a segment that was rolled",
                        offset=last.next_offset,
                    )
                    return
                last.sealed = True
                seg = Segment(
                    directory, following, index_interval=self.index_interval_bytes, writable=False
                )
                seg.adopt_index(OffsetIndex(seg.index_path), seg.index_interval)
                self._segments.append(seg)
                self._bases.append(seg.base_offset)
                continue
            if not grew:
                return

    def _successor(self, seg: Segment) -> int | None:
        """Base offset of the segment the writer rolled to after ``seg``, if it did."""
        if seg.next_offset == seg.base_offset:
            return None  # an empty segment is never rolled (it is replaced: see _roll_locked)
        # Right after it, or after a gap that starts where it ends.
        for base in (seg.next_offset, *(g.end for g in self._gaps if g.first == seg.next_offset)):
            if log_path_for(self._directory, base).exists():
                return base
        return None

    def _follow(self, seg: Segment, *, limit: int | None = None, strict: bool = False) -> bool:
        """Parse the complete records appended to ``seg`` since the last look (up to ``limit``).

        ``strict``: the records were published as complete; a bad one is damage.
        """
        try:
            fd = seg.open_fd()
        except NotFoundError:
            if strict:
                raise
            return False
        size = os.fstat(fd).st_size
        if limit is not None:
            size = min(size, limit)
        if size <= seg.size:
            return False
        entries: array[int] = array("I")
        next_index_pos = seg.next_index_pos
        base = seg.base_offset
        interval = seg.index_interval
        start_size = seg.size
        try:
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
        except RecordError as exc:
            if strict:
                raise CorruptLogError(
                    seg.path, exc.position, exc.reason, offset=seg.next_offset
                ) from None
            # Usually a write in progress: look again next time. Unless the writer says it
            # fsynced past it: then it is damage. (The checkpoint first, the size after it:
            # the writer moves the checkpoint only over bytes already in the file.)
            checkpoint = read_checkpoint(self._directory)
            if (
                checkpoint is not None
                and checkpoint.segment_base == base
                and checkpoint.position > exc.position
                and (not exc.incomplete or os.fstat(fd).st_size < checkpoint.position)
            ):
                self.damage = CorruptLogError(
                    seg.path, exc.position, exc.reason, offset=seg.next_offset
                )
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
        with self._exclusive():
            while len(self._segments) > 1 and self._segments[0].next_offset <= offset:
                deleted.append(self._delete_first_locked())
        if deleted:
            # So that a crash cannot bring back an old segment next to a gap.
            fsync_dir(self._directory)
        return deleted

    def delete_segment(self, base_offset: int) -> SegmentInfo:
        """Delete the oldest segment, named by its base offset (a hole in the middle is refused).

        Raises :class:`NotFoundError` if there is no such segment and
        :class:`BrokerStateError` if it is not the oldest or is the active one.
        """
        self._require_writable()
        with self._exclusive():
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
        fsync_dir(self._directory)
        return info

    def _delete_first_locked(self) -> SegmentInfo:
        seg = self._segments.pop(0)
        self._bases.pop(0)
        self._open_sealed.pop(seg.base_offset, None)
        info = _info(seg)
        seg.delete()
        return info


def _warn_unpublished(path: Path, size: int, end: int, next_offset: int) -> None:
    logger.warning(
        "%s: dropping %d bytes past the published end (byte %d, offset %d), written by a "
        "writer that died mid-batch (never acknowledged)",
        path,
        size - end,
        end,
        next_offset,
    )


def _info(seg: Segment) -> SegmentInfo:
    if seg.size > 0 and seg.first_timestamp is None:
        with contextlib.suppress(NotFoundError):
            header = seg.read_header(0)
            seg.first_timestamp = header[2] if header else None
    if seg.size > 0 and seg.last_timestamp is None:
        with contextlib.suppress(NotFoundError, CorruptLogError):
            seg.load_last_timestamp()
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

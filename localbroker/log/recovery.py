"""Recovery on open: how much of a log directory to trust (docs/log-format.md, "Recovery").

Sealed segments were fsynced when they were rolled and are trusted as they are (their
records are checked when read, and by ``verify``). From the checkpoint on, every record is
checked. At the first bad record recovery tells two cases apart:

* a **torn tail**: the record is in the last segment and no valid record follows it. It is
  the end of what was written when the process or the machine stopped. It is cut off. If the
  checkpoint says it was fsynced (the file was cut short, or damaged, after the fact), the
  offsets from it to the checkpoint's next offset were acknowledged: the bytes are kept in
  ``quarantine/``, the offsets are recorded as a gap (never used again) and an ERROR is
  logged. Otherwise the bytes were never confirmed as durable, and a WARNING says how many
  were dropped.
* **damage in the middle**: valid records follow the bad one, or it is in a sealed segment, or
  it disagrees with the checkpoint. Nothing is cut: a writer gets :class:`CorruptLogError`
  naming the file, the byte where the bad record starts and its offset, and is pointed at
  ``localbroker repair``; a reader gets the log up to the damage, and the error in
  :attr:`Recovered.damage`.

This module works on :class:`Segment` objects and the directory's files; the log
(:mod:`localbroker.log.commit_log`) decides what to do with the result.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from localbroker.errors import CorruptLogError
from localbroker.log.checkpoint import Checkpoint, read_checkpoint
from localbroker.log.gaps import Gap, add_gaps, gap_start, make_gap, quarantine, read_gaps
from localbroker.log.index import OffsetIndex
from localbroker.log.record import RecordError, find_record, iter_records
from localbroker.log.segment import INDEX_SUFFIX, Segment, log_path_for, parse_base_offset

__all__ = ["REPAIR_HINT", "Recovered", "list_bases", "recover"]

logger = logging.getLogger("localbroker.log")

REPAIR_HINT = (
    "stop the broker and run 'localbroker repair DATA_DIR' to cut the damage out "
    "(see docs/log-format.md, 'After damage')"
)


@dataclass(slots=True)
class Recovered:
    """What recovery found: the segments to use and what else the log must know."""

    segments: list[Segment]
    #: Every record below this offset is known to be fsynced.
    durable_offset: int
    #: The recorded gaps (lost offsets), including any this recovery added.
    gaps: list[Gap] = field(default_factory=list)
    #: Readers only: where the readable log ends early (a writer raises it instead).
    damage: CorruptLogError | None = None
    #: The last segment was cut, or holds records the checkpoint does not cover yet.
    unsynced: bool = False


def list_bases(directory: Path) -> list[int]:
    """Base offsets of the segments in ``directory``, ascending."""
    with os.scandir(directory) as entries:
        return sorted(b for b in (parse_base_offset(e.name) for e in entries) if b is not None)


def recover(
    directory: Path,
    *,
    writable: bool,
    index_interval: int,
    trusted: Checkpoint | None = None,
) -> Recovered:
    """Check a log directory and prepare its segments (the last one not yet made active).

    A writer (``writable``) cuts a torn tail and raises :class:`CorruptLogError` for damage;
    a reader changes nothing and reports damage in :attr:`Recovered.damage`. ``trusted``
    replaces the checkpoint: everything before it is taken as it is (a writer joining others
    passes the published tail state, so only what follows it is scanned).
    """
    # The checkpoint before the listing: a live writer only moves it forward, to segments
    # that exist by then.
    checkpoint = trusted if trusted is not None else read_checkpoint(directory)
    gaps = read_gaps(directory)
    bases = list_bases(directory)
    if writable:
        _cleanup(directory, bases)
    if not bases:
        if checkpoint is not None and checkpoint.next_offset > 0:
            damage = CorruptLogError(
                log_path_for(directory, checkpoint.segment_base),
                checkpoint.position,
                "the checkpoint names this segment but no segment file exists",
            )
            if writable:
                raise damage
            return Recovered([], 0, gaps, damage)
        return Recovered([], 0, gaps)

    segments = [
        Segment(directory, b, index_interval=index_interval, writable=writable) for b in bases
    ]
    for seg, following in itertools.pairwise(segments):
        seg.sealed = True
        seg.size = seg.path.stat().st_size
        # A segment followed by a recorded gap ends where the gap starts.
        seg.next_offset = max(seg.base_offset, gap_start(gaps, following.base_offset))

    # Where does the trusted part end?
    if checkpoint is not None and checkpoint.segment_base in bases:
        k = bases.index(checkpoint.segment_base)
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
        checkpoint = Checkpoint(bases[k], 0, bases[k])

    recovered = Recovered(segments, checkpoint.next_offset, gaps)
    for i in range(k, len(segments)):
        seg = segments[i]
        if i > k:
            expected = segments[i - 1].next_offset
            if gap_start(gaps, seg.base_offset) != expected:
                _damaged(recovered, i - 1, _discontinuity(seg, expected), writable=writable)
                break
        ck_pos, ck_next = (
            (checkpoint.position, checkpoint.next_offset) if i == k else (0, seg.base_offset)
        )
        problem, torn = _scan(seg, ck_pos, ck_next)
        if problem is None:
            continue
        last = i == len(segments) - 1
        follows = None
        if torn and problem.position < seg.path.stat().st_size:
            follows = find_record(
                seg.open_fd(), problem.position + 1, seg.path.stat().st_size, seg.next_offset
            )
        if not (last and torn and follows is None):
            if follows is not None:
                position, offset = follows
                problem = CorruptLogError(
                    seg.path,
                    problem.position,
                    f"{problem.reason}; valid records follow from byte {position} (offset "
                    f"{offset}), so offsets {seg.next_offset}..{offset - 1} are damaged",
                    offset=seg.next_offset,
                )
            _damaged(recovered, i, problem, writable=writable)
            break
        _torn_tail(recovered, seg, problem, ck_pos, ck_next, writable=writable)
    return recovered


def _discontinuity(seg: Segment, expected: int) -> CorruptLogError:
    missing = (
        f": offsets {expected}..{seg.base_offset - 1} are missing"
        if seg.base_offset > expected
        else ""
    )
    return CorruptLogError(
        seg.path,
        0,
        f"the segment starts at offset {seg.base_offset} but the one before ends at offset "
        f"{expected}{missing}",
        offset=seg.base_offset,
    )


def _damaged(recovered: Recovered, i: int, problem: CorruptLogError, *, writable: bool) -> None:
    """Damage in the middle: a writer refuses to open; a reader stops before it."""
    if writable:
        raise CorruptLogError(
            problem.segment,
            problem.position,
            f"{problem.reason}; nothing was cut. To go on, {REPAIR_HINT}",
            offset=problem.offset,
        )
    del recovered.segments[i + 1 :]
    recovered.damage = problem


def _torn_tail(
    recovered: Recovered,
    seg: Segment,
    problem: CorruptLogError,
    ck_pos: int,
    ck_next: int,
    *,
    writable: bool,
) -> None:
    """The end of the last segment is a torn write, or was lost after it was fsynced."""
    position, first = problem.position, seg.next_offset
    durable = position < ck_pos
    if not writable:
        if durable:
            recovered.damage = CorruptLogError(
                seg.path,
                position,
                f"{problem.reason}; offsets {first}..{ck_next - 1} were fsynced and are lost",
                offset=first,
            )
        # Otherwise a write in progress (or a torn tail the writer will cut): stop before it.
        return
    directory = seg.path.parent
    file_size = seg.path.stat().st_size
    dropped = file_size - position
    if durable:
        kept = quarantine(directory, seg.path, position, file_size) if dropped else None
        gap = make_gap(
            first,
            ck_next,
            f"{seg.path.name} byte {position}: {problem.reason}; the checkpoint says these "
            "offsets were fsynced",
            kept,
        )
        recovered.gaps = add_gaps(directory, [gap])
        logger.error(
            "%s: %s at byte %d (offset %d): acknowledged records are lost, %s; %s; the log "
            "goes on at offset %d and never uses these offsets again",
            seg.path,
            problem.reason,
            position,
            first,
            gap.describe(),
            f"{dropped} damaged bytes kept in {kept}" if kept else "no bytes were left of them",
            ck_next,
        )
    else:
        logger.warning(
            "%s: torn record at byte %d (offset %d): %s; dropped %d bytes that were never "
            "fsynced (with fsync='always': never acknowledged); the log ends at offset %d",
            seg.path,
            position,
            first,
            problem.reason,
            dropped,
            first,
        )
    if dropped:
        seg.truncate(position)
    recovered.unsynced = True


def _scan(seg: Segment, ck_pos: int, ck_next: int) -> tuple[CorruptLogError | None, bool]:
    """Check ``seg`` from (about) ``ck_pos`` to its end; set its size, offsets and index.

    ``seg`` ends up describing its valid records. Returns the problem that ended them (None
    when the file ends cleanly, at or after ``ck_pos``) and whether the problem may be a torn
    write (False: the records disagree with the checkpoint).
    """
    file_size = seg.path.stat().st_size
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
    problem: CorruptLogError | None = None
    torn = True
    try:
        for pos, end, rec in iter_records(
            seg.open_fd(), start, file_size, expected_offset=expected, payloads=False
        ):
            if pos < ck_pos < end or (end == ck_pos and rec.offset + 1 != ck_next):
                torn = False
                problem = CorruptLogError(
                    seg.path,
                    pos,
                    f"the checkpoint (byte {ck_pos}, next offset {ck_next}) does not match "
                    f"this record (offset {rec.offset}, ending at byte {end})",
                    offset=rec.offset,
                )
                break
            if pos == 0:
                first_ts = rec.timestamp
            if pos >= next_index_pos:
                entries.append(rec.offset - base)
                entries.append(pos)
                next_index_pos = pos + interval
            valid_end, next_offset, last_ts = end, rec.offset + 1, rec.timestamp
    except RecordError as exc:
        problem = CorruptLogError(seg.path, exc.position, exc.reason, offset=next_offset)
    if problem is None and valid_end < ck_pos:
        problem = CorruptLogError(
            seg.path,
            valid_end,
            f"the file ends at byte {file_size} but the checkpoint says {ck_pos} bytes were "
            "fsynced",
            offset=next_offset,
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
            seg.load_last_timestamp()
    return problem, torn


def _cleanup(directory: Path, bases: list[int]) -> None:
    # Leftovers of interrupted replacements and index files whose log was deleted.
    live = set(bases)
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            index_base = parse_base_offset(name, INDEX_SUFFIX)
            if name.endswith(".tmp") or (index_base is not None and index_base not in live):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

"""Repair of a damaged log: cut the damage out, keep its bytes, never reuse its offsets.

For a log that a broker refuses to open (:class:`~localbroker.errors.CorruptLogError`) or
whose subscribers are stalled on a bad record. Runs with no broker on the directory (it takes
the writer lock). For every bad record it finds:

1. the damaged bytes, from the bad record to the next valid record (or the end of the
   segment), are copied to ``quarantine/`` beside the segments: nothing is destroyed;
2. the offsets they held are recorded as a gap in ``gaps.jsonl``: readers skip them, and they
   are never handed out again;
3. the valid records after the damage move to a segment of their own, named by their first
   offset, and the damaged segment is cut where the damage starts.

Each step is durable before the next, and running it again after an interruption finishes
the job. See docs/log-format.md, "After damage".

Example::

    report = repair("data/log")
    for gap in report.gaps:
        print(gap.describe(), gap.quarantine)
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import filelock

from localbroker.errors import CorruptLogError, LogLockedError
from localbroker.log.checkpoint import Checkpoint, CheckpointFile, read_checkpoint
from localbroker.log.commit_log import LOCK_FILE
from localbroker.log.files import fsync_dir
from localbroker.log.gaps import (
    Gap,
    add_gaps,
    gap_start,
    make_gap,
    quarantine,
    read_gaps,
    reserved_end,
)
from localbroker.log.record import RecordError, find_record, iter_records
from localbroker.log.recovery import list_bases
from localbroker.log.segment import index_path_for, log_path_for
from localbroker.log.sharing import TAIL_FILE

__all__ = ["RepairReport", "repair"]


@dataclass(slots=True)
class RepairReport:
    """What :func:`repair` did."""

    #: The offsets lost to the damage it cut out, one gap per damaged range.
    gaps: list[Gap] = field(default_factory=list)
    #: Every change, in order, naming files and byte positions.
    actions: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether anything was repaired."""
        return bool(self.actions)


def repair(directory: Path | str) -> RepairReport:
    """Cut every bad record out of the log in ``directory`` (see the module docstring).

    Raises :class:`LogLockedError` while a broker holds the directory.
    """
    directory = Path(directory)
    lock = filelock.FileLock(directory / LOCK_FILE, thread_local=False)
    try:
        lock.acquire(blocking=False)
    except filelock.Timeout:
        raise LogLockedError(directory) from None
    try:
        # The published tail names the files as they were; repair rewrites them, so the next
        # opener must run the full recovery instead of trusting it.
        (directory / TAIL_FILE).unlink(missing_ok=True)
        return _repair(directory)
    finally:
        lock.release()


def _repair(directory: Path) -> RepairReport:
    report = RepairReport()
    checkpoint = read_checkpoint(directory)
    gaps = read_gaps(directory)
    bases = list_bases(directory)
    ends: dict[int, tuple[int, int]] = {}  # base -> (size, next offset) after the repair
    previous_end: int | None = None
    i = 0
    while i < len(bases):
        base = bases[i]
        path = log_path_for(directory, base)
        if previous_end is not None and gap_start(gaps, base) != previous_end:
            if base < previous_end:
                raise CorruptLogError(
                    path,
                    0,
                    f"the segment starts at offset {base}, inside the one before (which ends at "
                    f"offset {previous_end}); repair cannot tell which copy to keep",
                    offset=base,
                )
            gap = make_gap(
                previous_end, base, f"no segment holds these offsets (before {path.name})"
            )
            gaps = _record(directory, report, gap, f"recorded missing {gap.describe()}")
        size = path.stat().st_size
        bad, end_offset, reason = _first_bad_record(path, base, size)
        if bad is None:
            ends[base] = (size, end_offset)
            previous_end = end_offset
            i += 1
            continue
        following = bases[i + 1] if i + 1 < len(bases) else None
        with path.open("rb") as f:
            follows = find_record(f.fileno(), bad + 1, size, end_offset)
        if follows is not None:
            damage_end, resume = follows
        elif following is not None:
            damage_end, resume = size, max(end_offset, gap_start(gaps, following))
        elif checkpoint is not None and checkpoint.segment_base == base:
            # The end of the last segment: offsets up to the checkpoint's were handed out.
            damage_end, resume = size, max(end_offset, checkpoint.next_offset)
        else:
            damage_end, resume = size, end_offset
        kept = quarantine(directory, path, bad, damage_end)
        report.actions.append(f"copied bytes {bad}..{damage_end - 1} of {path.name} to {kept}")
        if resume > end_offset:
            gap = make_gap(end_offset, resume, f"{path.name} byte {bad}: {reason}", kept)
            gaps = _record(directory, report, gap, f"recorded lost {gap.describe()}")
        if follows is not None and resume not in bases:
            _copy_tail(path, damage_end, log_path_for(directory, resume))
            bases.insert(i + 1, resume)
            report.actions.append(
                f"moved the records after the damage (from byte {damage_end}) to "
                f"{log_path_for(directory, resume).name}"
            )
        _cut(path, bad, index_path_for(directory, base))
        report.actions.append(f"cut {path.name} at byte {bad}")
        ends[base] = (bad, end_offset)
        previous_end = end_offset
        i += 1
    if bases:
        _settle_checkpoint(directory, report, checkpoint, gaps, bases[-1], *ends[bases[-1]])
    return report


def _settle_checkpoint(
    directory: Path,
    report: RepairReport,
    checkpoint: Checkpoint | None,
    gaps: list[Gap],
    base: int,
    size: int,
    next_offset: int,
) -> None:
    """Make the checkpoint name the end of the repaired log; keep its offsets unused."""
    if checkpoint is not None and checkpoint.next_offset > max(next_offset, reserved_end(gaps)):
        gap = make_gap(
            max(next_offset, reserved_end(gaps)),
            checkpoint.next_offset,
            "the checkpoint says these offsets were fsynced, but no segment holds them",
        )
        _record(directory, report, gap, f"recorded lost {gap.describe()}")
    wanted = Checkpoint(base, size, next_offset)
    if checkpoint == wanted and not report.changed:
        return
    path = log_path_for(directory, base)
    with path.open("rb") as f:
        os.fsync(f.fileno())
    fsync_dir(directory)
    checkpoint_file = CheckpointFile(directory)
    try:
        checkpoint_file.store(wanted)
    finally:
        checkpoint_file.close()
    report.actions.append(
        f"checkpoint set to the end: {path.name} byte {size}, offset {next_offset}"
    )


def _record(directory: Path, report: RepairReport, gap: Gap, action: str) -> list[Gap]:
    report.gaps.append(gap)
    report.actions.append(action)
    return add_gaps(directory, [gap])


def _first_bad_record(path: Path, base: int, size: int) -> tuple[int | None, int, str]:
    """``(position, offset, reason)`` of the first bad record (position None: none)."""
    next_offset = base
    fd = os.open(path, os.O_RDONLY)
    try:
        for _pos, _end, rec in iter_records(fd, 0, size, expected_offset=base, payloads=False):
            next_offset = rec.offset + 1
    except RecordError as exc:
        return exc.position, next_offset, exc.reason
    finally:
        os.close(fd)
    return None, next_offset, ""


def _copy_tail(source: Path, start: int, target: Path) -> None:
    """Write bytes ``start..`` of ``source`` to ``target`` (a new segment), durably."""
    tmp = target.with_name(target.name + ".tmp")
    with source.open("rb") as src, tmp.open("wb") as dst:
        src.seek(start)
        shutil.copyfileobj(src, dst)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, target)
    fsync_dir(target.parent)


def _cut(path: Path, position: int, index: Path) -> None:
    """Truncate a segment at ``position``, durably; its index is rebuilt on the next open.

    A segment left empty stays (it ends where the gap starts), so that readers of its
    offsets find the records after the gap rather than a log that seems to start later.
    """
    with path.open("r+b") as f:
        f.truncate(position)
        os.fsync(f.fileno())
    with contextlib.suppress(FileNotFoundError):
        index.unlink()

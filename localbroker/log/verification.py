"""Offline checks of a log directory, and reading one segment file on its own."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from localbroker.errors import CorruptLogError
from localbroker.log.checkpoint import CHECKPOINT_FILE, read_checkpoint
from localbroker.log.gaps import Gap, gap_start, read_gaps
from localbroker.log.index import ENTRY_SIZE
from localbroker.log.record import HEADER, HEADER_SIZE, Record, RecordError, iter_records
from localbroker.log.recovery import list_bases
from localbroker.log.segment import index_path_for, log_path_for, parse_base_offset

__all__ = ["VerifyReport", "scan_segment", "verify"]


@dataclass(slots=True)
class VerifyReport:
    """What :func:`verify` found. ``problems`` name the file and byte position of each."""

    segments: int = 0
    records: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    #: Recorded gaps: offsets lost earlier (by a repair or a crash), not a problem in itself.
    gaps: list[Gap] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


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
        next_offset = expected
        try:
            for _pos, _end, rec in iter_records(fd, 0, size, expected_offset=expected):
                next_offset = rec.offset + 1
                yield rec
        except RecordError as exc:
            raise CorruptLogError(path, exc.position, exc.reason, offset=next_offset) from None
    finally:
        os.close(fd)


def verify(directory: Path | str) -> VerifyReport:
    """Check every record of every segment of a log directory, without changing anything.

    Checks framing and CRCs, that offsets are contiguous within segments and across them
    (except for recorded gaps), and that every index entry points at the record it names.
    Each problem names the file and the byte position. Safe to run next to a live writer,
    though its last record may be reported as incomplete if it is being written.
    """
    directory = Path(directory)
    report = VerifyReport()
    if not directory.is_dir():
        report.problems.append(f"{directory}: not a directory")
        return report
    try:
        report.gaps = read_gaps(directory)
    except CorruptLogError as exc:
        report.problems.append(str(exc))
    bases = list_bases(directory)
    expected: int | None = None
    for base in bases:
        path = log_path_for(directory, base)
        report.segments += 1
        if expected is not None and gap_start(report.gaps, base) != expected:
            report.problems.append(
                f"{path.name}: base offset {base} does not continue the previous segment, "
                f"which ends at offset {expected}, and no gap is recorded for offsets "
                f"{expected}..{base - 1}"
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
            report.problems.append(
                f"{path.name}: byte {exc.position} (offset {expected}): {exc.reason}"
            )
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

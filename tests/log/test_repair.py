"""repair(): damage cut out into quarantine, its offsets kept as a gap, the log usable again."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import filelock
import pytest

from localbroker.errors import CorruptLogError, LogLockedError, NotFoundError
from localbroker.log import CommitLog, encode_record, verify
from localbroker.log.gaps import read_gaps
from localbroker.log.repair import repair
from tests.log.helpers import TS, batch, read_all

KWARGS = {"segment_bytes": 1000, "index_interval_bytes": 100}
RECORD = len(encode_record(0, TS, batch(0, 1)[0][1]))  # every test record has this size


@pytest.fixture
def three_segments(log_dir: Path) -> Path:
    """Offsets 0..39 in segments 0, 15 and 30 (15 records of 65 bytes each, 10 in the last)."""
    with CommitLog(log_dir, **KWARGS) as log:  # type: ignore[arg-type]
        log.append(batch(0, 40))
    assert RECORD == 65
    return log_dir


def flip(path: Path, position: int) -> bytes:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x10
    path.write_bytes(data)
    return bytes(data)


def test_a_flipped_byte_in_a_sealed_segment_is_cut_out(three_segments: Path) -> None:
    log_dir = three_segments
    segment = log_dir / "00000000000000000015.log"
    data = flip(segment, 3 * RECORD + 30)  # record 18
    report = repair(log_dir)

    [gap] = report.gaps
    assert (gap.first, gap.end) == (18, 19)
    assert "00000000000000000015.log byte 195: crc mismatch" in gap.reason
    assert gap.quarantine is not None
    assert (log_dir / gap.quarantine).read_bytes() == data[3 * RECORD : 4 * RECORD]
    assert read_gaps(log_dir) == [gap]
    # The records after the damage live in a segment named by their first offset.
    assert (log_dir / "00000000000000000019.log").read_bytes() == data[4 * RECORD :]
    assert segment.read_bytes() == data[: 3 * RECORD]
    report = verify(log_dir)
    assert report.ok, report.problems
    assert report.records == 39

    with CommitLog(log_dir, **KWARGS) as log:  # type: ignore[arg-type]
        assert [r[0] for r in read_all(log)] == [*range(18), *range(19, 40)]
        assert [r.offset for r in log.read(18, max_records=2)] == [19, 20]
        with pytest.raises(NotFoundError, match=r"offset 18 is not in the log .*: it was lost"):
            log.get(18)  # a point lookup never answers with another record
        assert log.get(19).offset == 19
        assert log.append(batch(40, 1)) == 40
    assert not repair(log_dir).gaps  # nothing left to do


def test_damage_in_the_middle_of_the_active_segment(three_segments: Path) -> None:
    log_dir = three_segments
    segment = log_dir / "00000000000000000030.log"
    flip(segment, 2 * RECORD + 2)  # the size field of record 32: it cannot even be framed
    # Open re-checks only the end of the active segment; reads find the damage.
    with CommitLog(log_dir, **KWARGS) as log:  # type: ignore[arg-type]
        assert [r.offset for r in log.read(30)] == [30, 31]  # what is good before it
        with pytest.raises(CorruptLogError) as info:
            log.read(32)
    assert (info.value.position, info.value.offset) == (2 * RECORD, 32)

    [gap] = repair(log_dir).gaps
    assert (gap.first, gap.end) == (32, 33)
    with CommitLog(log_dir, **KWARGS) as log:  # type: ignore[arg-type]
        assert [r[0] for r in read_all(log, 30)] == [30, 31, *range(33, 40)]
        assert log.append(batch(40, 1)) == 40


def test_several_damaged_records_and_a_lost_durable_tail(three_segments: Path) -> None:
    log_dir = three_segments
    flip(log_dir / "00000000000000000000.log", 30)  # record 0
    flip(log_dir / "00000000000000000000.log", 5 * RECORD + 30)  # record 5
    last = log_dir / "00000000000000000030.log"
    os.truncate(last, 8 * RECORD + 20)  # records 38 and 39 were acknowledged (checkpoint)
    report = repair(log_dir)
    assert [(g.first, g.end) for g in report.gaps] == [(0, 1), (5, 6), (38, 40)]
    assert verify(log_dir).ok
    with CommitLog(log_dir, **KWARGS) as log:  # type: ignore[arg-type]
        assert log.start_offset == 0  # segment 0 stays, empty: reads of 0 find offset 1
        assert [r[0] for r in read_all(log)] == [*range(1, 5), *range(6, 38)]
        assert log.append(batch(40, 1)) == 40


def test_an_interrupted_repair_is_finished_by_the_next_one(
    three_segments: Path, tmp_path: Path
) -> None:
    log_dir = three_segments
    segment = log_dir / "00000000000000000015.log"
    data = flip(segment, 3 * RECORD + 30)
    # As if a repair stopped after moving the records behind the damage, before the cut.
    copy = tmp_path / "copy"
    shutil.copytree(log_dir, copy)
    repair(copy)
    shutil.copy(copy / "gaps.jsonl", log_dir / "gaps.jsonl")
    shutil.copy(copy / "00000000000000000019.log", log_dir / "00000000000000000019.log")
    assert segment.read_bytes() == data

    [gap] = repair(log_dir).gaps  # the same gap, recorded once
    assert (gap.first, gap.end) == (18, 19)
    assert len(read_gaps(log_dir)) == 1
    assert segment.read_bytes() == data[: 3 * RECORD]
    assert verify(log_dir).ok


def test_repair_needs_the_writer_lock(three_segments: Path) -> None:
    lock = filelock.FileLock(three_segments / "writer.lock")
    with lock, pytest.raises(LogLockedError):
        repair(three_segments)

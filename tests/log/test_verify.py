"""verify() and scan_segment(): offline checks of a log directory and of single files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from localbroker.errors import CorruptLogError
from localbroker.log import CommitLog, Record, scan_segment, verify
from tests.log.helpers import TS, batch, payload

KWARGS = {"segment_bytes": 1000, "index_interval_bytes": 100}


@pytest.fixture
def good_log(log_dir: Path) -> Path:
    with CommitLog(log_dir, **KWARGS) as log:  # type: ignore[arg-type]
        log.append(batch(0, 40))
    return log_dir


def test_verify_passes_on_a_good_log(good_log: Path) -> None:
    report = verify(good_log)
    assert report.ok, report.problems
    assert report.segments == 3
    assert report.records == 40
    assert report.bytes == sum(p.stat().st_size for p in good_log.glob("*.log"))


def test_verify_finds_a_flipped_byte_in_a_sealed_segment(good_log: Path) -> None:
    segment = good_log / "00000000000000000015.log"
    data = bytearray(segment.read_bytes())
    data[65 * 3 + 30] ^= 0x10  # inside record 18, at byte 195
    segment.write_bytes(data)
    # Open trusts sealed segments, so this is only found by reading or verifying.
    with CommitLog(good_log, **KWARGS) as log:  # type: ignore[arg-type]
        assert log.next_offset == 40
    report = verify(good_log)
    assert not report.ok
    [problem] = report.problems
    assert "00000000000000000015.log" in problem
    assert "byte 195" in problem
    assert "crc" in problem


def test_verify_finds_bad_index_entries_and_gaps(good_log: Path, tmp_path: Path) -> None:
    index = good_log / "00000000000000000000.index"
    data = bytearray(index.read_bytes())
    data[7] ^= 0x01  # position of the first entry
    index.write_bytes(data)
    report = verify(good_log)
    assert any("00000000000000000000.index" in p and "entry 0" in p for p in report.problems)

    gap = tmp_path / "gap"
    shutil.copytree(good_log, gap)
    (gap / "00000000000000000015.log").unlink()
    report = verify(gap)
    assert any("does not continue" in p for p in report.problems)


def test_verify_reports_a_torn_tail(good_log: Path) -> None:
    last = sorted(good_log.glob("*.log"))[-1]
    os.truncate(last, last.stat().st_size - 3)
    report = verify(good_log)
    assert not report.ok
    assert last.name in report.problems[0]


def test_scan_segment_reads_a_file_on_its_own(good_log: Path, tmp_path: Path) -> None:
    source = good_log / "00000000000000000015.log"
    copy = tmp_path / "downloaded" / source.name
    copy.parent.mkdir()
    shutil.copy(source, copy)
    records = list(scan_segment(copy))
    assert records == [Record(i, TS + i, payload(i)) for i in range(15, 30)]


def test_scan_segment_raises_on_bad_records(good_log: Path) -> None:
    source = good_log / "00000000000000000000.log"
    data = bytearray(source.read_bytes())
    data[65 + 30] ^= 0x01
    source.write_bytes(data)
    scanned = []
    with pytest.raises(CorruptLogError) as info:
        scanned.extend(scan_segment(source))
    assert [r.offset for r in scanned] == [0]
    assert info.value.position == 65
    assert info.value.segment == source


def test_scan_segment_raises_on_a_truncated_file(good_log: Path) -> None:
    source = good_log / "00000000000000000000.log"
    os.truncate(source, source.stat().st_size - 1)
    with pytest.raises(CorruptLogError, match="only"):
        list(scan_segment(source))

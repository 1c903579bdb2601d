"""Recovery on open: torn tails, corruption before the checkpoint, damaged index files."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localbroker.errors import CorruptLogError
from localbroker.log import CommitLog, Record, encode_record, read_checkpoint
from localbroker.log.commit_log import CHECKPOINT_FILE
from tests.log.helpers import TS, batch, crash, payload, power_cut, read_all

OpenLog = Callable[..., CommitLog]
SEGMENT_0 = "00000000000000000000.log"


def _write_log(directory: Path, records: list[tuple[int, bytes]], **kwargs: object) -> None:
    with CommitLog(directory, **kwargs) as log:  # type: ignore[arg-type]
        log.append(records)


def _frame_ends(records: list[tuple[int, bytes]], first_offset: int = 0) -> list[int]:
    ends, pos = [], 0
    for i, (ts, data) in enumerate(records):
        pos += len(encode_record(first_offset + i, ts, data))
        ends.append(pos)
    return ends


def _check_truncated_at(
    template: Path,
    work: Path,
    records: list[tuple[int, bytes]],
    segment: str,
    first_offset: int,
    cut: int,
    **kwargs: object,
) -> None:
    """Copy ``template``, cut ``segment`` at ``cut``, reopen and check what survived."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(template, work)
    (work / CHECKPOINT_FILE).unlink()
    os.truncate(work / segment, cut)
    tail = records[first_offset:]
    ends = _frame_ends(tail, first_offset)
    whole = sum(1 for end in ends if end <= cut)
    valid_end = ends[whole - 1] if whole else 0
    with CommitLog(work, **kwargs) as log:  # type: ignore[arg-type]
        assert log.next_offset == first_offset + whole
        assert os.path.getsize(work / segment) == valid_end
        expected = [(i, ts, data) for i, (ts, data) in enumerate(records)][: first_offset + whole]
        assert read_all(log) == expected
        assert log.append([(TS, b"after")]) == first_offset + whole
        assert log.read(first_offset + whole) == [Record(first_offset + whole, TS, b"after")]
    with CommitLog(work, **kwargs) as log:  # type: ignore[arg-type]
        assert log.next_offset == first_offset + whole + 1


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=12),
    data=st.data(),
)
def test_recovery_at_any_truncation_point(
    tmp_path: Path, sizes: list[int], data: st.DataObject
) -> None:
    records = [(TS + i, payload(i, size)) for i, size in enumerate(sizes)]
    template = tmp_path / "template"
    shutil.rmtree(template, ignore_errors=True)
    _write_log(template, records, index_interval_bytes=64)
    total = os.path.getsize(template / SEGMENT_0)
    cut = data.draw(st.integers(0, total), label="cut")
    _check_truncated_at(
        template, tmp_path / "work", records, SEGMENT_0, 0, cut, index_interval_bytes=64
    )


def test_recovery_at_every_truncation_point_of_the_last_segment(tmp_path: Path) -> None:
    # Three segments; the last holds records 8.. and is cut at every byte.
    records = [(TS + i, payload(i, 30 + 7 * i)) for i in range(13)]
    template = tmp_path / "template"
    kwargs = {"segment_bytes": 600, "index_interval_bytes": 100}
    _write_log(template, records, **kwargs)
    with CommitLog(template, readonly=True) as log:
        last = log.segments()[-1]
    assert last.base_offset > 0
    for cut in range(last.size_bytes + 1):
        _check_truncated_at(
            template,
            tmp_path / "work",
            records,
            last.path.name,
            last.base_offset,
            cut,
            **kwargs,
        )


def test_torn_tail_after_checkpoint_is_truncated_with_a_warning(
    open_log: OpenLog, log_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = open_log()
    log.append(batch(0, 5))
    log.close()  # checkpoint at the end
    segment = log_dir / SEGMENT_0
    size = os.path.getsize(segment)
    # An append that never made it to disk whole: one good record and a torn one.
    with open(segment, "ab") as f:
        f.write(encode_record(5, TS, b"ok"))
        f.write(encode_record(6, TS, b"torn")[:-2])
    garbage = len(encode_record(6, TS, b"torn")) - 2
    power_cut(log_dir)
    with caplog.at_level(logging.WARNING, logger="localbroker.log"):
        log = open_log()
    assert log.next_offset == 6
    assert os.path.getsize(segment) == size + len(encode_record(5, TS, b"ok"))
    [message] = [r.getMessage() for r in caplog.records if r.name == "localbroker.log"]
    assert f"dropped {garbage} bytes" in message
    assert SEGMENT_0 in message


def test_unpublished_batch_of_a_dead_writer_is_cut(
    open_log: OpenLog, log_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = open_log()
    log.append(batch(0, 5))
    log.close()
    segment = log_dir / SEGMENT_0
    size = os.path.getsize(segment)
    # A writer killed after writing a whole record of its batch, before publishing it.
    with open(segment, "ab") as f:
        f.write(encode_record(5, TS, b"ok"))
        f.write(encode_record(6, TS, b"torn")[:-2])
    with caplog.at_level(logging.WARNING, logger="localbroker.log"):
        log = open_log()
    assert log.next_offset == 5  # never published, so never acknowledged: not resurrected
    assert os.path.getsize(segment) == size
    assert any("past the published end" in r.getMessage() for r in caplog.records)


def _crash_with_stale_checkpoint(open_log: OpenLog, log_dir: Path) -> None:
    """Six records; a crash leaves a checkpoint that names only the first three.

    What a power cut can leave (the checkpoint is not fsynced), or an older version of the
    log whose checkpoint trailed the fsyncs.
    """
    log = open_log()
    log.append(batch(0, 3))
    log.sync()
    checkpoint = read_checkpoint(log_dir)
    assert checkpoint is not None
    log.append(batch(3, 3))
    log.sync()
    crash(log)
    (log_dir / CHECKPOINT_FILE).write_bytes(checkpoint.encode())


def test_flipped_byte_after_checkpoint_with_records_after_it_is_damage(
    open_log: OpenLog, log_dir: Path
) -> None:
    _crash_with_stale_checkpoint(open_log, log_dir)
    segment = log_dir / SEGMENT_0
    data = bytearray(segment.read_bytes())
    ends = _frame_ends(batch(0, 6))
    data[ends[3] + 30] ^= 0xFF  # inside record 4; record 5 follows intact
    segment.write_bytes(data)
    with pytest.raises(CorruptLogError) as info:
        open_log()
    assert (info.value.position, info.value.offset) == (ends[3], 4)
    assert f"valid records follow from byte {ends[4]} (offset 5)" in str(info.value)
    assert "localbroker repair" in str(info.value)
    assert segment.read_bytes() == data  # nothing was cut


def test_flipped_byte_in_the_last_record_after_checkpoint_is_a_torn_tail(
    open_log: OpenLog, log_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _crash_with_stale_checkpoint(open_log, log_dir)
    segment = log_dir / SEGMENT_0
    size = os.path.getsize(segment)
    data = bytearray(segment.read_bytes())
    ends = _frame_ends(batch(0, 6))
    data[ends[4] + 30] ^= 0xFF  # inside record 5, the last
    segment.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="localbroker.log"):
        log = open_log()
    assert log.next_offset == 5
    assert os.path.getsize(segment) == ends[4]
    [message] = [r.getMessage() for r in caplog.records if r.name == "localbroker.log"]
    assert f"torn record at byte {ends[4]} (offset 5)" in message
    assert f"dropped {size - ends[4]} bytes" in message


def test_flipped_byte_in_the_last_durable_record_is_cut_and_its_offset_kept_unused(
    open_log: OpenLog, log_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = open_log()
    log.append(batch(0, 5))
    log.close()
    segment = log_dir / SEGMENT_0
    data = bytearray(segment.read_bytes())
    ends = _frame_ends(batch(0, 5))
    data[ends[3] + 40] ^= 0x01  # inside the last record, which the checkpoint covers
    segment.write_bytes(data)
    with caplog.at_level(logging.ERROR, logger="localbroker.log"):
        log = open_log()
    [message] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert f"{SEGMENT_0}: crc mismatch" in message
    assert f"at byte {ends[3]} (offset 4)" in message
    assert "offsets 4..4 (1)" in message
    [gap] = log.gaps
    assert (gap.first, gap.end) == (4, 5)
    assert gap.quarantine is not None
    assert (log_dir / gap.quarantine).read_bytes() == data[ends[3] :]  # kept, not destroyed
    assert os.path.getsize(segment) == ends[3]
    # The lost offset is never handed out again.
    assert log.append([(TS, b"after")]) == 5
    assert [r.offset for r in log.read(0)] == [0, 1, 2, 3, 5]
    log.close()
    log = open_log()
    assert [r.offset for r in log.read(3)] == [3, 5]
    assert log.append([(TS, b"more")]) == 6


def test_flipped_byte_early_in_durable_data_fails_the_read(
    open_log: OpenLog, log_dir: Path
) -> None:
    # Open only re-checks from the last index entry; older durable records are checked
    # when they are read (and by verify()).
    log = open_log(index_interval_bytes=100)
    log.append(batch(0, 10))
    log.close()
    segment = log_dir / SEGMENT_0
    data = bytearray(segment.read_bytes())
    data[40] ^= 0x01  # record 0
    segment.write_bytes(data)
    log = open_log(index_interval_bytes=100)
    with pytest.raises(CorruptLogError) as info:
        log.read(0)
    assert info.value.position == 0
    assert SEGMENT_0 in str(info.value)
    assert [r.offset for r in log.read(1)] == list(range(1, 10))


def test_torn_tail_after_a_clean_close_is_cut_where_the_torn_record_starts(
    open_log: OpenLog, log_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 9, item 5: the last record cut in the middle after a clean close.
    log = open_log()
    log.append(batch(0, 5))
    log.close()
    segment = log_dir / SEGMENT_0
    ends = _frame_ends(batch(0, 5))
    os.truncate(segment, ends[4] - 10)
    with caplog.at_level(logging.WARNING, logger="localbroker.log"):
        reader = open_log(readonly=True)
    # A reader reads up to the damage and names the torn record's own position.
    assert reader.next_offset == 4
    assert [r.offset for r in reader.read(0)] == [0, 1, 2, 3]
    assert reader.damage is not None
    assert (reader.damage.position, reader.damage.offset) == (ends[3], 4)
    reader.close()
    assert not caplog.records  # a reader changes and drops nothing
    with caplog.at_level(logging.WARNING, logger="localbroker.log"):
        log = open_log()
    [message] = [r.getMessage() for r in caplog.records]
    assert f"at byte {ends[3]} (offset 4)" in message
    assert f"{ends[4] - 10 - ends[3]} damaged bytes kept" in message
    assert os.path.getsize(segment) == ends[3]
    assert log.append([(TS, b"after")]) == 5  # offset 4 was acknowledged: never reused


def test_file_cut_at_a_record_boundary_before_the_checkpoint(
    open_log: OpenLog, log_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = open_log()
    log.append(batch(0, 5))
    log.close()
    ends = _frame_ends(batch(0, 5))
    os.truncate(log_dir / SEGMENT_0, ends[2])
    with caplog.at_level(logging.ERROR, logger="localbroker.log"):
        log = open_log()
    assert "no bytes were left of them" in caplog.text
    assert [(g.first, g.end, g.quarantine) for g in log.gaps] == [(3, 5, None)]
    assert log.next_offset == 3
    assert log.append([(TS, b"after")]) == 5


def test_a_torn_sealed_segment_is_damage_and_nothing_is_dropped(
    open_log: OpenLog, log_dir: Path
) -> None:
    log = open_log(segment_bytes=300)
    log.append(batch(0, 4))
    log.roll()
    checkpoint = read_checkpoint(log_dir)
    assert checkpoint is not None
    log.append(batch(4, 10))  # segments 4, 8, 12
    log.close()
    (log_dir / CHECKPOINT_FILE).write_bytes(checkpoint.encode())  # as if we crashed at the roll
    segment_4 = log_dir / "00000000000000000004.log"
    os.truncate(segment_4, os.path.getsize(segment_4) - 1)
    files = {p.name: p.read_bytes() for p in log_dir.glob("*.log")}
    with pytest.raises(CorruptLogError) as info:
        open_log(segment_bytes=300)
    assert info.value.segment == segment_4
    assert info.value.offset == 7
    assert files == {p.name: p.read_bytes() for p in log_dir.glob("*.log")}
    reader = open_log(readonly=True)
    assert [r.offset for r in reader.read(0)] == list(range(7))
    assert reader.damage is not None


@pytest.mark.parametrize("damage", ["missing", "short", "garbage", "stale"])
def test_damaged_index_is_rebuilt(open_log: OpenLog, log_dir: Path, damage: str) -> None:
    kwargs = {"segment_bytes": 2000, "index_interval_bytes": 100}
    log = open_log(**kwargs)
    log.append(batch(0, 100))
    log.close()
    for index in log_dir.glob("*.index"):
        if damage == "missing":
            index.unlink()
        elif damage == "short":
            index.write_bytes(index.read_bytes()[:13])
        elif damage == "garbage":
            index.write_bytes(os.urandom(len(index.read_bytes())))
        else:  # plausible but wrong: every position shifted to the previous entry's
            data = index.read_bytes()
            index.write_bytes(data[:4] + data[:-4][4:])
    log = open_log(**kwargs)
    expected = [(i, ts, data) for i, (ts, data) in enumerate(batch(0, 100))]
    for offset in (0, 1, 27, 28, 29, 50, 99):
        assert read_all(log, offset) == expected[offset:]
    log.close()
    from localbroker.log import verify

    assert verify(log_dir).ok


def test_corrupt_checkpoint_is_ignored(
    open_log: OpenLog, log_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = open_log()
    log.append(batch(0, 5))
    log.close()
    (log_dir / CHECKPOINT_FILE).write_bytes(b"\x00" * 28)
    with caplog.at_level(logging.WARNING, logger="localbroker.log"):
        log = open_log()
    assert log.next_offset == 5
    assert "bad checksum" in caplog.text


def test_reader_does_not_truncate(open_log: OpenLog, log_dir: Path) -> None:
    log = open_log()
    log.append(batch(0, 3))
    log.close()
    segment = log_dir / SEGMENT_0
    with open(segment, "ab") as f:
        f.write(b"\x00\x00\x01")
    size = os.path.getsize(segment)
    reader = open_log(readonly=True)
    assert reader.next_offset == 3
    assert os.path.getsize(segment) == size


@pytest.mark.slow
def test_reopen_of_a_large_log_is_fast(tmp_path: Path) -> None:
    import time

    directory = tmp_path / "big"
    record = (TS, b"x" * 200)
    with CommitLog(directory) as log:
        for _ in range(1_000_000 // 1000):
            log.append([record] * 1000)
    started = time.perf_counter()
    with CommitLog(directory) as log:
        assert log.next_offset == 1_000_000
        elapsed = time.perf_counter() - started
    assert elapsed < 0.5

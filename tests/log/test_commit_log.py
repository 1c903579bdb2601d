"""CommitLog: append, read, roll, offsets, retention, locking, readers."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from localbroker.errors import (
    BrokerStateError,
    ConfigurationError,
    LogLockedError,
    NotFoundError,
)
from localbroker.log import CommitLog, Record, encode_record, read_checkpoint, verify
from tests.log.helpers import TS, batch, payload, read_all

OpenLog = Callable[..., CommitLog]


def test_new_log_is_empty(open_log: OpenLog, log_dir: Path) -> None:
    log = open_log()
    assert (log.start_offset, log.next_offset) == (0, 0)
    assert log.read(0) == []
    assert (log_dir / "00000000000000000000.log").exists()
    assert (log_dir / "00000000000000000000.index").exists()
    [info] = log.segments()
    assert (info.base_offset, info.next_offset, info.size_bytes, info.sealed) == (0, 0, 0, False)
    assert info.first_timestamp is None
    assert info.last_timestamp is None


def test_append_returns_consecutive_offsets(open_log: OpenLog) -> None:
    log = open_log()
    assert log.append(batch(0, 3)) == 0
    assert log.append(batch(3, 1)) == 3
    assert log.append([]) == 4
    assert log.next_offset == 4
    assert log.read(0) == [Record(i, TS + i, payload(i)) for i in range(4)]


def test_init_does_not_touch_disk_and_validates(log_dir: Path) -> None:
    CommitLog(log_dir)
    assert not log_dir.exists()
    with pytest.raises(ConfigurationError):
        CommitLog(log_dir, segment_bytes=0)
    with pytest.raises(ConfigurationError):
        CommitLog(log_dir, segment_max_age=0)
    with pytest.raises(ConfigurationError):
        CommitLog(log_dir, index_interval_bytes=0)


def test_calls_on_a_closed_log_fail(log_dir: Path) -> None:
    log = CommitLog(log_dir)
    with pytest.raises(BrokerStateError):
        log.append(batch(0, 1))
    with pytest.raises(BrokerStateError):
        log.read(0)


def test_close_is_idempotent_and_context_manager_reopens(log_dir: Path) -> None:
    with CommitLog(log_dir) as log:
        log.append(batch(0, 10))
    log.close()
    with CommitLog(log_dir) as log:
        assert log.next_offset == 10
        assert read_all(log) == [(i, TS + i, payload(i)) for i in range(10)]


def test_roll_by_size_and_read_from_every_offset(open_log: OpenLog) -> None:
    # 65-byte records, 4 per 300-byte segment; small index interval to use the index.
    log = open_log(segment_bytes=300, index_interval_bytes=100)
    for start in range(0, 50, 7):
        log.append(batch(start, min(7, 50 - start)))
    segments = log.segments()
    assert [s.base_offset for s in segments] == list(range(0, 50, 4))
    assert all(s.size_bytes <= 300 for s in segments)
    assert [s.sealed for s in segments] == [True] * 12 + [False]
    assert segments[0].next_offset == 4
    assert segments[0].first_timestamp == TS
    assert segments[0].last_timestamp == TS + 3
    expected = [Record(i, TS + i, payload(i)) for i in range(50)]
    for offset in range(51):
        assert log.read(offset) == expected[offset:]
        assert log.read(offset, max_records=3) == expected[offset : offset + 3]
    assert read_all(log) == [tuple(r) for r in expected]


def test_a_batch_spanning_segments_is_split_at_record_boundaries(open_log: OpenLog) -> None:
    log = open_log(segment_bytes=300)
    assert log.append(batch(0, 10)) == 0
    assert [s.next_offset - s.base_offset for s in log.segments()] == [4, 4, 2]
    assert [r.offset for r in log.read(0)] == list(range(10))


def test_oversized_record_gets_a_segment_of_its_own(open_log: OpenLog) -> None:
    log = open_log(segment_bytes=100)
    log.append([(TS, b"a" * 10), (TS, b"b" * 500), (TS, b"c" * 10)])
    assert [s.next_offset - s.base_offset for s in log.segments()] == [1, 1, 1]
    assert log.read(1)[0].payload == b"b" * 500


def test_read_limits(open_log: OpenLog) -> None:
    log = open_log(segment_bytes=300)
    log.append(batch(0, 20))  # 65 bytes per record
    assert len(log.read(0, max_bytes=130)) == 2
    assert len(log.read(0, max_bytes=129)) == 1
    # At least one record, however small max_bytes is.
    assert [r.offset for r in log.read(5, max_bytes=1)] == [5]
    assert len(log.read(0, max_records=1)) == 1
    assert [r.offset for r in log.read(2, max_records=5)] == [2, 3, 4, 5, 6]


def test_read_out_of_range(open_log: OpenLog) -> None:
    log = open_log(segment_bytes=300)
    log.append(batch(0, 10))
    assert log.read(10) == []
    with pytest.raises(NotFoundError):
        log.read(11)
    with pytest.raises(NotFoundError):
        log.read(-1)
    log.delete_segments_before(8)
    assert log.start_offset == 8
    with pytest.raises(NotFoundError):
        log.read(7)
    assert [r.offset for r in log.read(8)] == [8, 9]


def test_roll_by_age(open_log: OpenLog) -> None:
    log = open_log(segment_max_age=60)
    now = int(time.time() * 1000)
    log.append([(now - 120_000, b"old")])
    log.append([(now, b"new")])  # the active segment's first record is too old: roll first
    assert [s.base_offset for s in log.segments()] == [0, 1]
    log.append([(now, b"new too")])
    assert [s.base_offset for s in log.segments()] == [0, 1]
    assert not log.roll_if_due()


def test_roll_if_due_for_an_idle_log(open_log: OpenLog) -> None:
    log = open_log(segment_max_age=60)
    assert not log.roll_if_due()  # empty
    log.append([(int(time.time() * 1000) - 120_000, b"old")])
    assert log.roll_if_due()
    assert [s.base_offset for s in log.segments()] == [0, 1]


def test_explicit_roll(open_log: OpenLog, log_dir: Path) -> None:
    log = open_log()
    log.roll()  # nothing to seal
    assert len(log.segments()) == 1
    log.append(batch(0, 5))
    log.roll()
    assert [(s.base_offset, s.sealed) for s in log.segments()] == [(0, True), (5, False)]
    assert log.durable_offset == 5
    checkpoint = read_checkpoint(log_dir)
    assert checkpoint is not None
    assert (checkpoint.segment_base, checkpoint.position, checkpoint.next_offset) == (5, 0, 5)


def test_retention_deletes_only_whole_sealed_segments(open_log: OpenLog, log_dir: Path) -> None:
    log = open_log(segment_bytes=300)
    log.append(batch(0, 14))  # segments 0-3, 4-7, 8-11, 12-13 (active)
    assert log.delete_segments_before(3) == []
    deleted = log.delete_segments_before(9)
    assert [s.base_offset for s in deleted] == [0, 4]
    assert not (log_dir / "00000000000000000000.log").exists()
    assert not (log_dir / "00000000000000000004.index").exists()
    assert log.start_offset == 8
    # Everything, but the active segment stays.
    assert [s.base_offset for s in log.delete_segments_before(10**9)] == [8]
    assert [s.base_offset for s in log.segments()] == [12]
    assert [r.offset for r in log.read(12)] == [12, 13]
    log.close()
    log = open_log(segment_bytes=300)
    assert (log.start_offset, log.next_offset) == (12, 14)


def test_delete_segment(open_log: OpenLog) -> None:
    log = open_log(segment_bytes=300)
    log.append(batch(0, 10))
    with pytest.raises(BrokerStateError, match="hole"):
        log.delete_segment(4)
    with pytest.raises(BrokerStateError, match="active"):
        log.delete_segment(8)
    with pytest.raises(NotFoundError):
        log.delete_segment(3)
    assert log.delete_segment(0).base_offset == 0
    assert log.start_offset == 4


def test_exclusive_opener_is_refused_while_a_writer_has_the_log(
    open_log: OpenLog, log_dir: Path
) -> None:
    open_log()
    with pytest.raises(LogLockedError) as info:
        CommitLog(log_dir, exclusive=True).open()
    assert info.value.directory == log_dir


def test_writer_is_refused_while_an_exclusive_opener_has_the_log(
    open_log: OpenLog, log_dir: Path
) -> None:
    open_log(exclusive=True)
    with pytest.raises(LogLockedError):
        CommitLog(log_dir).open()


def test_two_writers_append_dense_offsets(open_log: OpenLog, log_dir: Path) -> None:
    # flock belongs to the open file, so two logs in one process share like two processes.
    a = open_log(segment_bytes=300)
    b = open_log(segment_bytes=300)
    assert a.opened_alone
    assert not b.opened_alone
    firsts = []
    for i in range(20):
        writer = a if i % 3 else b
        firsts.append(writer.append(batch(i * 2, 2)))
        writer.sync()
    assert firsts == list(range(0, 40, 2))
    for log in (a, b):
        log.refresh()
        assert [r.offset for r in log.read(0, 100)] == list(range(40))
    assert len(a.segments()) > 1
    a.close()
    b.close()
    assert verify(log_dir).ok


def test_lock_is_released_on_close(log_dir: Path) -> None:
    CommitLog(log_dir).open().close()
    CommitLog(log_dir).open().close()


def test_readonly_log_refuses_writes(open_log: OpenLog) -> None:
    open_log().append(batch(0, 3))
    reader = open_log(readonly=True)
    assert reader.next_offset == 3
    with pytest.raises(BrokerStateError):
        reader.append(batch(3, 1))
    with pytest.raises(BrokerStateError):
        reader.sync()
    with pytest.raises(BrokerStateError):
        reader.delete_segments_before(10)


def test_reader_follows_writer(open_log: OpenLog, log_dir: Path) -> None:
    writer = open_log(segment_bytes=300, index_interval_bytes=100)
    writer.append(batch(0, 3))
    reader = open_log(readonly=True, segment_bytes=300, index_interval_bytes=100)
    assert reader.next_offset == 3
    writer.append(batch(3, 10))  # rolls twice
    assert reader.next_offset == 3
    reader.refresh()
    assert reader.next_offset == 13
    assert read_all(reader) == read_all(writer)
    reader.refresh()  # nothing new
    assert reader.next_offset == 13
    writer.delete_segments_before(8)
    writer.append(batch(13, 1))
    reader.refresh()
    assert reader.next_offset == 14
    assert reader.start_offset == 8
    assert read_all(reader) == read_all(writer)


def test_reader_never_sees_a_partial_record(open_log: OpenLog, log_dir: Path) -> None:
    writer = open_log()
    writer.append(batch(0, 2))
    reader = open_log(readonly=True)
    # Simulate a writer in the middle of a write: half a record at the end of the file.
    segment = log_dir / "00000000000000000000.log"
    from localbroker.log import encode_record

    frame = encode_record(2, TS + 2, payload(2))
    with open(segment, "ab") as f:
        f.write(frame[:30])
    reader.refresh()
    assert reader.next_offset == 2
    assert reader.damage is None  # not fsynced yet: a write in progress
    assert [r.offset for r in reader.read(0)] == [0, 1]
    with open(segment, "ab") as f:
        f.write(frame[30:])
    reader.refresh()
    assert reader.next_offset == 2  # complete, but its batch was never published
    writer.append(batch(2, 1))  # cuts the unpublished bytes, then appends and publishes
    reader.refresh()
    assert reader.next_offset == 3
    assert reader.read(2) == [Record(2, TS + 2, payload(2))]


def test_reader_stops_at_damage_the_writer_fsynced_past(open_log: OpenLog, log_dir: Path) -> None:
    writer = open_log()
    writer.append(batch(0, 2))
    reader = open_log(readonly=True)
    writer.append(batch(2, 3))
    writer.sync()  # the checkpoint now says records 2..4 are durable
    segment = log_dir / "00000000000000000000.log"
    position = 2 * len(encode_record(0, TS, payload(0)))
    data = bytearray(segment.read_bytes())
    data[position + 30] ^= 0x01  # record 2
    segment.write_bytes(data)
    reader.refresh()
    assert reader.next_offset == 2
    assert reader.damage is not None
    assert (reader.damage.position, reader.damage.offset) == (position, 2)


def test_reader_across_a_skipped_range(open_log: OpenLog, log_dir: Path) -> None:
    writer = open_log(segment_bytes=300)
    writer.append(batch(0, 3))
    reader = open_log(readonly=True)
    gap = writer.skip_to(10, "lost in a test")
    assert gap is not None
    assert (gap.first, gap.end) == (3, 10)
    assert writer.read(3) == []  # nothing after the gap yet: the end of the log
    assert writer.append(batch(10, 2)) == 10
    reader.refresh()
    assert [r.offset for r in reader.read(0)] == [0, 1, 2, 10, 11]
    assert [r.offset for r in reader.read(5)] == [10, 11]
    assert writer.skip_to(5, "behind the end") is None


def test_reader_of_a_directory_that_does_not_exist_yet(log_dir: Path) -> None:
    reader = CommitLog(log_dir, readonly=True).open()
    try:
        assert reader.next_offset == 0
        assert reader.read(0) == []
        with CommitLog(log_dir) as writer:
            writer.append(batch(0, 2))
            reader.refresh()
            assert reader.next_offset == 2
    finally:
        reader.close()


def test_sync_returns_the_durable_offset(open_log: OpenLog, log_dir: Path) -> None:
    log = open_log()
    assert log.sync() == 0
    log.append(batch(0, 5))
    assert log.sync() == 5
    assert log.durable_offset == 5


def test_sync_in_a_thread_while_appending(open_log: OpenLog) -> None:
    log = open_log(segment_bytes=4000)
    stop = threading.Event()
    results: list[int] = []
    errors: list[BaseException] = []

    def syncer() -> None:
        try:
            while not stop.is_set():
                results.append(log.sync())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=syncer)
    thread.start()
    try:
        for start in range(0, 2000, 50):
            log.append(batch(start, 50))
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert results == sorted(results)
    assert log.sync() == 2000
    assert len(read_all(log)) == 2000


def test_sync_after_close_is_harmless(log_dir: Path) -> None:
    log = CommitLog(log_dir).open()
    log.append(batch(0, 1))
    log.close()
    assert log.sync() == 1


def test_segment_info_created_and_timestamps(open_log: OpenLog) -> None:
    log = open_log(segment_bytes=300)
    log.append(batch(0, 6))
    log.close()
    log = open_log(segment_bytes=300)
    first, second = log.segments()
    assert (first.first_timestamp, first.last_timestamp) == (TS, TS + 3)
    assert (second.first_timestamp, second.last_timestamp) == (TS + 4, TS + 5)
    assert first.created == TS / 1000
    assert first.record_count == 4
    assert first.path.name == "00000000000000000000.log"
    assert first.index_path.name == "00000000000000000000.index"
    assert os.path.getsize(second.path) == second.size_bytes


def test_sealed_segment_descriptors_are_bounded(
    open_log: OpenLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localbroker.log import commit_log

    monkeypatch.setattr(commit_log, "MAX_OPEN_SEALED", 2)
    log = open_log(segment_bytes=130)  # two records per segment
    log.append(batch(0, 40))
    assert len(log.segments()) == 20
    for _ in range(2):
        assert len(read_all(log)) == 40
        open_fds = [s for s in log._segments if s.fd is not None]
        assert len(open_fds) <= 3  # two sealed + the active one


def test_concurrent_reader_sees_only_whole_records(open_log: OpenLog) -> None:
    writer = open_log(segment_bytes=5000, index_interval_bytes=200)
    reader = open_log(readonly=True, segment_bytes=5000, index_interval_bytes=200)
    total = 3000
    done = threading.Event()

    def write() -> None:
        for start in range(0, total, 30):
            writer.append(batch(start, 30, size=10 + start % 97))
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    seen = 0
    try:
        while seen < total:
            finished = done.is_set()
            reader.refresh()
            for record in reader.read(seen, max_records=500):
                assert record.offset == seen
                assert record.payload.startswith(f'{{"i": {seen}, '.encode())
                seen += 1
            if finished and reader.next_offset == seen:
                break
    finally:
        thread.join()
    assert seen == total


def test_failed_write_leaves_the_log_as_it_was(
    open_log: OpenLog, log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localbroker.log import segment as segment_module

    log = open_log()
    log.append(batch(0, 3))
    size = os.path.getsize(log_dir / "00000000000000000000.log")
    real_write = os.write

    def short_then_fail(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data)[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(segment_module.os, "write", short_then_fail)
    with pytest.raises(OSError, match="No space"):
        log.append(batch(3, 2))
    monkeypatch.setattr(segment_module.os, "write", real_write)
    assert log.next_offset == 3
    assert os.path.getsize(log_dir / "00000000000000000000.log") == size
    assert log.append(batch(3, 2)) == 3
    assert [r.offset for r in log.read(0)] == [0, 1, 2, 3, 4]


def test_exclusive_open_is_refused_across_processes(open_log: OpenLog, log_dir: Path) -> None:
    import subprocess
    import sys

    open_log()
    code = (
        "import sys\n"
        "from localbroker.errors import LogLockedError\n"
        "from localbroker.log import CommitLog\n"
        "try:\n"
        "    CommitLog(sys.argv[1], exclusive=True).open()\n"
        "except LogLockedError:\n"
        "    sys.exit(3)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(log_dir)],
        cwd=Path(__file__).parents[2],
        check=False,
    )
    assert result.returncode == 3

"""The broker over its directory: the writer lock, corruption, configuration, segment rolling."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from localbroker import Broker, ConfigurationError, CorruptLogError, LogLockedError
from localbroker.config import load_config
from localbroker.log import CommitLog
from localbroker.log.repair import repair
from tests.broker.damage import reader
from tests.broker.events import Note
from tests.waiting import wait_until


async def test_second_broker_on_a_directory_publishes_too(tmp_path: Path) -> None:
    async with Broker(tmp_path) as first, Broker(tmp_path) as second:
        assert (await first.publish(Note(n=1))).offset == 0
        assert (await second.publish(Note(n=2))).offset == 1
        assert (await first.publish(Note(n=3))).offset == 2
        await wait_until(lambda: second.visible_offset == 3, what="the other's append")
        assert [r.offset for r in second.read_log(0, 10)] == [0, 1, 2]


async def test_repair_is_refused_while_a_broker_has_the_directory(tmp_path: Path) -> None:
    async with Broker(tmp_path) as broker:
        await broker.publish(Note(n=1))
        with pytest.raises(LogLockedError, match="already open for writing by another process"):
            repair(tmp_path / "log")


async def test_corrupt_durable_record_fails_the_start_naming_segment_and_position(
    tmp_path: Path,
) -> None:
    async with Broker(tmp_path, segment_bytes=4096) as broker:
        await broker.publish_many(Note(n=i) for i in range(200))
    sealed = sorted((tmp_path / "log").glob("*.log"))
    assert len(sealed) > 2
    # Damage the last segment before its checkpoint: durable data, so not a torn tail.
    last = sealed[-1]
    data = bytearray(last.read_bytes())
    data[30] ^= 0x01
    last.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError) as info:
        await Broker(tmp_path).start()
    assert info.value.segment.name == last.name
    assert "at byte 0" in str(info.value)
    # nothing was dropped: the file is as it was
    assert last.read_bytes() == bytes(data)


async def test_torn_tail_is_truncated_and_the_broker_goes_on(tmp_path: Path) -> None:
    async with Broker(tmp_path) as broker:
        await broker.publish_many(Note(n=i) for i in range(10))
    (segment,) = (tmp_path / "log").glob("*.log")
    (tmp_path / "log" / "checkpoint").unlink()  # as after a crash before the checkpoint
    with segment.open("ab") as f:
        f.write(b"\x00\x00\x01\x00partial")
    seen: list[int] = []
    broker = Broker(tmp_path, start_from="earliest")

    @broker.subscriber("note.added", name="reader")
    async def read(event: Note) -> None:
        seen.append(event.n)

    async with broker:
        result = await broker.publish(Note(n=10))
        await broker.wait_idle()
    assert result.offset == 10
    assert seen == list(range(11))


async def test_offsets_read_before_the_log_lost_them_are_never_reused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[int] = []
    async with reader(tmp_path, seen) as broker:
        await broker.publish_many(Note(n=i) for i in range(20))
        await broker.wait_idle()
    # What a power cut can leave with fsync="interval": the last records and the checkpoint
    # never reached the disk, the subscriber's position (in state.db) did.
    (segment,) = (tmp_path / "log").glob("*.log")
    with CommitLog(tmp_path / "log", readonly=True) as log:
        records = log.read(0)
    os.truncate(segment, segment.stat().st_size - sum(25 + len(r.payload) for r in records[15:]))
    (tmp_path / "log" / "checkpoint").unlink()

    with caplog.at_level(logging.ERROR, logger="localbroker"):
        async with reader(tmp_path, seen) as broker:
            assert "offsets 15..19 (5) were handed out" in caplog.text
            assert "subscriber 'reader' at 20" in caplog.text
            results = await broker.publish_many(Note(n=100 + i) for i in range(3))
            await broker.wait_idle()
            assert [(g.first, g.end) for g in broker.log.gaps] == [(15, 20)]
    assert [r.offset for r in results] == [20, 21, 22]
    assert seen == [*range(20), 100, 101, 102]


async def test_configuration_from_environment_and_bad_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCALBROKER_ACK_TIMEOUT", "7.5")
    monkeypatch.setenv("LOCALBROKER_FSYNC", "interval")
    config = load_config(data_dir=tmp_path, max_tries=3)
    assert (config.ack_timeout, config.fsync, config.max_tries) == (7.5, "interval", 3)
    monkeypatch.setenv("LOCALBROKER_FSYNC", "sometimes")
    with pytest.raises(ConfigurationError, match="fsync"):
        Broker(tmp_path)
    monkeypatch.delenv("LOCALBROKER_FSYNC")
    with pytest.raises(ConfigurationError, match="segment_bytes"):
        Broker(tmp_path, segment_bytes=10)
    with pytest.raises(ConfigurationError, match="nonsense"):
        Broker(tmp_path, nonsense=1)


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
async def test_every_fsync_policy_stores_and_delivers(tmp_path: Path, fsync: str) -> None:
    broker = Broker(tmp_path, fsync=fsync, fsync_interval_ms=5, start_from="earliest")
    got: list[int] = []

    @broker.subscriber("note.added", name="n")
    async def on(event: Note) -> None:
        got.append(event.n)

    async with broker:
        await asyncio.gather(*(broker.publish(Note(n=i)) for i in range(50)))
        await broker.wait_idle()
    assert sorted(got) == list(range(50))
    async with Broker(tmp_path) as reopened:
        assert reopened.log.next_offset == 50


async def test_segments_roll_by_size_and_an_idle_one_by_age(tmp_path: Path) -> None:
    async with Broker(tmp_path, segment_bytes=4096, segment_max_age=0.3) as broker:
        await broker.publish_many(Note(n=i) for i in range(100))
        by_size = broker.log.segments()
        assert len(by_size) > 2
        assert all(s.size_bytes <= 4096 for s in by_size)
        await broker.publish(Note(n=100))
        count = len(broker.log.segments())
        # The broker looks for an idle segment to roll about once a second.
        await wait_until(lambda: len(broker.log.segments()) > count, what="the roll by age")
        segments = broker.log.segments()
    assert len(segments) == count + 1
    assert all(s.sealed for s in segments[:-1])
    assert segments[-1].size_bytes == 0


async def test_index_fed_by_the_writer_matches_an_index_rebuilt_from_the_log(
    tmp_path: Path,
) -> None:
    from localbroker.broker.indexer import index_records
    from localbroker.state.event_index import IndexedEvent

    broker = Broker(tmp_path, start_from="earliest")

    @broker.subscriber("note.added", name="echo")
    async def echo(event: Note) -> None:
        if event.n < 5:
            await broker.publish("note.echoed", {"n": event.n}, key=str(event.n))

    async with broker:
        await broker.publish_many(Note(n=i) for i in range(10))
        await broker.publish(Note(n=3, key="k"))
        await broker.wait_idle()
        assert broker._indexer is not None
        await broker._indexer.catch_up()
        index = broker._index
        assert index is not None
        async with index.db.execute('SELECT * FROM events ORDER BY "offset"') as cur:
            fed = [IndexedEvent(*row) for row in await cur.fetchall()]
        rebuilt = index_records(broker.log.read(0, max_records=1000))
    assert len(fed) == 17  # 11 notes, 6 echoes
    assert fed == rebuilt

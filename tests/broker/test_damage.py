"""A damaged record in the log: subscribers deliver up to it, stall loudly, go on after repair."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from localbroker import Broker, SubscriberStalledError
from localbroker.broker import subscriber as subscriber_module
from localbroker.cli.main import cli
from localbroker.log import Record
from localbroker.view import BrokerView
from tests.broker.damage import damage_record, reader, write_notes
from tests.waiting import wait_until


async def test_a_bad_record_stalls_its_subscribers_loudly_until_repaired(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 9, item 4: a flipped byte in a sealed segment; the broker opens (sealed segments
    # are checked when read), and its subscriber used to stop silently before the batch
    # holding the bad record, with wait_idle() timing out.
    await write_notes(tmp_path)
    damage = damage_record(tmp_path, 50)
    assert damage.segment.name != sorted((tmp_path / "log").glob("*.log"))[-1].name
    monkeypatch.setattr(subscriber_module, "STALLED_RETRY_DELAY", 0.01)
    seen: list[int] = []
    broker = reader(tmp_path, seen)
    reads_at_damage = 0
    fetch = broker.fetch_log

    async def counting_fetch(offset: int, max_records: int) -> list[Record]:
        nonlocal reads_at_damage
        reads_at_damage += offset == damage.offset
        return await fetch(offset, max_records)

    broker.fetch_log = counting_fetch  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="localbroker"):
        async with broker:
            with pytest.raises(SubscriberStalledError) as info:
                await broker.wait_idle()
            assert (info.value.subscriber, info.value.position) == ("reader", damage.offset)
            assert damage.named() in str(info.value)
            assert seen == list(range(damage.offset))  # everything before the damage

            # It keeps trying (slowly: a repair could fix it), but says so only once.
            await wait_until(lambda: reads_at_damage >= 5, what="the stalled reader to retry")
            [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert "subscriber reader is stalled at offset 50" in error.getMessage()
            assert damage.named() in error.getMessage()
            assert "localbroker repair" in error.getMessage()

            health = broker.health()
            assert not health.ok
            [stalled] = health.stalled
            assert (stalled.name, stalled.state, stalled.position) == ("reader", "stalled", 50)
            assert stalled.stall is not None
            assert damage.named() in stalled.stall.cause
            # Tools beside the running broker see the same, from the files, once the
            # position is saved (every state_flush_interval).
            async with BrokerView(tmp_path) as view:

                async def seen_stalled() -> bool:
                    stalled = (await view.health()).stalled
                    return [(s.name, s.position) for s in stalled] == [("reader", 50)]

                await wait_until(seen_stalled, what="the view to see the stalled reader")

    result = CliRunner().invoke(cli, ["repair", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "lost offsets 50..50 (1)" in result.output
    assert "quarantine" in result.output

    async with reader(tmp_path, seen) as broker:
        await broker.publish("note.added", {"n": 200})
        await broker.wait_idle()
        health = broker.health()
        assert health.ok
        assert [(g.first, g.end) for g in health.lost] == [(50, 51)]
    assert seen == [n for n in range(201) if n != 50]


async def test_damage_in_the_middle_of_the_active_segment_after_a_clean_close(
    tmp_path: Path,
) -> None:
    # Open re-checks only the end of the active segment: damage before that is found by
    # the read that reaches it.
    await write_notes(tmp_path, 20, segment_bytes=2**20)  # one segment
    damage = damage_record(tmp_path, 5)
    seen: list[int] = []
    with pytest.raises(SubscriberStalledError, match=r"offset 5\)"):
        async with reader(tmp_path, seen) as broker:
            await broker.wait_idle()
    assert seen == [0, 1, 2, 3, 4]
    assert damage.segment.name == "00000000000000000000.log"


async def test_a_broker_refuses_a_log_damaged_where_it_checks_and_repair_lets_it_start(
    tmp_path: Path,
) -> None:
    await write_notes(tmp_path, 20)
    damage = damage_record(tmp_path, 18)  # in the part open re-checks; record 19 follows
    with pytest.raises(Exception, match="localbroker repair") as info:
        await Broker(tmp_path).start()
    assert damage.named() in str(info.value)
    result = CliRunner().invoke(cli, ["repair", str(tmp_path)])
    assert "lost offsets 18..18 (1)" in result.output
    seen: list[int] = []
    async with reader(tmp_path, seen) as broker:
        await broker.wait_idle()
    assert seen == [n for n in range(20) if n != 18]

"""The log tail (visible offset, wait, read) on one directory shared by two opens (``flock``
and the wake-up sockets belong to the open, so two opens in one process behave like two
processes). The roles that run in one process are leases: tests/broker/test_leases.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

from localbroker.broker.log_tail import LogTail
from localbroker.log import CommitLog
from localbroker.log.notify import MEMBERS_DIR, Notifier
from tests.log.helpers import batch


async def test_an_append_wakes_the_other_tail_without_polling(tmp_path: Path) -> None:
    with CommitLog(tmp_path) as a, CommitLog(tmp_path) as b:
        # A poll an hour apart: only the datagram can wake the second tail in time.
        tail_a = LogTail(a, durable_only=True, poll_interval=3600)
        tail_b = LogTail(b, durable_only=True, poll_interval=3600)
        tail_a.start()
        tail_b.start()
        try:
            waiting = asyncio.create_task(tail_b.wait_for_append(2))
            a.append(batch(0, 3))
            tail_a.advance(a.sync())
            await asyncio.wait_for(waiting, 20)
            assert tail_b.visible_offset == 3
            assert [r.offset for r in tail_b.read(0, 10)] == [0, 1, 2]
        finally:
            await tail_a.close()
            await tail_b.close()


async def test_records_not_yet_fsynced_stay_invisible_with_durable_only(tmp_path: Path) -> None:
    with CommitLog(tmp_path) as a, CommitLog(tmp_path) as b:
        tail_b = LogTail(b, durable_only=True, poll_interval=3600)
        a.append(batch(0, 2))
        tail_b.refresh()
        assert tail_b.visible_offset == 0  # published, but not durable yet
        assert tail_b.read(0, 10) == []
        a.sync()
        tail_b.refresh()
        assert tail_b.visible_offset == 2


async def test_a_dead_member_is_forgotten(tmp_path: Path) -> None:
    (tmp_path / MEMBERS_DIR).mkdir()
    (tmp_path / MEMBERS_DIR / "999999999-dead").touch()  # nobody is bound under this name
    notifier = Notifier(tmp_path)
    assert notifier.open()
    try:
        notifier.notify_others()
        assert [p.name for p in (tmp_path / MEMBERS_DIR).iterdir()] == [notifier.name]
    finally:
        notifier.close()
    assert list((tmp_path / MEMBERS_DIR).iterdir()) == []

"""A real full disk under ``state.db`` (a 2 MiB tmpfs): close is bounded and says so, nothing
acknowledged is lost. Issue 9, item 9 (close raised a raw ``sqlite3.OperationalError``, then hung).

The log is on a tmpfs of its own, mounted inside the small one, so that publishing goes on
while ``state.db`` cannot grow: events are acknowledged to their publisher and handled, but
the subscriber's position can no longer be saved.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path

import pytest

from localbroker import Broker, StorageFullError
from tests.broker.events import Note
from tests.disk import fill_until, small_tmpfs
from tests.waiting import wait_until


def saved_position(data: Path) -> int:
    with sqlite3.connect(f"file:{data / 'state.db'}?mode=ro", uri=True) as db:
        (committed,) = db.execute(
            "SELECT committed FROM subscribers WHERE name = 'reader'"
        ).fetchone()
    return int(committed)


def threads() -> set[str]:
    return {t.name for t in threading.enumerate() if not t.daemon}


async def test_closing_on_a_full_state_disk_raises_storage_full_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    caplog.set_level(logging.WARNING, logger="localbroker")
    before = threads()
    with small_tmpfs(data, "2m"), small_tmpfs(data / "log", "16m"):
        seen: list[int] = []
        broker = Broker(data, start_from="earliest")

        @broker.subscriber("note.added", name="reader")
        async def read(event: Note) -> None:
            seen.append(event.n)

        await broker.start()
        await broker.publish_many(Note(n=i) for i in range(200))
        await broker.wait_idle()
        await wait_until(lambda: saved_position(data) == 200, what="position 200 saved")

        filler = fill_until(data, 0)
        acknowledged = 200

        async def publish_until_a_save_fails() -> bool:
            nonlocal acknowledged
            await broker.publish_many(Note(n=acknowledged + i) for i in range(100))
            acknowledged += 100
            await broker.wait_idle()
            return any(
                "could not save subscriber positions" in r.getMessage() for r in caplog.records
            )

        # The log has room: publishing goes on (each batch acknowledged) until state.db has to
        # grow and cannot.
        await wait_until(publish_until_a_save_fails, what="a position save to fail")
        failures = [
            r for r in caplog.records if "could not save subscriber positions" in r.getMessage()
        ]
        assert len(failures) == 1, "logged once per outage, not every flush interval"
        assert "the disk is full" in failures[0].getMessage()

        async with asyncio.timeout(60):  # bounded: a hang fails here
            with pytest.raises(StorageFullError) as raised:
                await broker.close()
        assert raised.value.path == data / "state.db"
        assert f"{data / 'state.db'}: the disk is full: could not save subscriber positions" in str(
            raised.value
        )
        assert isinstance(raised.value.__cause__, sqlite3.OperationalError)  # kept as the cause
        assert any(
            "closing without saving subscriber positions (reader at" in r.getMessage()
            for r in caplog.records
        )
        # No SQLite or I/O thread left to keep the process alive (each ends just after close).
        await wait_until(lambda: threads() == before, what=f"only {before} left")
        saved = saved_position(data)
        assert 200 <= saved < acknowledged  # the save before the disk filled is intact

        filler.unlink()
        first_run = list(seen)
        seen.clear()
        again = Broker(data, start_from="earliest")
        again.subscribe(read, "note.added", name="reader")
        async with again:
            await again.wait_idle()
            assert again.log.next_offset == acknowledged
        # Every acknowledged event was delivered; what was handled but not saved came again,
        # nothing saved before the disk filled did.
        assert sorted(set(first_run) | set(seen)) == list(range(acknowledged))
        assert seen
        assert min(seen) >= saved
        assert first_run == list(range(acknowledged))

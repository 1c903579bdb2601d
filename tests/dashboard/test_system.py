"""The System page: the archive and sync status where they are stored, judged by their age."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from localbroker import Broker
from localbroker.archive import Archive, ArchiveConfig
from localbroker.dashboard import create_app
from localbroker.sync import RedisStreams
from tests.dashboard.conftest import client_for
from tests.servers.redis import RedisServer
from tests.sync.conftest import FAST, redis_server, redis_session
from tests.waiting import wait_until

__all__ = ["redis_server", "redis_session"]  # the fixtures, used here


def sync_state(page: str, name: str) -> str:
    match = re.search(rf'<tr data-sync="{name}">.*?class="badge sync-state[^>]*>(\w+)<', page, re.S)
    assert match is not None, page
    return match.group(1)


async def test_archive_shows_its_segments(tmp_path: Path) -> None:
    (tmp_path / "archive").mkdir()
    archive = Archive(
        ArchiveConfig(
            directory=tmp_path / "archive", cache_dir=tmp_path / "cache", upload_interval=3600
        )
    )
    async with Broker(tmp_path / "data", extensions=[archive], segment_bytes=4096) as broker:
        for n in range(200):
            await broker.publish("order.placed", {"n": n, "pad": "x" * 40})
        uploaded, _ = await archive.run_once()
        state = archive.status()
    assert len(uploaded) == state.archived_segments > 1
    async with client_for(create_app(tmp_path / "data")) as client:
        page = (await client.get("/system")).text
    section = page[page.index('id="archive"') :]
    assert (
        f"{state.archived_segments} segments ({state.archived_bytes:,} bytes), "
        f"offsets 0..{state.archived_until}"
    ) in section
    assert "not configured" not in section
    assert re.search(r"last upload</th><td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC", section)


@pytest.mark.redis
async def test_a_killed_redis_shows_disconnected_then_stale(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    target = RedisStreams(redis_server.url, **{**FAST, "heartbeat_interval": 0.2})
    app = create_app(tmp_path, stale_after=2.0)
    async with Broker(tmp_path, sync=[target]) as broker, client_for(app) as client:
        await broker.publish("order.placed", {"n": 1})
        await target.wait_mirrored()

        async def state() -> str:
            return sync_state((await client.get("/system")).text, "redis")

        await wait_until(lambda: _is(state, "connected"), what="redis shown connected")
        page = (await client.get("/system")).text
        redis_server.kill()  # SIGKILL
        await wait_until(lambda: _is(state, "disconnected"), what="redis shown disconnected")
        # The target stops writing its status (as when its process is killed): stale.
        target.closing = True
        await wait_until(lambda: _is(state, "stale"), what="the old status shown stale")
        stale = (await client.get("/system")).text
    assert re.search(r"status written \d+ s ago", page)
    assert "not refreshed within 2 s" in stale
    # Words and formatted times only: no raw epochs, True/False/None.
    body = stale[stale.index('id="sync"') :]
    assert not re.search(r">(True|False|None)<|\b1[6-9]\d{8}(\.\d+)?\b", body)
    assert re.search(r"<th>updated</th><td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", body)


async def _is(state, expected: str) -> bool:  # type: ignore[no-untyped-def]
    return await state() == expected

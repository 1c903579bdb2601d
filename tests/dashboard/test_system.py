"""The System page: the archive and sync status where they are stored, judged by their age."""

from __future__ import annotations

import asyncio
import re
import sys
import textwrap
from pathlib import Path

import pytest

from localbroker import Broker
from localbroker.archive import Archive, ArchiveConfig
from localbroker.dashboard import create_app
from tests.dashboard.conftest import client_for
from tests.servers.redis import RedisServer
from tests.sync.conftest import redis_server, redis_session
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


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from localbroker import Broker
    from localbroker.config import RetryPolicy
    from localbroker.sync import RedisStreams

    async def main() -> None:
        fast = RetryPolicy(backoff_initial=0.05, backoff_max=0.3)
        target = RedisStreams(
            sys.argv[2], reconnect=fast, status_interval=0.2, heartbeat_interval=0.2
        )
        async with Broker(sys.argv[1], sync=[target]) as broker:
            await broker.publish("order.placed", {"n": 1})
            await target.wait_mirrored()
            print("mirrored", flush=True)
            await asyncio.Event().wait()  # until killed

    asyncio.run(main())
    """
)


@pytest.mark.redis
async def test_a_killed_redis_shows_disconnected_then_stale_when_its_broker_is_killed(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    broker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(tmp_path),
        redis_server.url,
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert broker.stdout is not None
        assert (await broker.stdout.readline()).strip() == b"mirrored"
        async with client_for(create_app(tmp_path, stale_after=2.0)) as client:

            async def shown(expected: str) -> bool:
                return sync_state((await client.get("/system")).text, "redis") == expected

            await wait_until(lambda: shown("connected"), what="redis shown connected")
            connected = (await client.get("/system")).text
            redis_server.kill()  # SIGKILL
            await wait_until(lambda: shown("disconnected"), what="redis shown disconnected")
            broker.kill()  # SIGKILL: nobody rewrites the status any more
            await wait_until(lambda: shown("stale"), what="the old status shown stale")
            stale = (await client.get("/system")).text
    finally:
        if broker.returncode is None:
            broker.kill()
        await broker.wait()
    assert re.search(r"status written \d+ s ago", connected)
    assert "not refreshed within 2 s" in stale
    # Words and formatted times only: no raw epochs, True/False/None.
    body = stale[stale.index('id="sync"') :]
    assert not re.search(r">(True|False|None)<|\b1[6-9]\d{8}(\.\d+)?\b", body)
    assert re.search(r"<th>updated</th><td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", body)

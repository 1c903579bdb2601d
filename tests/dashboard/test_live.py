"""Live updates: server-sent events from a real server while a real broker appends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from localbroker.dashboard import create_app
from tests.dashboard.conftest import Blog, serve


async def next_update(lines) -> str:
    """The data of the next ``update`` event of an SSE stream."""
    event, data = None, []
    async for line in lines:
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
        elif not line and event == "update":
            return "\n".join(data)
        elif not line:
            event, data = None, []
    raise AssertionError("stream ended")


async def test_events_stream_pushes_new_events(tmp_path: Path) -> None:
    blog = Blog(tmp_path)
    async with blog.broker:
        first = await blog.post("one")
        with serve(create_app(tmp_path)) as url:
            async with (
                httpx.AsyncClient(base_url=url, timeout=10) as client,
                client.stream("GET", "/live/events") as response,
            ):
                assert response.headers["content-type"].startswith("text/event-stream")
                lines = response.aiter_lines()
                initial = await asyncio.wait_for(next_update(lines), 10)
                assert first in initial
                second = await blog.post("two")
                pushed = await asyncio.wait_for(next_update(lines), 10)
                while second not in pushed:  # an earlier change (state.db) may come first
                    pushed = await asyncio.wait_for(next_update(lines), 10)
                assert first in pushed

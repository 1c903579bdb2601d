"""Live updates: notice writes to the data directory (watchfiles) and push re-rendered parts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import watchfiles

__all__ = ["ChangeFeed", "live_fragments"]

MIN_INTERVAL = 0.25
"""Seconds between two renders of one stream: a busy broker writes state.db many times a second."""

REFRESH = 3.0
"""Re-render at least this often: "running" turns to "stopped" without any write."""


class ChangeFeed:
    """A counter bumped whenever something under the data directory changes.

    One watcher per dashboard, started by the first stream that waits on it; every stream
    waits on the same counter.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.version = 0
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def wait(self, seen: int, timeout: float) -> int:
        """Wait until the version differs from ``seen`` (or ``timeout``); the current version."""
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="localbroker-dashboard-watch")
        if self.version == seen:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
        return self.version

    async def _watch(self) -> None:
        async for _ in watchfiles.awatch(
            self.data_dir, stop_event=self._stop, debounce=50, step=20, recursive=True
        ):
            self.version += 1
            self._changed.set()
            self._changed = asyncio.Event()

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def live_fragments(
    feed: ChangeFeed, render: Callable[[], Awaitable[str]]
) -> AsyncIterator[dict[str, str]]:
    """Server-sent events ``update`` carrying ``render()``: now, then after each change that alters it."""
    last: str | None = None
    version = feed.version
    while True:
        html = await render()
        if html != last:
            last = html
            yield {"event": "update", "data": html}
        await asyncio.sleep(MIN_INTERVAL)
        version = await feed.wait(version, REFRESH)

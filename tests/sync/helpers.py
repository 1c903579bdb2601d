"""Helpers of the sync tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis

from localbroker import Broker


def stream_ids(client: redis.Redis, stream: str) -> list[str]:
    """Event ids of every entry of ``stream``, in stream order."""
    return [fields[b"id"].decode() for _, fields in client.xrange(stream)]


async def wait_until(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``check`` (sync or async) until it is truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)


async def publish_n(broker: Broker, topic: str, n: int, start: int = 0) -> list[str]:
    """Publish ``n`` events in batches; their ids in order."""
    from localbroker import GenericEvent

    ids: list[str] = []
    for lo in range(start, start + n, 500):
        events = [GenericEvent(topic=topic, n=i) for i in range(lo, min(lo + 500, start + n))]
        ids.extend(r.id for r in await broker.publish_many(events))
    return ids

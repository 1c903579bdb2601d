"""Baselines measured in the same run as localbroker: Redis Streams, the disk, asyncio.Queue."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers.redis import NO_FSYNC, RedisServer

PAYLOAD = b'{"id":"01936d5e-0000-7000-8000-000000000000","topic":"bench.event","data":{"n":1,"text":"hello world"}}'


@contextmanager
def private_redis() -> Iterator[str | None]:
    """The URL of a private redis-server on a free port (None if the binary is missing)."""
    binary = RedisServer.binary_path()
    if binary is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(binary, Path(tmp), args=NO_FSYNC)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


def redis_baselines(url: str, n: int) -> dict[str, float]:
    """XADD one by one and pipelined; XREADGROUP+XACK one by one and in batches of 100 (per s)."""
    import redis

    r = redis.Redis.from_url(url)
    fields = {"envelope": PAYLOAD}
    out: dict[str, float] = {}

    r.delete("b1")
    started = time.perf_counter()
    for _ in range(n):
        r.xadd("b1", fields)
    out["redis_xadd_one"] = n / (time.perf_counter() - started)

    r.delete("b2")
    started = time.perf_counter()
    pipe = r.pipeline(transaction=False)
    for i in range(n * 5):
        pipe.xadd("b2", fields)
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    out["redis_xadd_pipelined"] = n * 5 / (time.perf_counter() - started)

    r.xgroup_create("b1", "g", id="0")
    started = time.perf_counter()
    for _ in range(n):
        ((_, entries),) = r.xreadgroup("g", "c", {"b1": ">"}, count=1)
        r.xack("b1", "g", entries[0][0])
    out["redis_consume_ack_one"] = n / (time.perf_counter() - started)

    r.xgroup_create("b2", "g", id="0")
    started = time.perf_counter()
    total = 0
    while total < n * 5:
        ((_, entries),) = r.xreadgroup("g", "c", {"b2": ">"}, count=100)
        r.xack("b2", "g", *[e[0] for e in entries])
        total += len(entries)
    out["redis_consume_ack_batch100"] = total / (time.perf_counter() - started)
    r.close()
    return out


def fsync_rate(directory: Path, seconds: float = 1.0) -> float:
    """Appends of one small record, each followed by fdatasync, per second."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        count = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            os.write(fd, PAYLOAD)
            os.fdatasync(fd)
            count += 1
        return count / (time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()


async def asyncio_queue_rate(n: int) -> float:
    """In-memory hand-over from one producer task to one consumer task, per second."""
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1000)

    async def consume() -> None:
        for _ in range(n):
            await queue.get()

    started = time.perf_counter()
    consumer = asyncio.create_task(consume())
    for i in range(n):
        await queue.put(i)
    await consumer
    return n / (time.perf_counter() - started)

"""A broker process for the several-processes tests (run with ``python -m``).

``publish DIR NAME COUNT``: 16 concurrent publishers publish COUNT events in all; each
acknowledged one is printed as ``NAME ID OFFSET``. ``handle DIR``: subscriber ``cross`` on
``x.>``; prints ``ready`` once started and ``handled ID PID`` for each event it handles.
``group DIR NAME COUNT``: subscribers ``g0``..``g3`` on ``grp.>`` (shared with the other
processes of the directory), prints ``ready``, publishes COUNT events (keys ``NAME-k0``..
``NAME-k9``), printing ``published ID``, and ``handled SUB ID KEY N PID TIME`` per handling (monotonic clock).
All run until done or killed.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from collections.abc import Awaitable, Callable

from localbroker import Broker, GenericEvent


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def publish(directory: str, name: str, count: int) -> None:
    numbers = itertools.count()

    async with Broker(directory, segment_bytes=256 * 1024) as broker:

        async def publisher() -> None:
            while (n := next(numbers)) < count:
                result = await broker.publish("x.test", {"w": name, "n": n}, key=f"{name}-{n}")
                say(f"{name} {result.id} {result.offset}")

        await asyncio.gather(*(publisher() for _ in range(16)))


async def handle(directory: str) -> None:
    broker = Broker(directory, start_from="earliest")

    @broker.subscriber("x.>", name="cross")
    async def cross(event: GenericEvent) -> None:
        say(f"handled {event.id} {os.getpid()}")

    async with broker:
        say("ready")
        await asyncio.Event().wait()  # until killed


async def group(directory: str, name: str, count: int) -> None:
    broker = Broker(directory, start_from="earliest")

    def recorder(sub: str) -> Callable[[GenericEvent], Awaitable[None]]:
        async def record(event: GenericEvent) -> None:
            n, now = event.payload()["n"], time.monotonic()  # one clock for the whole host
            say(f"handled {sub} {event.id} {event.key} {n} {os.getpid()} {now:.6f}")

        return record

    for sub in ("g0", "g1", "g2", "g3"):
        broker.subscribe(recorder(sub), "grp.>", name=sub)
    async with broker:
        say("ready")
        for n in range(count):
            result = await broker.publish("grp.work", {"n": n}, key=f"{name}-k{n % 10}")
            say(f"published {result.id}")
        await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "publish":
        asyncio.run(publish(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    elif mode == "group":
        asyncio.run(group(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    else:
        asyncio.run(handle(sys.argv[2]))

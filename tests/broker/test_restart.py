"""A closed broker starts again: ``async with broker:`` twice in a row, in one loop or another."""

from __future__ import annotations

import asyncio
from pathlib import Path

from localbroker import Broker, DeliveryContext, Event, RetryPolicy


class Ping(Event, topic="ping"):
    n: int


async def test_async_with_twice_in_a_row_delivers_in_both_runs(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    broker = Broker(tmp_path, start_from="earliest", retry=RetryPolicy.immediate())

    @broker.subscriber("ping", name="pong")
    async def pong(event: Ping, ctx: DeliveryContext) -> None:
        seen.append((event.n, ctx.offset))

    async with broker:
        await broker.publish(Ping(n=1))
        await broker.wait_idle()
    async with broker:
        # The second run reads on from the first run's position: nothing is delivered twice.
        await broker.publish(Ping(n=2))
        await broker.wait_idle()
        assert broker.runtime("pong") is not None
    assert seen == [(1, 0), (2, 1)]


def test_a_broker_restarts_in_another_event_loop(tmp_path: Path) -> None:
    """What two ``with TestClient(app)`` blocks do: each runs the app in a loop of its own."""
    seen: list[int] = []
    broker = Broker(tmp_path)

    @broker.subscriber("ping", name="pong")
    async def pong(event: Ping) -> None:
        seen.append(event.n)

    async def run(n: int) -> None:
        async with broker:
            await broker.publish(Ping(n=n))
            await broker.wait_idle()

    asyncio.run(run(1))
    asyncio.run(run(2))
    assert seen == [1, 2]


async def test_a_broker_closed_before_it_started_can_start(tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    await broker.close()
    async with broker:
        result = await broker.publish("ping", {"n": 1})
    assert result.offset == 0

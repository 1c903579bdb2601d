"""localbroker.testing: the real broker on a temporary directory, drained, on fake time."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from localbroker import Broker, DeliveryContext, Event, RetryPolicy, Router
from localbroker.broker.clock import LoopClock
from localbroker.testing import FakeClock, TestBroker


class OrderPlaced(Event, topic="order.placed"):
    n: int


class OrderShipped(Event, topic="order.shipped"):
    n: int


async def test_dlq_after_five_tries_with_a_30_s_backoff_runs_on_fake_time() -> None:
    tries: list[float] = []
    broker = TestBroker(max_tries=5, retry=RetryPolicy(backoff_initial=30, backoff_max=30))

    @broker.subscriber("order.placed", name="billing")
    async def bill(event: OrderPlaced) -> None:
        tries.append(broker.clock.time())
        raise ValueError(f"card declined for order {event.n}")

    async with broker:
        await broker.publish(OrderPlaced(n=1))
        await broker.drain()
        [entry] = await broker.dlq.list()
        assert (entry.subscriber, entry.tries) == ("billing", 5)
        assert "card declined for order 1" in entry.error
    # Each retry came 30 fake seconds after the try before it.
    assert [b - a for a, b in itertools.pairwise(tries)] == [30.0] * 4


async def test_an_ack_timeout_fires_when_the_fake_clock_passes_it() -> None:
    release = asyncio.Event()
    attempts: list[int] = []
    broker = TestBroker(ack_timeout=60)

    @broker.subscriber("order.placed", name="slow")
    async def slow(event: OrderPlaced, ctx: DeliveryContext) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            await release.wait()  # hangs: only the ack timer ends this try

    async with broker:
        await broker.publish(OrderPlaced(n=1))
        with pytest.raises(TimeoutError, match=r"slow \(1 running"):
            await broker.drain(timeout=0.3)  # never moves the clock under a running handler
        await broker.advance(61)
        await broker.drain()
        assert attempts == [1, 2]
        state = broker.runtime("slow")
        assert state is not None
        assert state.state.failures == 1


async def test_drain_waits_for_follow_up_events_and_keeps_key_order() -> None:
    router = Router()
    shipped: list[tuple[str | None, int]] = []

    @router.subscriber("order.placed", name="warehouse", concurrency=4)
    async def ship(event: OrderPlaced, ctx: DeliveryContext) -> None:
        if event.n == 2 and ctx.attempt == 1:
            raise RuntimeError("forklift busy")  # holds back the key's later events
        await ctx.broker.publish(OrderShipped(n=event.n, key=event.key))

    @router.subscriber("order.shipped", name="mail")
    async def mail(event: OrderShipped) -> None:
        shipped.append((event.key, event.n))

    async with TestBroker(router) as broker:
        first = await broker.publish(OrderPlaced(n=1, key="a"))
        for n, key in ((2, "b"), (3, "b"), (4, "a")):
            await broker.publish(OrderPlaced(n=n, key=key))
        await broker.drain()
        assert sorted(shipped) == [("a", 1), ("a", 4), ("b", 2), ("b", 3)]
        assert [n for key, n in shipped if key == "b"] == [2, 3]
        chain = await broker.chain(first.correlation_id)
        assert [node.event.topic for _, node in chain.walk()] == ["order.placed", "order.shipped"]


async def test_the_temporary_directory_is_new_at_each_start_and_removed_at_close() -> None:
    broker = TestBroker()
    dirs = []
    for _ in range(2):
        async with broker:
            dirs.append(broker.data_dir)
            assert (broker.data_dir / "log").is_dir()
            assert (await broker.publish("order.placed", {"n": 1})).offset == 0
        assert not broker.data_dir.exists()
    assert dirs[0] != dirs[1]


async def test_a_given_data_dir_is_kept(tmp_path: Path) -> None:
    async with TestBroker(data_dir=tmp_path) as broker:
        await broker.publish("order.placed", {"n": 1})
    assert (tmp_path / "log").is_dir()


def test_fake_clock_runs_timers_in_order_at_their_own_time() -> None:
    clock = FakeClock()
    fired: list[tuple[str, float]] = []
    clock.call_later(5, lambda: fired.append(("b", clock.time())))
    clock.call_later(1, lambda: fired.append(("a", clock.time())))
    clock.call_later(9, lambda: fired.append(("c", clock.time()))).cancel()
    assert clock.next_timer() == 1
    clock.advance(6)
    assert fired == [("a", 1.0), ("b", 5.0)]
    assert (clock.time(), clock.next_timer()) == (6.0, None)
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-1)


async def test_a_plain_broker_keeps_the_event_loops_clock(tmp_path: Path) -> None:
    async with Broker(tmp_path) as broker:
        assert isinstance(broker.clock, LoopClock)
        loop = asyncio.get_running_loop()
        before = loop.time()
        assert before <= broker.clock.time() <= loop.time()


def test_the_pytest_fixture_works_in_an_applications_tests(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        'pytest_plugins = ["localbroker.testing.pytest_plugin"]\n'
    )
    (tmp_path / "test_app.py").write_text(
        textwrap.dedent(
            """
            from localbroker import Event, Router
            from localbroker.testing import TestBroker

            class Ping(Event, topic="ping"):
                n: int

            router = Router()
            seen = []

            @router.subscriber("ping", name="pong")
            async def pong(event: Ping) -> None:
                seen.append(event.n)

            async def test_ping(test_broker: TestBroker) -> None:
                test_broker.include_router(router)
                async with test_broker:
                    await test_broker.publish(Ping(n=7))
                    await test_broker.drain()
                assert seen == [7]

            async def test_left_running_is_closed_by_the_fixture(test_broker: TestBroker) -> None:
                await test_broker.start()
                global left
                left = test_broker.data_dir

            def test_and_its_directory_removed() -> None:
                assert not left.exists()
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "asyncio_mode=auto"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert child.returncode == 0, child.stdout + child.stderr
    assert "3 passed" in child.stdout

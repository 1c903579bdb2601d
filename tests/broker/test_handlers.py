"""Handlers that misbehave: BaseExceptions, SystemExit, threads that never return.

The process-level cases run a real child process and judge it by its exit code, its output
and the state it leaves on disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from localbroker import Broker, DeliveryContext, Event
from tests.broker.events import Note
from tests.broker.test_delivery import make_broker
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def run_child(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter; a child that hangs fails the test after 60 s."""
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


class Halt(BaseException):
    """A BaseException that is neither an Exception nor one of asyncio's own."""


async def cancelled_by_someone_else() -> None:
    # A real CancelledError that the broker did not cause: awaiting a task another party
    # cancelled (a timeout in a library, a cancelled sub-request).
    task = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    task.cancel()
    await task


async def generator_exit() -> None:
    raise GeneratorExit


async def halt() -> None:
    raise Halt("stop right there")


@pytest.mark.parametrize(
    ("raiser", "error_type"),
    [
        (cancelled_by_someone_else, "CancelledError"),
        (generator_exit, "GeneratorExit"),
        (halt, "Halt"),
    ],
)
async def test_a_handler_raising_a_base_exception_fails_its_try_and_the_queue_goes_on(
    tmp_path: Path, raiser: Callable[[], Awaitable[None]], error_type: str, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="localbroker.delivery")
    broker = make_broker(tmp_path)
    handled: list[int] = []

    @broker.subscriber("note.added", name="fragile", max_tries=2)
    async def fragile(event: Note, ctx: DeliveryContext) -> None:
        if event.n == 0 or (event.n == 1 and ctx.attempt == 1):  # 0 always, 1 once
            await raiser()
        handled.append(event.n)

    async with broker:
        first = await broker.publish(Note(n=0))
        for n in (1, 2):
            await broker.publish(Note(n=n))
        await broker.wait_idle()
        (entry,) = await broker.dlq.list(subscriber="fragile")
        errors = await broker.store.errors(subscriber="fragile")
    assert sorted(handled) == [1, 2]
    assert (entry.event_id, entry.tries) == (first.id, 2)
    assert sorted(e.offset for e in errors) == [0, 0, 1]
    assert {e.error_type for e in errors} == {error_type}
    lines = [r.getMessage() for r in caplog.records]
    assert any(
        line.startswith(f"Failed 2 times, subscriber: fragile, error: {error_type}(")
        and line.endswith("-> DLQ")
        for line in lines
    ), lines

    # The subscriber is alive after a restart too.
    again = make_broker(tmp_path)
    later: list[int] = []

    @again.subscriber("note.added", name="fragile", max_tries=2)
    async def fine(event: Note) -> None:
        later.append(event.n)

    async with again:
        await again.publish(Note(n=3))
        await again.wait_idle()
    assert later == [3]


async def test_a_def_handler_raising_a_base_exception_fails_its_try(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)

    @broker.subscriber("note.added", name="threaded", max_tries=1)
    def threaded(event: Note) -> None:
        if event.n == 0:
            raise Halt("in a thread")

    async with broker:
        for n in range(3):
            await broker.publish(Note(n=n))
        await broker.wait_idle()
        (entry,) = await broker.dlq.list(subscriber="threaded")
        runtime = broker.runtime("threaded")
        assert runtime is not None
        assert (runtime.state.processed, runtime.state.dead) == (2, 1)
    assert entry.offset == 0


async def test_close_returns_when_a_handler_swallows_its_cancellation(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)
    started = asyncio.Event()

    @broker.subscriber("note.added", name="stubborn")
    async def stubborn(event: Note) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return  # swallowed: the broker asked it to stop and it returns as if done

    await broker.start()
    await broker.publish(Note(n=1))
    await asyncio.wait_for(started.wait(), 10)
    async with asyncio.timeout(20):
        await broker.close()


STUBBORN_CHILD = textwrap.dedent(
    """
    import asyncio, logging, sys, time
    from localbroker import Broker

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    async def main() -> None:
        broker = Broker(sys.argv[1], start_from="earliest", handler_shutdown_timeout=1.0)
        started = asyncio.Event()

        @broker.subscriber("work.todo", name="stubborn")
        async def never_stops(event) -> None:
            started.set()
            try:
                while True:
                    try:
                        await asyncio.sleep(3600)
                    except asyncio.CancelledError:
                        continue  # swallowed, every time
            finally:
                print("handler finally ran", flush=True)

        async with broker:
            await broker.publish("work.todo", {})
            await asyncio.wait_for(started.wait(), 30)
            closing = time.monotonic()
        print(f"closed after {time.monotonic() - closing:.1f} s", flush=True)

    asyncio.run(main())  # its teardown waits for every task left: none may be left
    print("exiting", flush=True)
    """
)


def test_an_async_handler_swallowing_every_cancellation_cannot_hang_close_or_exit(
    tmp_path: Path,
) -> None:
    """Leftover d: close() is bounded (handler_shutdown_timeout), warns naming the subscriber
    and the handler, and closes the handler's coroutine, so asyncio.run can end too."""
    child = run_child(STUBBORN_CHILD, str(tmp_path))
    assert child.returncode == 0, child.stderr
    out = child.stdout.splitlines()
    assert out[0] == "handler finally ran"
    closed = float(out[1].removeprefix("closed after ").removesuffix(" s"))
    assert 1.0 <= closed < 10, out
    assert out[2] == "exiting"
    assert (
        "subscriber stubborn: handler __main__.main.<locals>.never_stops did not stop when "
        "cancelled at close" in child.stderr
    )
    assert "Traceback" not in child.stderr


async def test_a_def_handler_waiting_for_its_thread_does_not_burn_tries(tmp_path: Path) -> None:
    # One thread (concurrency 1): the retry of a try that outlived its ack timeout waits for
    # that thread, without running twice at once and without its own ack timer running.
    broker = make_broker(tmp_path, ack_timeout=0.2, max_tries=2)
    release = threading.Event()
    attempts: list[tuple[int, int]] = []
    active = peak = 0
    lock = threading.Lock()

    @broker.subscriber("note.added", name="slow-def")
    def slow(event: Note, ctx: DeliveryContext) -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
            attempts.append((event.n, ctx.attempt))
        try:
            if event.n == 0 and ctx.attempt == 1:
                release.wait(30)
        finally:
            with lock:
                active -= 1

    @broker.subscriber("clock.tick", name="clock")
    async def clock(event: Event) -> None:
        await asyncio.sleep(3600)  # times out every 0.2 s: a clock to wait on

    async with broker:
        await broker.publish(Note(n=0))
        await broker.publish(Note(n=1))
        await wait_until(
            lambda: broker.store.errors(subscriber="slow-def"), what="the first try's timeout"
        )
        await broker.publish("clock.tick", {})
        # Two ack timeouts go by while the retry waits for the thread.
        await wait_until(
            lambda: broker.dlq.list(subscriber="clock"), what="two ack timeouts of the clock"
        )
        release.set()
        await broker.wait_idle()
        errors = await broker.store.errors(subscriber="slow-def")
        assert await broker.dlq.list(subscriber="slow-def") == []
    assert sorted(attempts) == [(0, 1), (0, 2), (1, 1)]
    assert peak == 1
    assert [e.error_type for e in errors] == ["AckTimeout"]


EXIT_CHILD = textwrap.dedent(
    """
    import asyncio, logging, sys
    from localbroker import Broker, RetryPolicy

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    data, how = sys.argv[1], sys.argv[2]

    def poison() -> None:
        if how == "sys.exit":
            sys.exit(3)
        raise KeyboardInterrupt

    async def main() -> None:
        broker = Broker(data, start_from="earliest", max_tries=2, retry=RetryPolicy.immediate())

        if how == "sys.exit":
            @broker.subscriber("job.run", name="jobs")
            async def run(event) -> None:
                print(f"handling {event.n}", flush=True)
                if event.n == 0:
                    poison()
        else:
            @broker.subscriber("job.run", name="jobs")
            def run(event) -> None:  # a plain def: the exception comes from its thread
                print(f"handling {event.n}", flush=True)
                if event.n == 0:
                    poison()

        async with broker:
            if broker.log.next_offset == 0:
                await broker.publish("job.run", {"n": 0})
                await broker.publish("job.run", {"n": 1})
            await broker.wait_idle(timeout=60)
            print("idle", flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "exit_code", "error_type"),
    [("sys.exit", 3, "SystemExit"), ("KeyboardInterrupt", -signal.SIGINT, "KeyboardInterrupt")],
)
def test_a_handler_exiting_stops_the_app_and_the_event_reaches_the_dlq(
    tmp_path: Path, how: str, exit_code: int, error_type: str
) -> None:
    runs = []
    for _ in range(3):
        child = run_child(EXIT_CHILD, str(tmp_path), how)
        runs.append(child)
    first, second, third = runs
    # Each run with the poison at the head tries it once and exits as the handler asked.
    for n, run in ((1, first), (2, second)):
        assert run.returncode == exit_code, run.stderr
        assert run.stdout.split("\n")[0] == "handling 0"
        assert "idle" not in run.stdout
        assert f"Failed {n} times, subscriber: jobs, error: {error_type}(" in run.stderr
        assert f"subscriber jobs: handler raised {error_type}(" in run.stderr
    assert "-> DLQ" in second.stderr
    # The next run no longer sees it: it is in the DLQ; the event behind it is handled.
    assert third.returncode == 0, third.stderr
    assert third.stdout.split() == ["handling", "1", "idle"]

    async def dead_letters() -> list[int]:
        async with Broker(tmp_path) as broker:
            return [e.offset for e in await broker.dlq.list(subscriber="jobs")]

    assert asyncio.run(dead_letters()) == [0]


ENDED_OWNER_CHILD = textwrap.dedent(
    """
    import asyncio, logging, sys
    from localbroker import Broker

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    async def main() -> None:
        broker = Broker(sys.argv[1], start_from="earliest")

        @broker.subscriber("job.run", name="jobs")
        async def run(event) -> None:
            sys.exit(4)

        await asyncio.create_task(broker.start())  # started by a task that has ended since
        await broker.publish("job.run", {})
        try:
            await asyncio.sleep(3600)
        finally:
            print("cleaned up", flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_a_handler_exiting_stops_the_loop_when_the_starting_task_has_ended(tmp_path: Path) -> None:
    child = run_child(ENDED_OWNER_CHILD, str(tmp_path))
    assert child.returncode == 4, child.stderr
    assert child.stdout == "cleaned up\n"
    assert "Failed 1 times, subscriber: jobs, error: SystemExit('4')" in child.stderr
    assert "Traceback" not in child.stderr


HUNG_CHILD = textwrap.dedent(
    """
    import asyncio, logging, os, sys, threading, time
    from localbroker import Broker

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    # As many hung handlers as the event loop's default executor has threads.
    HUNG = min(32, (os.cpu_count() or 1) + 4)
    never = threading.Event()
    started = threading.Semaphore(0)

    async def main() -> None:
        broker = Broker(sys.argv[1], start_from="earliest", ack_timeout=60,
                        handler_shutdown_timeout=1.0)
        loop = asyncio.get_running_loop()
        quick_done = asyncio.Event()

        @broker.subscriber("work.slow", name="stuck", concurrency=HUNG)
        def stuck(event) -> None:
            started.release()
            never.wait()  # hung for good

        @broker.subscriber("work.quick", name="quick")
        def quick(event) -> None:
            print(f"quick handled in {threading.current_thread().name}", flush=True)
            loop.call_soon_threadsafe(quick_done.set)

        async with broker:
            for i in range(HUNG):
                await broker.publish("work.slow", {"i": i})
            for _ in range(HUNG):
                while not started.acquire(blocking=False):
                    await asyncio.sleep(0.01)
            print("all stuck", flush=True)
            await broker.publish("work.quick", {})
            await asyncio.wait_for(quick_done.wait(), 30)
            print("closing", flush=True)
            closing = time.monotonic()
        print(f"closed after {time.monotonic() - closing:.1f} s", flush=True)

    asyncio.run(main())
    print("exiting", flush=True)
    """
)


@pytest.mark.slow
def test_hung_def_handlers_hold_back_only_their_subscriber_and_never_the_exit(
    tmp_path: Path,
) -> None:
    child = run_child(HUNG_CHILD, str(tmp_path))
    out = child.stdout.splitlines()
    assert child.returncode == 0, child.stderr
    # The other subscriber's handler ran, in a thread of its own.
    assert out[:2] == ["all stuck", "quick handled in localbroker-handler-quick-1"], out
    # close() returned after its bound, saying which threads it abandoned, and the process
    # exited with the hung threads still in their calls.
    assert out[2] == "closing"
    assert out[3].startswith("closed after ")
    assert out[4] == "exiting"
    hung = min(32, (os.cpu_count() or 1) + 4)
    assert (
        f"subscriber stuck: {hung} plain def handler thread(s) still running 1.0 s after close "
        "began; abandoned" in child.stderr
    )

"""Test mode: the real broker on a temporary directory, with fake time.

Example::

    from localbroker.testing import TestBroker

    async def test_welcome_mail_is_sent() -> None:
        async with TestBroker(users.router) as broker:
            await broker.publish(UserCreated(user_id="u1", name="Ann"))
            await broker.drain()          # delivered, retried, follow-up events handled
            assert ...

A :class:`TestBroker` *is* a :class:`~localbroker.Broker` (same log, state, retries, ack
timers, DLQ, chains and key order), on a temporary directory it removes at close, with fsync
off and a :class:`FakeClock` in its delivery timers. The pytest fixture ``test_broker`` comes
with ``pytest_plugins = ["localbroker.testing.pytest_plugin"]`` in a ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localbroker.broker.broker import Broker
from localbroker.broker.clock import Clock
from localbroker.broker.router import Router
from localbroker.errors import BrokerStateError

__all__ = ["FakeClock", "TestBroker"]

#: Seconds of real time ``drain()`` waits for running handlers before it looks again.
_POLL = 0.01


class _FakeTimer:
    __slots__ = ("callback", "cancelled", "is_sleep", "when")

    def __init__(self, when: float, callback: Callable[[], None], is_sleep: bool) -> None:
        self.when = when
        self.callback = callback
        self.is_sleep = is_sleep
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A :class:`~localbroker.broker.clock.Clock` that moves only when told to.

    :meth:`advance` moves it on, running every timer that falls due on the way, in order,
    each at its own time. Use it from the event loop's thread (``time()`` from anywhere).

    Example::

        clock = FakeClock()
        broker = Broker("./data", clock=clock)   # or TestBroker(), which makes one
        ...
        clock.advance(30)                        # a 30 s backoff has passed
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        """The fake time in seconds."""
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> _FakeTimer:
        """Run ``callback`` when the clock has been advanced by ``delay`` seconds."""
        return self._schedule(delay, callback, is_sleep=False)

    async def sleep(self, delay: float) -> None:
        """Return once the clock has been advanced by ``delay`` seconds."""
        future = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        timer = self._schedule(delay, wake, is_sleep=True)
        try:
            await future
        finally:
            timer.cancel()

    def _schedule(
        self, delay: float, callback: Callable[[], None], *, is_sleep: bool
    ) -> _FakeTimer:
        timer = _FakeTimer(self._now + max(delay, 0.0), callback, is_sleep)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    def next_timer(self) -> float | None:
        """When the next :meth:`call_later` callback is due (sleeps not counted), or None."""
        due = [t.when for _, _, t in self._timers if not t.cancelled and not t.is_sleep]
        return min(due, default=None)

    def advance(self, seconds: float) -> None:
        """Move the clock on by ``seconds``, running the timers due on the way."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back ({seconds} s)")
        self.advance_to(self._now + seconds)

    def advance_to(self, when: float) -> None:
        """Move the clock on to ``when`` (never back), running the timers due on the way."""
        while self._timers and self._timers[0][0] <= when:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._now = max(self._now, timer.when)
                timer.callback()
        self._now = max(self._now, when)


class TestBroker(Broker):
    """The real :class:`~localbroker.Broker`, set up for tests.

    - its log and state live in a temporary directory made at each start and removed at
      close (unless ``data_dir`` is given);
    - ``fsync="never"`` (the process does not crash mid-test; nothing waits for the disk);
    - retry backoff and ack timers run on a :class:`FakeClock` (``broker.clock``), moved by
      :meth:`drain` and :meth:`advance` (``fake_time=False`` keeps the loop's clock);
    - ``routers`` are included at once.

    Every other option is :class:`~localbroker.Broker`'s and means the same.
    """

    __test__ = False  # a class named Test*, but not a pytest test class

    def __init__(
        self,
        *routers: Router,
        data_dir: str | Path | None = None,
        fake_time: bool = True,
        clock: Clock | None = None,
        **options: Any,
    ) -> None:
        options.setdefault("fsync", "never")
        if clock is None and fake_time:
            clock = FakeClock()
        self._temporary = data_dir is None
        # Replaced at each start by a fresh temporary directory.
        super().__init__(data_dir or tempfile.gettempdir(), clock=clock, **options)
        for router in routers:
            self.include_router(router)

    async def start(self) -> None:
        """Start on a fresh temporary directory (unless ``data_dir`` was given)."""
        if self._temporary and (self._closed or not self._started):
            self.data_dir = Path(tempfile.mkdtemp(prefix="localbroker-test-"))
            self.config = self.config.model_copy(update={"data_dir": self.data_dir})
        try:
            await super().start()
        except BaseException:
            if self._temporary:
                await asyncio.to_thread(shutil.rmtree, self.data_dir, True)
            raise

    async def close(self) -> None:
        """Close as :meth:`Broker.close` does, then remove the temporary directory."""
        try:
            await super().close()
        finally:
            if self._temporary and self._started:
                await asyncio.to_thread(shutil.rmtree, self.data_dir, True)

    async def drain(self, timeout: float = 10.0) -> None:
        """Run until idle: every event handled or dead-lettered, follow-up events included.

        Whenever nothing runs and only timers are left (a retry's backoff), the fake clock
        moves on to the next one, so ``max_tries`` failures with a 30 s backoff reach the DLQ
        in milliseconds. It never moves the clock while a handler runs (its work takes real
        time, and its ack timer must not fire for that): for an ack timeout, ``await
        advance(seconds)`` first. Raises ``TimeoutError`` after ``timeout`` real seconds,
        naming the subscribers still busy, and what :meth:`wait_idle` raises.
        """
        try:
            async with asyncio.timeout(timeout):
                while not self._idle():
                    clock = self._clock
                    if isinstance(clock, FakeClock) and await self._settled():
                        due = clock.next_timer()
                        if due is not None:
                            clock.advance_to(due)
                            continue
                    await self._wait_for_progress(_POLL)
        except TimeoutError:
            busy = ", ".join(
                f"{r.name} ({r.running} running, {r.in_flight} in flight)"
                for r in self._runtimes.values()
                if not r.idle
            )
            raise TimeoutError(
                f"the test broker was not idle after {timeout} s: {busy or 'nothing left'}; "
                "a hung handler's ack timer runs on the fake clock: 'await broker.advance(s)'"
            ) from None

    async def _settled(self) -> bool:
        """Nothing runs or waits to run, and stays so while the loop turns twice."""
        for _ in range(2):
            if not all(r.settled for r in self._runtimes.values()):
                return False
            await asyncio.sleep(0)
        return all(r.settled for r in self._runtimes.values())

    async def advance(self, seconds: float) -> None:
        """Move the fake clock on by ``seconds`` (firing ack timers and backoffs due by then)
        and let the tasks it woke run."""
        clock = self._clock
        if not isinstance(clock, FakeClock):
            raise BrokerStateError("advance() needs fake time: TestBroker(fake_time=True)")
        clock.advance(seconds)
        for _ in range(3):
            await asyncio.sleep(0)

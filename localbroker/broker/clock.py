"""The time a subscriber's timers (retry backoff, ack deadlines) are measured in.

Production uses the event loop's own clock (:class:`LoopClock`); tests hand the broker a
:class:`~localbroker.testing.FakeClock` that only moves when told to, so "five tries with a
30 s backoff" or an ack timeout run in milliseconds without patching asyncio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "LoopClock", "Timer"]


class Timer(Protocol):
    """A callback scheduled on a :class:`Clock` (``asyncio.TimerHandle`` is one); hashable."""

    def cancel(self) -> None: ...


@runtime_checkable
class Clock(Protocol):
    """Where the broker's delivery timers read the time and wait.

    ``time()`` is called from handler threads too: it must be safe without the loop.
    """

    def time(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything)."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` in the event loop once ``delay`` seconds have passed."""
        ...

    async def sleep(self, delay: float) -> None:
        """Return once ``delay`` seconds have passed."""
        ...


class LoopClock:
    """The event loop's clock: what every broker uses unless given another."""

    __slots__ = ("_loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def time(self) -> float:
        # loop.time() is monotonic and reads no loop state: safe from a handler's thread.
        return self._loop.time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self._loop.call_later(delay, callback)

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(delay)

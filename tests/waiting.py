"""Waiting for a condition instead of sleeping a fixed time and hoping it holds by then."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["wait_until"]


async def wait_until(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``check`` (sync or async) every 20 ms until it is truthy.

    Raises ``AssertionError`` naming ``what`` if it is still falsy after ``timeout`` seconds.
    The timeout only bounds a failing test: a passing one returns as soon as the condition
    holds, so be generous with it (machines running the suite can be loaded).

    Example::

        await wait_until(lambda: target.status()["backlog"] == 0, what="mirror to catch up")
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        await asyncio.sleep(0.02)

"""pytest fixtures for applications built on localbroker (extra ``testing``).

Enable them in a ``conftest.py``::

    pytest_plugins = ["localbroker.testing.pytest_plugin"]

then ask for ``test_broker`` in an async test (pytest-asyncio)::

    async def test_signup(test_broker: TestBroker) -> None:
        test_broker.include_router(users.router)
        async with test_broker:
            await test_broker.publish(UserCreated(user_id="u1", name="Ann"))
            await test_broker.drain()
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from localbroker.testing import TestBroker

__all__ = ["test_broker"]


@pytest_asyncio.fixture
async def test_broker() -> AsyncIterator[TestBroker]:
    """A :class:`TestBroker`, not started yet: include routers, then ``async with`` it.

    Closed at the end of the test if the test left it running (its directory removed).
    """
    broker = TestBroker()
    try:
        yield broker
    finally:
        await broker.close()

"""A webhook receiver per test, and alerts that check often and retry quickly."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from localbroker import Alerts, RetryPolicy
from tests.alerts.receiver import Receiver
from tests.waiting import wait_until

#: Checks every 50 ms and quick retries, so that a test takes a fraction of a second.
FAST: dict[str, Any] = {
    "check_interval": 0.05,
    "retry": RetryPolicy(backoff_initial=0.05, backoff_max=0.2),
    "format": "json",
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def fast_alerts(url: str, **options: Any) -> Alerts:
    return Alerts(url=url, **{**FAST, **options})


async def checks_pass(alerts: Alerts, count: int = 5) -> None:
    """Wait until ``alerts`` has checked the broker ``count`` more times (an alert that was
    going to fire again would have by then)."""
    target = alerts.state()["checks"] + count
    await wait_until(lambda: alerts.state()["checks"] >= target, what=f"{count} more checks")

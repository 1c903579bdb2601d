"""Delivery to the webhook: a bounded queue, one request at a time, retries with backoff."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from localbroker.alerts.conditions import Alert
from localbroker.alerts.config import AlertsConfig, redacted

__all__ = ["WebhookSender"]

logger = logging.getLogger("localbroker.alerts")

#: A receiver's Retry-After is honoured up to this many seconds.
MAX_RETRY_AFTER = 600.0


class WebhookSender:
    """POSTs alerts to the webhook in order, one at a time, from a task of its own.

    :meth:`submit` never waits, so checking (and the broker) never waits for the receiver.
    A failed try (connection refused, timeout, HTTP 5xx, 408 or 429) is retried with the
    configured backoff, honouring ``Retry-After``; the alerts behind it wait in a queue of
    ``queue_size``, and when that is full the oldest is dropped with a WARNING. Any other
    answer (a 4xx: wrong URL, revoked webhook, bad payload) is logged as an ERROR and that
    alert dropped: retrying cannot help.
    """

    def __init__(self, config: AlertsConfig, render: Callable[[Alert], dict[str, Any]]) -> None:
        self.config = config
        self._render = render
        self.where = f"{config.name} webhook {redacted(config.url)}"
        """The receiver, for messages (no secret)."""
        self._queue: collections.deque[Alert] = collections.deque()
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._closing = False
        self._failures = 0  # consecutive failed tries
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.failed = 0
        """Failed tries (each retried)."""
        self.refused = 0
        """Alerts the receiver refused for good (4xx), not retried."""
        self.dropped = 0
        """Alerts dropped because the queue was full."""
        self.last_sent_at: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    def start(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=self.config.timeout,
            headers={"User-Agent": "localbroker-alerts", **self.config.headers},
        )
        self._task = asyncio.create_task(self._run(), name=f"localbroker-alerts-{self.config.name}")

    def submit(self, alert: Alert) -> None:
        """Queue ``alert`` for delivery (at once; the oldest queued is dropped when full)."""
        if len(self._queue) >= self.config.queue_size:
            oldest = self._queue.popleft()
            self.dropped += 1
            logger.warning(
                "alerts: %s has not taken alerts for a while (last error: %s); the queue of "
                "%d is full, dropping the oldest: %s",
                self.where,
                self.last_error or "none, a request waits for its answer",
                self.config.queue_size,
                oldest.title,
            )
        self._queue.append(alert)
        self._ready.set()

    @property
    def queued(self) -> int:
        """Alerts not delivered yet."""
        return len(self._queue)

    def counters(self) -> dict[str, Any]:
        """Deliveries so far: sent, failed tries, refused, dropped, queued, last error."""
        return {
            "sent": self.sent,
            "failed": self.failed,
            "refused": self.refused,
            "dropped": self.dropped,
            "queued": self.queued,
            "last_sent_at": self.last_sent_at,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }

    async def close(self, timeout: float) -> None:
        """Deliver what is queued for up to ``timeout`` seconds while the receiver answers,
        then stop; what is left is logged as a WARNING."""
        self._closing = True
        self._ready.set()
        if self._failures:
            self._stop.set()  # the receiver is failing now: do not wait for it
        task = self._task
        try:
            if task is not None:
                await asyncio.wait({task}, timeout=timeout)
        finally:
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self._client is not None:
                await self._client.aclose()
        if self._queue:
            logger.warning(
                "alerts: %d alert(s) not delivered to %s before close (last error: %s): %s",
                len(self._queue),
                self.where,
                self.last_error,
                "; ".join(alert.title for alert in self._queue),
            )

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            alert = self._queue[0]
            try:
                delay = await self._deliver(alert)
            except Exception:
                # A bug (an alert that cannot be encoded, say): drop that alert, keep going.
                logger.exception("alerts: could not send to %s: %s", self.where, alert.title)
                delay = None
            if delay is None:
                # Delivered or refused. submit() may have dropped it meanwhile (full).
                if self._queue and self._queue[0] is alert:
                    self._queue.popleft()
                continue
            if self._closing:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            if self._closing:
                return

    async def _deliver(self, alert: Alert) -> float | None:
        """One try: None when done with ``alert``, else the seconds to wait before the next."""
        assert self._client is not None
        try:
            response = await self._client.post(
                str(self.config.url),
                content=orjson.dumps(self._render(alert)),
                headers={"Content-Type": "application/json"},
            )
        except httpx.HTTPError as exc:
            return self._failed(f"{type(exc).__name__}: {exc}".rstrip(": "), None)
        status = response.status_code
        if 200 <= status < 300:
            if self._failures:
                logger.warning(
                    "alerts: %s takes alerts again after %d failed tries",
                    self.where,
                    self._failures,
                )
            self._failures = 0
            self.sent += 1
            self.last_sent_at = time.time()
            return None
        answer = f"HTTP {status} {response.text[:200]!r}"
        if status in (408, 429) or status >= 500:
            return self._failed(answer, _retry_after(response))
        self.refused += 1
        self.last_error, self.last_error_at = answer, time.time()
        logger.error(
            "alerts: %s refused an alert (%s); it is dropped, not retried (check the URL and "
            "the format): %s",
            self.where,
            answer,
            alert.title,
        )
        return None

    def _failed(self, error: str, retry_after: float | None) -> float:
        self.failed += 1
        self._failures += 1
        self.last_error, self.last_error_at = error, time.time()
        if self._failures == 1:
            logger.warning(
                "alerts: %s failed (%s); retrying with backoff (up to %d alerts wait)",
                self.where,
                error,
                self.config.queue_size,
            )
        delay = self.config.retry.delay(self._failures)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        return delay


def _retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` of a 429 or 503, in seconds (the date form is not used)."""
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None

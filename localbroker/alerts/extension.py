"""The ``Alerts`` broker extension: checks the broker periodically, posts alerts to a webhook."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from localbroker.alerts.conditions import Alert, DLQBurst, Tracker
from localbroker.alerts.config import AlertsConfig, load_alerts_config, redacted
from localbroker.alerts.payload import Origin, render
from localbroker.errors import BrokerStateError, ConfigurationError
from localbroker.extras import require_extra

if TYPE_CHECKING:
    from localbroker.alerts.sender import WebhookSender
    from localbroker.broker.broker import Broker

__all__ = ["STATE_PREFIX", "Alerts"]

logger = logging.getLogger("localbroker.alerts")

#: Key prefix of each notifier's saved state in ``state.db`` (``alerts.<name>``).
STATE_PREFIX = "alerts."

#: Alerts kept in the saved state's ``recent`` list.
RECENT = 50


class Alerts:
    """Post alerts to a webhook (Slack by default) when the broker needs someone.

    Example::

        from localbroker import Alerts, Broker

        broker = Broker("./data", extensions=[
            Alerts(url="https://hooks.slack.com/services/T000/B000/XXXX", lag_events=5000),
        ])

    or, with ``LOCALBROKER_ALERT_WEBHOOK_URL`` set, ``extensions=[Alerts()]``. Options are
    those of :class:`~localbroker.alerts.AlertsConfig` (keywords or ``config=``), completed
    from ``LOCALBROKER_ALERT_*`` variables. Needs the ``alerts`` extra (httpx).

    Every ``check_interval`` it looks at ``broker.health()``, ``broker.sync_status()`` and
    the DLQ, and alerts on: new DLQ entries (one alert per burst), a subscriber stalled or
    lagging, a sync target down (see :class:`~localbroker.alerts.Condition`). Each condition
    fires once when it starts and, with ``send_resolved``, once when it clears; at most once per
    ``min_interval``. Delivery runs in a task of its own (see ``WebhookSender``): a slow or
    dead receiver never slows publishing or delivery, and closing waits for it at most
    ``close_timeout`` seconds. What fired and when is saved in ``state.db`` under
    ``alerts.<name>`` (see :meth:`state`), so a restart neither repeats an alert nor forgets
    to resolve one.

    It sees the subscribers and sync targets running in its own process.
    """

    def __init__(self, config: AlertsConfig | None = None, **options: Any) -> None:
        require_extra("localbroker.alerts.Alerts", "alerts", "httpx")
        if config is not None and options:
            raise ConfigurationError("pass either config= or keyword options to Alerts, not both")
        self.config = config if config is not None else load_alerts_config(**options)
        self._broker: Broker | None = None
        self._tracker: Tracker | None = None
        self._sender: WebhookSender | None = None
        self._task: asyncio.Task[None] | None = None
        self._recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT)
        self._checks = 0

    @property
    def key(self) -> str:
        """Where its state is saved in ``state.db`` (``alerts.<name>``)."""
        return STATE_PREFIX + self.config.name

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            raise BrokerStateError(f"alerts {self.config.name!r} are not started")
        return self._broker

    async def start(self, broker: Broker) -> None:
        """Restore the saved state, then start checking and delivering."""
        from localbroker.alerts.sender import WebhookSender

        name = self.config.name
        if any(
            isinstance(e, Alerts) and e is not self and e.config.name == name
            for e in broker.extensions
        ):
            raise ConfigurationError(
                f"two Alerts named {name!r} on one broker: give each its own name= "
                "(it keys the saved state)"
            )
        store = broker.store
        saved = await store.get_value(self.key) or {}
        tracker = Tracker(self.config, saved)
        if tracker.dlq_mark is None:
            # The first start: entries already in the DLQ are no news.
            _, tracker.dlq_mark = await store.dlq_dead_since((0.0, 0))
        self._recent = collections.deque(saved.get("recent") or (), maxlen=RECENT)
        origin = Origin(socket.gethostname(), str(broker.data_dir.resolve()), os.getpid())
        sender = WebhookSender(
            self.config, functools.partial(render, fmt=self.config.format, origin=origin)
        )
        self._broker, self._tracker, self._sender = broker, tracker, sender
        sender.start()
        self._task = asyncio.create_task(self._loop(), name=f"localbroker-alerts-{name}-check")
        await self._save()  # the DLQ mark of a first start, and "running" for the CLI
        logger.info(
            "alerts: posting to %s (%s format) every %g s at most, %d condition(s) active",
            sender.where,
            self.config.format,
            self.config.check_interval,
            len(tracker.active),
        )

    async def close(self) -> None:
        """Stop checking, give queued alerts ``close_timeout`` seconds, save the state."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sender is not None:
            await self._sender.close(self.config.close_timeout)
        if self._broker is not None and self._tracker is not None:
            try:
                await self._save(running=False)
            except Exception:
                logger.exception("alerts: could not save the alert state")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.check_interval)
            try:
                await self.check()
            except Exception:
                logger.exception("alerts: could not check the broker; trying again")

    async def check(self) -> list[Alert]:
        """Look at the broker now and queue the alerts due (the loop calls this every
        ``check_interval``); returns them."""
        broker, tracker, sender = self.broker, self._tracker, self._sender
        if tracker is None or sender is None or tracker.dlq_mark is None:
            raise BrokerStateError(f"alerts {self.config.name!r} are not started")
        entries, mark = await broker.store.dlq_dead_since(tracker.dlq_mark)
        in_dlq = await broker.store.dlq_counts() if entries else {}
        alerts = tracker.update(
            broker.health(), broker.sync_status(), DLQBurst(entries, mark, in_dlq)
        )
        for alert in alerts:
            logger.info("alert (%s %s): %s", alert.condition, alert.state, alert.title)
            self._recent.append(
                {
                    "time": alert.time,
                    "condition": str(alert.condition),
                    "state": alert.state,
                    "subject": alert.subject,
                    "title": alert.title,
                }
            )
            sender.submit(alert)
        self._checks += 1
        await self._save()
        return alerts

    def state(self) -> dict[str, Any]:
        """What this notifier knows now, as saved in ``state.db`` under :attr:`key`.

        ``active``: conditions announced and not resolved (condition, subject, since,
        fired_at, title, details) by key (``stalled:email``); ``recent``: the last alerts
        (time, condition, state, subject, title); the deliveries since this process started
        (``sent``, ``failed`` tries, ``refused``, ``dropped``, ``queued``, ``last_error``, ...);
        ``checks`` done.
        """
        tracker, sender = self._tracker, self._sender
        return {
            "url": redacted(self.config.url),
            "format": str(self.config.format),
            **(tracker.saved() if tracker is not None else {}),
            "recent": list(self._recent),
            **(sender.counters() if sender is not None else {}),
            "checks": self._checks,
        }

    async def _save(self, *, running: bool = True) -> None:
        state = self.state()
        state.update(running=running, updated=time.time(), pid=os.getpid())
        await self.broker.store.set_value(self.key, state)

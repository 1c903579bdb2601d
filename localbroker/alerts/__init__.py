"""Alerts to a webhook (Slack by default): DLQ growth, stalled or lagging subscribers, sync
targets down.

Example::

    from localbroker import Alerts, Broker

    broker = Broker("./data", extensions=[Alerts(url="https://hooks.slack.com/services/...")])

or from the environment (``LOCALBROKER_ALERT_WEBHOOK_URL``, ``LOCALBROKER_ALERT_*``)::

    broker = Broker("./data", extensions=from_env())

:class:`Alerts` needs the ``alerts`` extra (``pip install 'localbroker[alerts]'``, for httpx);
without it, constructing one raises :class:`~localbroker.MissingExtraError` naming the extra.
"""

from __future__ import annotations

import os

from localbroker.alerts.conditions import Alert, Condition
from localbroker.alerts.config import URL_ENV, AlertFormat, AlertsConfig
from localbroker.alerts.extension import Alerts

__all__ = ["Alert", "AlertFormat", "Alerts", "AlertsConfig", "Condition", "from_env"]


def from_env() -> list[Alerts]:
    """``[Alerts()]`` when ``LOCALBROKER_ALERT_WEBHOOK_URL`` is set (its other options from
    ``LOCALBROKER_ALERT_*``), else ``[]``."""
    return [Alerts()] if os.environ.get(URL_ENV) else []

"""Configuration of the webhook alerts.

Every option has a documented default and can be set by keyword or through the environment as
``LOCALBROKER_ALERT_<OPTION>`` (``LOCALBROKER_ALERT_LAG_EVENTS=5000``); the URL is
``LOCALBROKER_ALERT_WEBHOOK_URL``. Keywords win over the environment.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AnyHttpUrl, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from localbroker.config import RetryPolicy, none_from_environment, problems
from localbroker.errors import ConfigurationError

__all__ = ["URL_ENV", "AlertFormat", "AlertsConfig", "load_alerts_config", "redacted"]

#: The environment variable holding the webhook URL.
URL_ENV = "LOCALBROKER_ALERT_WEBHOOK_URL"


class AlertFormat(enum.StrEnum):
    """The JSON body POSTed to the webhook."""

    SLACK = "slack"
    """Slack's incoming-webhook message, ``{"text": ..., "blocks": [...]}`` (also taken by
    Mattermost, Rocket.Chat and Discord's ``/slack`` webhook endpoint)."""

    JSON = "json"
    """A flat object for a receiver of your own: ``condition``, ``state``, ``subject``,
    ``title``, ``text``, ``details`` (subscriber or target, counts, errors), ``time`` (ISO
    8601), ``data_dir``, ``host``, ``pid``."""


class AlertsConfig(BaseSettings):
    """Options of :class:`~localbroker.alerts.Alerts` (keywords or ``LOCALBROKER_ALERT_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="LOCALBROKER_ALERT_", extra="forbid", frozen=True, populate_by_name=True
    )

    url: AnyHttpUrl = Field(validation_alias=URL_ENV)
    """The webhook (``http://`` or ``https://``), e.g. a Slack incoming webhook
    ``https://hooks.slack.com/services/...``; environment ``LOCALBROKER_ALERT_WEBHOOK_URL``.
    Logs and the saved state show only its scheme and host (the path of a Slack webhook is
    its secret)."""
    name: str = "webhook"
    """Names this notifier in logs and its saved state (``alerts.<name>`` in ``state.db``);
    give one to each when a broker has two (say Slack and a pager)."""
    format: AlertFormat = AlertFormat.SLACK
    """The body sent: see :class:`AlertFormat`."""
    headers: dict[str, str] = {}
    """Extra HTTP headers of every request (an ``Authorization`` for your own receiver);
    in the environment as JSON."""
    check_interval: Annotated[float, Field(gt=0)] = 5.0
    """Seconds between two looks at the broker's health, sync status and DLQ."""
    lag_events: Annotated[int, Field(ge=1)] | None = 10_000
    """A subscriber this many events behind (or more) for ``lag_for`` seconds is lagging;
    ``None`` (environment ``none``): no lag alerts."""
    lag_for: Annotated[float, Field(ge=0)] = 60.0
    """Seconds a subscriber must stay ``lag_events`` behind before the alert fires."""
    sync_down_after: Annotated[float, Field(ge=0)] | None = 60.0
    """A sync target not connected for this many seconds is down; ``None``: no sync alerts."""
    min_interval: Annotated[float, Field(ge=0)] = 60.0
    """Rate limit: at most one alert per condition (per subscriber, per target, the DLQ) in
    this many seconds. DLQ entries that arrive meanwhile are reported together once it
    ends; a condition that starts again meanwhile fires then if it still holds."""
    send_resolved: bool = True
    """Also send a message when a condition clears (a stall, lag or outage ends)."""
    timeout: Annotated[float, Field(gt=0)] = 10.0
    """Seconds one HTTP request may take before it counts as failed and is retried."""
    retry: RetryPolicy = RetryPolicy(backoff_initial=1.0, backoff_multiplier=2.0, backoff_max=60.0)
    """Backoff between tries of a failed delivery (connection refused, timeout, 5xx, 429;
    a ``Retry-After`` is honoured). A 4xx other than 408 and 429 is not retried: it is
    logged as an ERROR and the alert dropped."""
    queue_size: Annotated[int, Field(ge=1)] = 100
    """Alerts waiting for delivery; when full (the receiver has been down long), the oldest
    is dropped with a WARNING."""
    close_timeout: Annotated[float, Field(ge=0)] = 2.0
    """Seconds closing the broker waits for alerts still queued, while the receiver answers;
    what is left then (or at once, when it fails) is logged as a WARNING, not sent."""

    _none = field_validator("lag_events", "sync_down_after", mode="before")(none_from_environment)


def load_alerts_config(**options: Any) -> AlertsConfig:
    """Build an :class:`AlertsConfig` from ``options`` and the environment (options win, a
    ``None`` included: ``sync_down_after=None`` turns sync alerts off).

    Raises :class:`~localbroker.errors.ConfigurationError` naming every bad option.
    """
    try:
        return AlertsConfig(**options)
    except ValidationError as exc:
        # From None: pydantic's own message shows the input, and a webhook URL is a secret.
        names = dict.fromkeys(("url", URL_ENV), f"url (or {URL_ENV})")
        raise ConfigurationError(f"invalid alerts configuration: {problems(exc, names)}") from None


def redacted(url: object) -> str:
    """``scheme://host[:port]`` of ``url``: what logs show of a webhook (its path is a secret)."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")

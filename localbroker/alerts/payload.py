"""The JSON bodies of the webhook: Slack's message format, or a flat object."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from localbroker.alerts.conditions import Alert, when
from localbroker.alerts.config import AlertFormat

__all__ = ["Origin", "render"]

#: Slack cuts a section's text at 3000 characters; a longer one is refused (invalid_blocks).
SLACK_SECTION_MAX = 3000


@dataclasses.dataclass(frozen=True, slots=True)
class Origin:
    """Where the alerts come from: shown in every message."""

    host: str
    data_dir: str
    pid: int


def render(alert: Alert, fmt: AlertFormat, origin: Origin) -> dict[str, Any]:
    """The body POSTed for ``alert``."""
    if fmt is AlertFormat.JSON:
        return {
            "source": "localbroker",
            "condition": str(alert.condition),
            "state": alert.state,
            "subject": alert.subject,
            "title": alert.title,
            "text": alert.text,
            "details": alert.details,
            "time": datetime.fromtimestamp(alert.time, UTC).isoformat(),
            "data_dir": origin.data_dir,
            "host": origin.host,
            "pid": origin.pid,
        }
    return _slack(alert, origin)


def _slack(alert: Alert, origin: Origin) -> dict[str, Any]:
    firing = alert.state == "firing"
    icon = ":rotating_light:" if firing else ":white_check_mark:"
    prefix = "" if firing else "Resolved: "
    section = f"{icon} *{_escape(prefix + alert.title)}*\n{_escape(alert.text)}"
    if len(section) > SLACK_SECTION_MAX:
        section = section[: SLACK_SECTION_MAX - 1] + "…"
    context = (
        f"localbroker · {alert.condition} · {origin.host} · {origin.data_dir} · {when(alert.time)}"
    )
    return {
        # Shown in notifications and by clients that do not draw blocks.
        "text": f"{prefix}{alert.title} ({origin.host}: {origin.data_dir})",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": section}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": _escape(context)}]},
        ],
    }


def _escape(text: str) -> str:
    """Slack's mrkdwn escaping: ``&``, ``<`` and ``>`` (an error message may hold them)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

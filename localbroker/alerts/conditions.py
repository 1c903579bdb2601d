"""What the alerts watch, and when each condition fires and clears.

:class:`Tracker` is the decision, with no I/O: at each check it is given what the broker reports
(``broker.health()``, ``broker.sync_status()``, the DLQ entries dead since its mark) and returns
the alerts to send. Its state (what fired and when, the DLQ mark) is a plain dict that the
:class:`~localbroker.alerts.Alerts` extension saves in ``state.db``, so that after a restart a
condition still holding is not announced again and one that cleared is resolved.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from localbroker.alerts.config import AlertsConfig
from localbroker.broker.health import Health, SubscriberHealth
from localbroker.state.store import DLQEntry

__all__ = ["Alert", "Condition", "DLQBurst", "Tracker", "duration", "when"]

AlertState = Literal["firing", "resolved"]


class Condition(enum.StrEnum):
    """What an alert is about."""

    DLQ = "dlq"
    """New entries in the dead letter queue: one alert per burst, naming each subscriber, how
    many entries it got and its first error. It does not resolve."""

    STALLED = "stalled"
    """A subscriber cannot read the log on (a damaged record): state ``stalled`` in
    ``broker.health()``. Resolves once it has read past the offset it stalled at."""

    LAGGING = "lagging"
    """A subscriber ``lag_events`` or more behind for ``lag_for`` seconds. Resolves when its
    lag is below ``lag_events``."""

    SYNC_DOWN = "sync_down"
    """A sync target not connected for ``sync_down_after`` seconds. Resolves when it is."""


@dataclasses.dataclass(frozen=True, slots=True)
class Alert:
    """One message: a condition that started (``firing``) or cleared (``resolved``)."""

    condition: Condition
    state: AlertState
    subject: str
    """The subscriber, the sync target, or for the DLQ the subscribers concerned."""
    title: str
    """One line, e.g. ``Subscriber email is stalled at offset 50``."""
    text: str
    """The details, a few lines (the error, the counts, how long it lasted)."""
    details: dict[str, Any]
    """The same as data: ``subscriber`` or ``target``, counts, errors, positions."""
    time: float
    """Seconds since the epoch."""


@dataclasses.dataclass(frozen=True, slots=True)
class DLQBurst:
    """DLQ entries dead since the tracker's mark (see ``StateStore.dlq_dead_since``)."""

    entries: list[tuple[DLQEntry, int]]
    """The first new entry of each subscriber, with how many new entries it has."""
    mark: tuple[float, int]
    """``(dead_at, id)`` of the newest of them."""
    in_dlq: dict[str, int]
    """Entries dead now, by subscriber (the new ones included)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Holding:
    """A condition that holds at this check."""

    condition: Condition
    subject: str
    hold_for: float
    title: str = ""
    text: str = ""
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.condition}:{self.subject}"


DLQ_KEY = str(Condition.DLQ)


class Tracker:
    """Decides which alerts to send from what the broker reports at each check.

    A condition fires once it has held for its hold time (``lag_for``, ``sync_down_after``;
    at once for a stall) and the rate limit (``min_interval`` per condition) allows, never
    again while it holds, and resolves once when it clears (with ``send_resolved``). A
    condition whose subscriber or target is not reported (not started yet, or gone) is left
    as it is: neither announced again nor resolved.
    """

    def __init__(
        self,
        config: AlertsConfig,
        saved: Mapping[str, Any] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        saved = saved or {}
        self.config = config
        self.active: dict[str, dict[str, Any]] = dict(saved.get("active") or {})
        """Conditions announced and not resolved, by key (``stalled:email``): condition,
        subject, since, fired_at, title, details."""
        mark = saved.get("dlq_mark")
        self.dlq_mark: tuple[float, int] | None = (float(mark[0]), int(mark[1])) if mark else None
        """``(dead_at, id)`` of the last DLQ entry announced; None until the first check."""
        self._clock = clock
        # Monotonic times: when a condition not announced yet was first seen holding, and when
        # each condition last fired (the rate limit).
        self._seen: dict[str, float] = {}
        self._fired: dict[str, float] = {}
        # The DLQ burst being watched: (new entries at the last check, first seen).
        self._burst: tuple[int, float] | None = None

    def saved(self) -> dict[str, Any]:
        """The state to save (restored by ``Tracker(config, saved)``)."""
        return {"active": self.active, "dlq_mark": self.dlq_mark}

    def update(
        self,
        health: Health,
        sync: Mapping[str, Mapping[str, Any]],
        burst: DLQBurst | None = None,
    ) -> list[Alert]:
        """The alerts to send now, given what the broker reports."""
        now, wall = self._clock(), time.time()
        holding = {h.key: h for h in (*self._subscribers(health), *self._targets(sync))}
        alerts = []
        for key, h in holding.items():
            if key in self.active:
                continue
            since = self._seen.setdefault(key, now)
            if now - since < h.hold_for or not self._allowed(key, now):
                continue
            del self._seen[key]
            self._fired[key] = now
            started = wall - (now - since)
            self.active[key] = {
                "condition": str(h.condition),
                "subject": h.subject,
                "since": started,
                "fired_at": wall,
                "title": h.title,
                "details": h.details,
            }
            text = f"{h.text}\nSince {when(started)} ({duration(wall - started)})."
            alerts.append(Alert(h.condition, "firing", h.subject, h.title, text, h.details, wall))
        for key in [k for k in self._seen if k not in holding]:
            del self._seen[key]
        reported = {
            f"{c}:{n}" for n in health.subscribers for c in (Condition.STALLED, Condition.LAGGING)
        }
        reported |= {f"{Condition.SYNC_DOWN}:{name}" for name in sync}
        for key in [k for k in self.active if k in reported and k not in holding]:
            fired = self.active.pop(key)
            if self.config.send_resolved:
                alerts.append(self._resolved(fired, health, sync, wall))
        if burst is not None:
            alerts.extend(self._dlq(burst, now, wall))
        return alerts

    def _allowed(self, key: str, now: float) -> bool:
        last = self._fired.get(key)
        return last is None or now - last >= self.config.min_interval

    # -- subscribers and targets -----------------------------------------------------------

    def _subscribers(self, health: Health) -> Iterator[_Holding]:
        lag_events = self.config.lag_events
        for sub in health.subscribers.values():
            stalled = self.active.get(f"{Condition.STALLED}:{sub.name}")
            if sub.stall is not None:
                yield _Holding(
                    Condition.STALLED,
                    sub.name,
                    0.0,
                    f"Subscriber {sub.name} is stalled at offset {sub.stall.position}",
                    f"{sub.stall.cause}\nNothing after it is delivered to {sub.name} until the "
                    "log is repaired: stop the broker, run 'localbroker repair DIR', start it "
                    "again.",
                    {
                        "subscriber": sub.name,
                        "position": sub.stall.position,
                        "cause": sub.stall.cause,
                    },
                )
            elif stalled is not None and _not_past(sub, stalled["details"]["position"]):
                # Not stalled (yet) but not past the damage either: after a restart, the
                # subscriber may not have reached it again.
                yield _Holding(Condition.STALLED, sub.name, 0.0)
            lagging = f"{Condition.LAGGING}:{sub.name}" in self.active
            # A stalled subscriber lags too: its stall says more, so lag does not fire for it.
            if lag_events is not None and sub.lag >= lag_events and (sub.stall is None or lagging):
                yield _Holding(
                    Condition.LAGGING,
                    sub.name,
                    self.config.lag_for,
                    f"Subscriber {sub.name} is {sub.lag} event{'s' * (sub.lag != 1)} behind",
                    f"{sub.name} has {sub.lag} events of the log not handled yet (the alert "
                    f"fires at {lag_events}); it reads at offset {sub.position}.",
                    {
                        "subscriber": sub.name,
                        "lag": sub.lag,
                        "lag_events": lag_events,
                        "position": sub.position,
                    },
                )

    def _targets(self, sync: Mapping[str, Mapping[str, Any]]) -> Iterator[_Holding]:
        after = self.config.sync_down_after
        if after is None:
            return
        for name, status in sync.items():
            if status.get("connected", True):
                continue
            server = status.get("target", name)
            yield _Holding(
                Condition.SYNC_DOWN,
                name,
                after,
                f"Sync target {name} is down",
                f"{server} is not reachable (last error: {status.get('last_error')}). The "
                f"broker goes on; {status.get('backlog', 0)} events wait in the local log and "
                "are sent when it is back.",
                {
                    "target": name,
                    "server": server,
                    "last_error": status.get("last_error"),
                    "backlog": status.get("backlog", 0),
                },
            )

    def _resolved(
        self,
        fired: Mapping[str, Any],
        health: Health,
        sync: Mapping[str, Mapping[str, Any]],
        wall: float,
    ) -> Alert:
        condition, subject = Condition(fired["condition"]), fired["subject"]
        details = dict(fired["details"])
        if condition is Condition.STALLED:
            position = health.subscribers[subject].position
            title = f"Subscriber {subject} reads on again"
            text = f"It was stalled at offset {details['position']}; it reads at offset {position} now."
            details["position_now"] = position
        elif condition is Condition.LAGGING:
            lag = health.subscribers[subject].lag
            title = f"Subscriber {subject} has caught up"
            text = f"It is {lag} events behind now (the alert fires at {details['lag_events']})."
            details["lag_now"] = lag
        else:
            backlog = sync[subject].get("backlog", 0)
            title = f"Sync target {subject} is connected again"
            text = f"{details['server']} is reachable; {backlog} events are left to send."
            details["backlog_now"] = backlog
        lasted = wall - float(fired["since"])
        text += f"\nIt lasted {duration(lasted)} (since {when(fired['since'])})."
        details.update(since=fired["since"], lasted=round(lasted, 3))
        return Alert(condition, "resolved", subject, title, text, details, wall)

    # -- the DLQ ---------------------------------------------------------------------------

    def _dlq(self, burst: DLQBurst, now: float, wall: float) -> list[Alert]:
        """One alert per burst: once no entry arrived for a check (or the burst has gone on
        for ``min_interval``), and the rate limit allows."""
        new = sum(count for _, count in burst.entries)
        if not new:
            self._burst = None
            return []
        seen, since = self._burst or (0, now)
        self._burst = (new, since)
        settled = new == seen
        if not (settled or now - since >= self.config.min_interval):
            return []
        if not self._allowed(DLQ_KEY, now):
            return []
        self._burst = None
        self._fired[DLQ_KEY] = now
        self.dlq_mark = burst.mark
        names = [entry.subscriber for entry, _ in burst.entries]
        counts = ", ".join(f"{entry.subscriber} {count}" for entry, count in burst.entries)
        title = f"DLQ: {new} new {'entry' if new == 1 else 'entries'} ({counts})"
        lines = []
        subscribers: dict[str, Any] = {}
        for first, count in burst.entries:
            in_dlq = burst.in_dlq.get(first.subscriber, count)
            lines.append(
                f"{first.subscriber}: {count} new ({in_dlq} in the DLQ); first: offset "
                f"{first.offset} ({first.topic}, event {first.event_id}) after {first.tries} "
                f"tries: {first.error}"
            )
            subscribers[first.subscriber] = {
                "new_entries": count,
                "in_dlq": in_dlq,
                "first": {
                    "entry": first.id,
                    "offset": first.offset,
                    "event_id": first.event_id,
                    "topic": first.topic,
                    "tries": first.tries,
                    "error": first.error,
                    "dead_at": first.dead_at,
                },
            }
        lines.append("See them with 'localbroker dlq list --data DIR' (or the dashboard).")
        details = {"new_entries": new, "subscribers": subscribers}
        return [
            Alert(Condition.DLQ, "firing", ", ".join(names), title, "\n".join(lines), details, wall)
        ]


def _not_past(sub: SubscriberHealth, stalled_at: int) -> bool:
    """Whether ``sub`` has not yet read past the offset it stalled at (and is not caught up)."""
    return sub.state != "ok" and sub.position <= stalled_at


def when(seconds: float) -> str:
    """A time for people: ``2026-01-02 12:00:01 UTC``."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float) -> str:
    """``45 s``, ``3 min 5 s``, ``2 h 4 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"

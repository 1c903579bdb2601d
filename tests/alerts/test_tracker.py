"""The decision of when a condition fires and clears, step by step on a clock the test moves."""

from __future__ import annotations

from typing import Any

import pytest

from localbroker import AlertsConfig, Health, Stall, SubscriberHealth
from localbroker.alerts.conditions import DLQBurst, Tracker
from localbroker.state.store import DLQEntry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tracker(clock: Clock, saved: dict[str, Any] | None = None, **options: Any) -> Tracker:
    config = AlertsConfig(url="http://127.0.0.1:9/hook", **options)  # type: ignore[arg-type]
    return Tracker(config, saved, clock=clock)


def lagging(lag: int, *, stalled_at: int | None = None, position: int = 0) -> Health:
    stall = Stall(stalled_at, "corrupt record") if stalled_at is not None else None
    return Health.of([SubscriberHealth.of("s", position, lag, stall)], [])


def states(alerts: list[Any]) -> list[tuple[str, str]]:
    return [(str(a.condition), a.state) for a in alerts]


def test_a_condition_fires_after_its_hold_time_once_and_resolves_once() -> None:
    clock = Clock()
    t = tracker(clock, lag_events=100, lag_for=10, min_interval=0)
    assert t.update(lagging(150), {}) == []  # not for 10 s yet
    clock.now += 9
    assert t.update(lagging(150), {}) == []
    clock.now += 1
    assert states(t.update(lagging(150), {})) == [("lagging", "firing")]
    for _ in range(3):
        clock.now += 60
        assert t.update(lagging(900), {}) == []  # never again while it holds
    assert states(t.update(lagging(99), {})) == [("lagging", "resolved")]
    assert t.update(lagging(0), {}) == []


def test_a_short_dip_above_the_threshold_does_not_fire() -> None:
    clock = Clock()
    t = tracker(clock, lag_events=100, lag_for=10)
    t.update(lagging(150), {})
    clock.now += 5
    t.update(lagging(10), {})  # cleared before lag_for: the hold time starts again
    clock.now += 6
    assert t.update(lagging(150), {}) == []


def test_a_condition_that_comes_back_waits_for_the_rate_limit() -> None:
    clock = Clock()
    t = tracker(clock, lag_events=100, lag_for=0, min_interval=60)
    assert states(t.update(lagging(150), {})) == [("lagging", "firing")]
    clock.now += 1
    assert states(t.update(lagging(0), {})) == [("lagging", "resolved")]
    clock.now += 1
    assert t.update(lagging(150), {}) == []  # flapping: held back
    clock.now += 57
    assert t.update(lagging(150), {}) == []
    clock.now += 1  # 60 s after the first alert, and it still holds
    assert states(t.update(lagging(150), {})) == [("lagging", "firing")]


def test_without_send_resolved_a_clearing_condition_sends_nothing() -> None:
    clock = Clock()
    t = tracker(clock, lag_events=1, lag_for=0, send_resolved=False)
    assert len(t.update(lagging(5), {})) == 1
    assert t.update(lagging(0), {}) == []
    assert t.active == {}


def test_a_stalled_subscriber_alerts_for_the_stall_not_for_its_lag() -> None:
    clock = Clock()
    t = tracker(clock, lag_events=1, lag_for=0)
    [alert] = t.update(lagging(500, stalled_at=50, position=50), {})
    assert (str(alert.condition), alert.details["position"]) == ("stalled", 50)
    assert "corrupt record" in alert.text


def test_a_restart_neither_repeats_an_alert_nor_forgets_to_resolve_it() -> None:
    clock = Clock()
    before = tracker(clock, lag_events=1, lag_for=0)
    before.update(lagging(500, stalled_at=50, position=50), {})
    saved = before.saved()

    after = tracker(Clock(), saved, lag_events=None)
    assert after.update(Health(), {}) == []  # the subscriber has not started yet
    # Started again, not at the damage yet (or the damage is still there): still stalled.
    assert after.update(lagging(460, position=40), {}) == []
    assert after.update(lagging(450, position=50), {}) == []
    [resolved] = after.update(lagging(100, position=51), {})  # read past it: repaired
    assert (str(resolved.condition), resolved.state) == ("stalled", "resolved")
    assert resolved.details["position_now"] == 51


def test_a_sync_target_down_fires_after_sync_down_after() -> None:
    clock = Clock()
    t = tracker(clock, sync_down_after=30)
    down = {"redis": {"connected": False, "target": "redis 127.0.0.1:6379", "backlog": 7}}
    assert t.update(Health(), down) == []
    clock.now += 30
    [alert] = t.update(Health(), down)
    assert alert.details == {
        "target": "redis",
        "server": "redis 127.0.0.1:6379",
        "last_error": None,
        "backlog": 7,
    }
    assert "(30 s)" in alert.text
    assert states(t.update(Health(), {"redis": {"connected": True}})) == [("sync_down", "resolved")]


def entry(subscriber: str, entry_id: int, dead_at: float) -> DLQEntry:
    return DLQEntry(
        entry_id,
        subscriber,
        entry_id,
        f"e{entry_id}",
        "t",
        None,
        3,
        "E('x')",
        "dead",
        dead_at,
        dead_at,
        0,
    )


def burst(*counts: tuple[str, int]) -> DLQBurst:
    entries = [(entry(name, i, 10.0 + i), count) for i, (name, count) in enumerate(counts)]
    return DLQBurst(entries, (20.0, len(entries)), dict(counts))


def test_a_dlq_burst_is_announced_once_it_settles() -> None:
    clock = Clock()
    t = tracker(clock, min_interval=60)
    assert t.update(Health(), {}, burst(("a", 2))) == []  # growing
    clock.now += 1
    assert t.update(Health(), {}, burst(("a", 4), ("b", 1))) == []  # still growing
    clock.now += 1
    [alert] = t.update(Health(), {}, burst(("a", 4), ("b", 1)))  # one check with nothing new
    assert alert.title == "DLQ: 5 new entries (a 4, b 1)"
    assert alert.details["subscribers"]["b"]["new_entries"] == 1
    assert t.dlq_mark == (20.0, 2)


def test_a_dlq_burst_that_goes_on_is_announced_after_min_interval_then_rate_limited() -> None:
    clock = Clock()
    t = tracker(clock, min_interval=60)
    for n in range(1, 61):
        assert t.update(Health(), {}, burst(("a", n))) == []  # a new entry every second
        clock.now += 1
    [alert] = t.update(Health(), {}, burst(("a", 61)))  # 60 s of growth: announced anyway
    assert alert.details["new_entries"] == 61
    clock.now += 1
    assert t.update(Health(), {}, burst(("a", 1))) == []
    clock.now += 1
    assert t.update(Health(), {}, burst(("a", 1))) == []  # settled, but within min_interval
    clock.now += 58
    assert len(t.update(Health(), {}, burst(("a", 1)))) == 1


@pytest.mark.parametrize("empty", [burst(), None])
def test_no_new_dlq_entries_no_alert(empty: DLQBurst | None) -> None:
    t = tracker(Clock())
    assert t.update(Health(), {}, empty) == []
    assert t.update(Health(), {}, empty) == []

"""Alerts are configured like everything else: keywords or LOCALBROKER_ALERT_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from localbroker import Alerts, Broker, ConfigurationError
from localbroker.alerts import AlertFormat, from_env
from tests.alerts.conftest import checks_pass
from tests.alerts.receiver import Receiver
from tests.alerts.test_alerts import failing_broker
from tests.broker.events import Note
from tests.waiting import wait_until

SECRET = "https://hooks.slack.com/services/T000/B000/secret-token"


def test_keywords_and_defaults() -> None:
    alerts = Alerts(url=SECRET, lag_events=50, sync_down_after=None)
    config = alerts.config
    assert str(config.url) == SECRET
    assert (config.lag_events, config.sync_down_after) == (50, None)
    assert (config.format, config.min_interval, config.check_interval) == ("slack", 60.0, 5.0)


def test_the_environment_and_keywords_winning_over_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALBROKER_ALERT_WEBHOOK_URL", SECRET)
    monkeypatch.setenv("LOCALBROKER_ALERT_FORMAT", "json")
    monkeypatch.setenv("LOCALBROKER_ALERT_LAG_EVENTS", "none")
    monkeypatch.setenv("LOCALBROKER_ALERT_MIN_INTERVAL", "300")
    monkeypatch.setenv("LOCALBROKER_ALERT_HEADERS", '{"Authorization": "Bearer t"}')
    [alerts] = from_env()
    config = alerts.config
    assert str(config.url) == SECRET
    assert (config.format, config.lag_events, config.min_interval) == (AlertFormat.JSON, None, 300)
    assert config.headers == {"Authorization": "Bearer t"}
    assert Alerts(min_interval=5, url="http://other:8080/x").config.min_interval == 5
    assert str(Alerts(url="http://other:8080/x").config.url) == "http://other:8080/x"
    monkeypatch.delenv("LOCALBROKER_ALERT_WEBHOOK_URL")
    assert from_env() == []


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (
            {"url": "ftp://hooks.example.com/secret-token"},
            r"url \(or LOCALBROKER_ALERT_WEBHOOK_URL\): URL scheme should be 'http' or 'https'",
        ),
        (
            {"url": "hooks.example.com/secret-token"},
            r"url \(or LOCALBROKER_ALERT_WEBHOOK_URL\): Input should be a valid URL",
        ),
        ({}, r"url \(or LOCALBROKER_ALERT_WEBHOOK_URL\): Field required"),
        ({"url": SECRET, "format": "xml"}, "format: Input should be 'slack' or 'json'"),
        ({"url": SECRET, "check_interval": 0}, "check_interval: Input should be greater than 0"),
        (
            {"url": SECRET, "queue_size": 0},
            "queue_size: Input should be greater than or equal to 1",
        ),
        ({"url": SECRET, "lag_event": 5}, "lag_event: Extra inputs are not permitted"),
    ],
)
def test_a_bad_option_raises_configuration_error_naming_it(
    options: dict[str, object], needle: str
) -> None:
    with pytest.raises(ConfigurationError, match=needle) as info:
        Alerts(**options)
    assert "secret-token" not in str(info.value)


def test_a_bad_environment_value_names_the_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALBROKER_ALERT_WEBHOOK_URL", "not a url")
    with pytest.raises(ConfigurationError, match=r"LOCALBROKER_ALERT_WEBHOOK_URL\): Input should"):
        Alerts()
    monkeypatch.setenv("LOCALBROKER_ALERT_WEBHOOK_URL", SECRET)
    monkeypatch.setenv("LOCALBROKER_ALERT_LAG_FOR", "soon")
    with pytest.raises(ConfigurationError, match="lag_for: Input should be a valid number"):
        Alerts()


async def test_two_notifiers_with_one_name_fail_start_and_free_the_directory(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigurationError, match="two Alerts named 'webhook'"):
        async with Broker(tmp_path, extensions=[Alerts(url=SECRET), Alerts(url=SECRET)]):
            pass
    async with Broker(
        tmp_path, extensions=[Alerts(url=SECRET), Alerts(url=SECRET, name="pager")]
    ) as broker:
        await broker.publish(Note(n=1))


async def test_configured_from_the_environment_alone(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCALBROKER_ALERT_WEBHOOK_URL", receiver.url)
    monkeypatch.setenv("LOCALBROKER_ALERT_FORMAT", "json")
    monkeypatch.setenv("LOCALBROKER_ALERT_CHECK_INTERVAL", "0.05")
    monkeypatch.setenv("LOCALBROKER_ALERT_HEADERS", '{"Authorization": "Bearer t"}')
    [alerts] = from_env()
    async with failing_broker(tmp_path, alerts) as broker:
        await broker.publish(Note(n=0))
        await wait_until(lambda: receiver.delivered(), what="the alert")
        await checks_pass(alerts)
    [request] = receiver.requests
    assert request.path == "/services/T000/B000/secret-token"
    assert request.headers["Authorization"] == "Bearer t"
    assert request.headers["Content-Type"] == "application/json"
    assert request.body["condition"] == "dlq"

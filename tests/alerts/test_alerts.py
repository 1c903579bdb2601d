"""Alerts against a real broker and a webhook receiver started by the test.

Each condition fires exactly once per occurrence, with the content an operator needs, and
resolves once; delivery retries through failures; a dead or hung receiver never holds up the
broker.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from localbroker import Broker, RejectEvent, RetryPolicy
from localbroker.cli.main import cli
from localbroker.sync import MemoryServer, MemoryTarget
from localbroker.view import BrokerView
from tests.alerts.conftest import checks_pass, fast_alerts
from tests.alerts.receiver import Receiver
from tests.broker.damage import damage_record, reader, write_notes
from tests.broker.events import Note
from tests.servers.ports import free_port
from tests.waiting import wait_until


def failing_broker(data: Path, *extensions: object, **options: object) -> Broker:
    """A broker whose subscriber ``billing`` dead-letters every note (ValueError, one try)."""
    broker = Broker(data, extensions=list(extensions), **options)  # type: ignore[arg-type]

    @broker.subscriber("note.added", name="billing", max_tries=1)
    async def bill(event: Note) -> None:
        raise ValueError(f"card <declined> for note {event.n}")

    return broker


async def test_dlq_growth_fires_once_per_burst_naming_subscribers_counts_and_first_error(
    tmp_path: Path, receiver: Receiver
) -> None:
    # The test checks by hand (check_interval is long), so the burst is whole when it looks.
    alerts = fast_alerts(receiver.url, check_interval=3600)
    broker = failing_broker(tmp_path, alerts)

    @broker.subscriber("note.added", name="email")
    async def mail(event: Note) -> None:
        raise RejectEvent("no address")

    async with broker:
        await broker.publish_many(Note(n=i) for i in range(3))
        await broker.wait_idle()
        assert await alerts.check() == []  # new entries: wait for one check with nothing newer
        [fired] = await alerts.check()
        await wait_until(lambda: receiver.delivered(), what="the DLQ alert")
        [alert] = receiver.delivered()
        assert alert["title"] == fired.title == "DLQ: 6 new entries (billing 3, email 3)"
        assert (alert["condition"], alert["state"]) == ("dlq", "firing")
        assert alert["details"]["new_entries"] == 6
        billing, email = (alert["details"]["subscribers"][s] for s in ("billing", "email"))
        assert (billing["new_entries"], billing["in_dlq"]) == (3, 3)
        assert billing["first"]["offset"] == 0
        assert billing["first"]["error"] == "ValueError('card <declined> for note 0')"
        assert email["first"]["error"] == "RejectEvent('no address')"
        assert "ValueError('card <declined> for note 0')" in alert["text"]
        assert alert["data_dir"] == str(tmp_path.resolve())
        assert alert["host"]

        # Within min_interval (60 s) a new entry does not fire: it waits for the next window.
        await broker.publish(Note(n=3))
        await broker.wait_idle()
        for _ in range(3):
            assert await alerts.check() == []
        assert len(receiver.requests) == 1
        assert alerts.state()["recent"][-1]["title"] == alert["title"]

    # What fired and when, for the CLI and the dashboard.
    async with BrokerView(tmp_path) as view:
        saved = (await view.alerts())["webhook"]
    assert [r["condition"] for r in saved["recent"]] == ["dlq"]
    assert (saved["sent"], saved["running"]) == (1, False)
    assert saved["url"] == f"http://127.0.0.1:{receiver.port}"  # not the secret path


async def test_dlq_entries_already_there_at_the_first_start_are_not_news(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with failing_broker(tmp_path) as broker:
        await broker.publish(Note(n=0))
        await broker.wait_idle()
    alerts = fast_alerts(receiver.url)
    async with failing_broker(tmp_path, alerts):
        await checks_pass(alerts)
    assert receiver.requests == []


async def test_a_stalled_subscriber_fires_once_and_resolves_after_repair_and_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    await write_notes(tmp_path)
    damage = damage_record(tmp_path, 50)
    broker = reader(tmp_path, [])
    alerts = fast_alerts(receiver.url)
    broker.extensions.append(alerts)
    async with broker:
        await wait_until(lambda: receiver.delivered(), what="the stall alert")
        await checks_pass(alerts)
        [alert] = receiver.delivered()
    assert (alert["condition"], alert["state"], alert["subject"]) == ("stalled", "firing", "reader")
    assert alert["title"] == "Subscriber reader is stalled at offset 50"
    assert damage.named() in alert["details"]["cause"]
    assert "localbroker repair" in alert["text"]

    assert CliRunner().invoke(cli, ["repair", str(tmp_path)]).exit_code == 0
    seen: list[int] = []
    broker = reader(tmp_path, seen)
    alerts = fast_alerts(receiver.url)
    broker.extensions.append(alerts)
    async with broker:
        await broker.wait_idle()
        await wait_until(lambda: len(receiver.delivered()) == 2, what="the resolved message")
        await checks_pass(alerts)
    resolved = receiver.delivered()[1]
    assert (resolved["condition"], resolved["state"]) == ("stalled", "resolved")
    assert resolved["title"] == "Subscriber reader reads on again"
    assert resolved["details"]["position"] == 50
    assert resolved["details"]["lasted"] > 0
    assert len(receiver.requests) == 2  # the restart did not announce the stall again


async def test_lag_past_the_threshold_fires_once_and_resolves_when_caught_up(
    tmp_path: Path, receiver: Receiver
) -> None:
    gate = asyncio.Event()
    alerts = fast_alerts(receiver.url, lag_events=5, lag_for=0)
    broker = Broker(tmp_path, extensions=[alerts], ack_timeout=120)

    @broker.subscriber("note.added", name="slow")
    async def slow(event: Note) -> None:
        await gate.wait()

    async with broker:
        await broker.publish_many(Note(n=i) for i in range(10))
        await wait_until(lambda: receiver.delivered(), what="the lag alert")
        await checks_pass(alerts)
        [alert] = receiver.delivered()
        assert (alert["condition"], alert["subject"]) == ("lagging", "slow")
        assert alert["details"]["lag"] == 10
        assert alert["title"] == "Subscriber slow is 10 events behind"

        gate.set()
        await broker.wait_idle()
        await wait_until(lambda: len(receiver.delivered()) == 2, what="the resolved message")
        await checks_pass(alerts)
    assert len(receiver.requests) == 2
    resolved = receiver.delivered()[1]
    assert (resolved["state"], resolved["details"]["lag_now"]) == ("resolved", 0)
    assert resolved["title"] == "Subscriber slow has caught up"


async def test_a_sync_target_down_for_long_fires_once_and_resolves_when_back(
    tmp_path: Path, receiver: Receiver
) -> None:
    server = MemoryServer()
    target = MemoryTarget(
        server,
        heartbeat_interval=0.05,
        reconnect=RetryPolicy(backoff_initial=0.05, backoff_max=0.1),
    )
    alerts = fast_alerts(receiver.url, sync_down_after=0.2)
    async with Broker(tmp_path, sync=[target], extensions=[alerts]) as broker:
        server.stop()
        await broker.publish(Note(n=1))
        await wait_until(lambda: receiver.delivered(), what="the sync alert")
        await checks_pass(alerts)
        [alert] = receiver.delivered()
        assert (alert["condition"], alert["subject"]) == ("sync_down", "memory")
        assert alert["title"] == "Sync target memory is down"
        assert "memory server is down" in alert["details"]["last_error"]
        assert alert["details"]["backlog"] == 1

        server.start()
        await target.wait_mirrored()
        await wait_until(lambda: len(receiver.delivered()) == 2, what="the resolved message")
        await checks_pass(alerts)
    assert len(receiver.requests) == 2
    resolved = receiver.delivered()[1]
    assert (resolved["condition"], resolved["state"]) == ("sync_down", "resolved")
    assert resolved["title"] == "Sync target memory is connected again"


async def test_delivery_is_retried_through_server_errors_and_arrives_once(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.answer(500, 503)
    alerts = fast_alerts(receiver.url, format="slack")
    with caplog.at_level(logging.WARNING, logger="localbroker.alerts"):
        async with failing_broker(tmp_path, alerts) as broker:
            await broker.publish(Note(n=0))
            await wait_until(lambda: receiver.delivered(), what="delivery after the 5xx")
            await checks_pass(alerts)
            state = alerts.state()
    assert [r.status for r in receiver.requests] == [500, 503, 200]
    assert len({str(r.body) for r in receiver.requests}) == 1  # the same alert, tried 3 times
    assert (state["sent"], state["failed"]) == (1, 2)
    [body] = receiver.delivered()
    # Slack's format: a fallback text and blocks, with mrkdwn escaping.
    assert body["text"].startswith("DLQ: 1 new entry (billing 1) (")
    section = body["blocks"][0]["text"]["text"]
    assert "card &lt;declined&gt; for note 0" in section
    assert body["blocks"][1]["type"] == "context"
    assert str(tmp_path.resolve()) in body["blocks"][1]["elements"][0]["text"]
    # One warning for the outage, one when it is over; never the webhook's secret path.
    messages = [r.getMessage() for r in caplog.records]
    assert sum("failed (HTTP 500" in m for m in messages) == 1
    assert sum("takes alerts again after 2 failed tries" in m for m in messages) == 1
    assert not any("secret-token" in m for m in messages)


async def test_a_refused_alert_is_logged_and_dropped_not_retried(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.answer(404)
    alerts = fast_alerts(receiver.url)
    with caplog.at_level(logging.ERROR, logger="localbroker.alerts"):
        async with failing_broker(tmp_path, alerts) as broker:
            await broker.publish(Note(n=0))
            await wait_until(lambda: receiver.requests, what="the alert")
            await checks_pass(alerts)
            state = alerts.state()
    assert [r.status for r in receiver.requests] == [404]
    assert (state["refused"], state["sent"], state["queued"]) == (1, 0, 0)
    [error] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert f"webhook http://127.0.0.1:{receiver.port} refused an alert (HTTP 404" in error
    assert "secret-token" not in error


@pytest.mark.parametrize("down", ["refusing connections", "hung"])
async def test_a_receiver_that_is_down_holds_up_neither_the_broker_nor_its_close(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture, down: str
) -> None:
    if down == "hung":
        receiver.hang()
        # The request in flight would wait 600 s for an answer; close cuts it short.
        alerts = fast_alerts(receiver.url, timeout=600, close_timeout=0.2)
        on_its_way = lambda: receiver.requests  # noqa: E731
    else:
        # Nothing listens there. close_timeout is 60 s, but a failing receiver is not waited for.
        alerts = fast_alerts(f"http://127.0.0.1:{free_port()}/hook", close_timeout=60)
        on_its_way = lambda: alerts.state()["failed"] >= 3  # noqa: E731
    broker = failing_broker(tmp_path, alerts)
    handled: list[int] = []

    @broker.subscriber("note.added", name="counter")
    async def count(event: Note) -> None:
        handled.append(event.n)

    with caplog.at_level(logging.WARNING, logger="localbroker.alerts"):
        await broker.start()
        try:
            await broker.publish(Note(n=-1))  # dead-lettered: an alert that cannot be sent
            await wait_until(on_its_way, what="the alert to be tried")
            for i in range(100):
                await broker.publish(Note(n=i))
            await broker.wait_idle(timeout=60)
            assert handled == list(range(-1, 100))
        finally:
            async with asyncio.timeout(30):
                await broker.close()
    assert alerts.state()["queued"] == 1
    if down != "hung":
        assert "ConnectError" in alerts.state()["last_error"]
    [undelivered] = [m for m in caplog.messages if "not delivered" in m]
    assert "1 alert(s) not delivered" in undelivered
    assert undelivered.endswith("DLQ: 1 new entry (billing 1)")


async def test_a_full_queue_drops_the_oldest_alert_with_a_warning(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.hang()
    alerts = fast_alerts(receiver.url, queue_size=1, lag_events=1, lag_for=0, close_timeout=0)
    broker = failing_broker(tmp_path, alerts, ack_timeout=120)

    @broker.subscriber("note.added", name="slow")
    async def slow(event: Note) -> None:
        await asyncio.Event().wait()  # until close cancels it: no "caught up" alert

    with caplog.at_level(logging.WARNING, logger="localbroker.alerts"):
        async with broker:
            await broker.publish(Note(n=0))  # two alerts: the DLQ, and "slow" lagging
            await wait_until(lambda: alerts.state()["dropped"] == 1, what="an alert dropped")
            titles = [r["title"] for r in alerts.state()["recent"]]
    assert sorted(titles) == [
        "DLQ: 1 new entry (billing 1)",
        "Subscriber slow is 1 event behind",
    ]
    [dropped] = [m for m in caplog.messages if "dropping the oldest" in m]
    assert dropped.endswith(f"the queue of 1 is full, dropping the oldest: {titles[0]}")
    [left] = [m for m in caplog.messages if "not delivered" in m]
    assert left.endswith(titles[1])

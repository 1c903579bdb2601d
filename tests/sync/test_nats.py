"""NATS JetStream: outbound exactly once (outages, a broker SIGKILL, a server kill -9), inbound
through durable pull consumers (ack after append, two instances, a dead instance, refusals).

Written as a class with a factory for the target (``target``) and a reader of what the server
holds (``stored_ids``), so that it moves onto the shared contract suite of the sync targets
with little change.
"""

from __future__ import annotations

import asyncio
import json
import logging
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from localbroker import Broker, Event
from localbroker.sync import NatsJetStream, SyncConfigurationError, from_env
from tests.servers.nats import NatsServer
from tests.sync.conftest import FAST
from tests.sync.helpers import cli_sync_status, log_ids, publish_n, run_and_kill
from tests.waiting import wait_until

pytestmark = pytest.mark.nats

SUBJECT = "events.payment.done"


async def stored_messages(url: str, subject: str = "events.>", stream: str = "EVENTS") -> list[Any]:
    """Every message of ``subject`` in the stream, as a plain nats-py client reads them."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        pending = (await js.stream_info(stream)).state.messages
        sub = await js.pull_subscribe(
            subject,
            stream=stream,
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL),
        )
        out: list[Any] = []
        while pending:
            try:
                batch = await sub.fetch(1000, timeout=1)
            except nats.errors.TimeoutError:
                break
            out.extend(batch)
            if batch[-1].metadata.num_pending == 0:
                break
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


async def plain_publish(
    url: str, subject: str, data: bytes, headers: dict[str, str] | None = None
) -> int:
    """Publish like a service without localbroker; the stream sequence."""
    nc = await nats.connect(url)
    try:
        ack = await nc.jetstream().publish(subject, data, headers=headers)
        return int(ack.seq)
    finally:
        await nc.close()


async def consumer_info(url: str, name: str) -> Any:
    nc = await nats.connect(url)
    try:
        return await nc.jetstream().consumer_info("EVENTS", name)
    finally:
        await nc.close()


def recorder(into: list[int]) -> Any:
    async def handler(event: Event) -> None:
        into.append(event.payload()["n"])

    return handler


class TestNatsJetStream:
    """The NATS JetStream target against a private nats-server."""

    @pytest.fixture
    def server(self, nats_server: NatsServer) -> NatsServer:
        return nats_server

    def target(self, server: NatsServer, **options: Any) -> NatsJetStream:
        return NatsJetStream(server.url, **{**FAST, **options})

    async def stored_ids(self, server: NatsServer, topic: str) -> list[str]:
        """Event ids of the messages of ``topic`` in the stream, in stream order."""
        return [
            m.headers["Nats-Msg-Id"] for m in await stored_messages(server.url, f"events.{topic}")
        ]

    # -- outbound ----------------------------------------------------------------------------

    async def test_every_event_mirrored_once_with_its_full_envelope(
        self, data_dir: Path, server: NatsServer
    ) -> None:
        target = self.target(server)
        async with Broker(data_dir, sync=[target]) as broker:
            ids = await publish_n(broker, "order.placed", 4_999)
            one = await broker.publish(
                "user.created", {"name": "Ann"}, key="u1", headers={"trace": "t-1"}
            )
            await wait_until(lambda: target.status()["backlog"] == 0, what="mirror to catch up")
            status = broker.sync_status()["nats"]
            (record,) = broker.read_log(one.offset, 1)
        assert await self.stored_ids(server, "order.placed") == ids
        (msg,) = await stored_messages(server.url, "events.user.created")
        assert msg.subject == "events.user.created"
        assert json.loads(msg.data) == {"name": "Ann"}
        headers = dict(msg.headers)
        assert headers.pop("Event-Producer")
        assert headers == {
            "Nats-Msg-Id": one.id,
            "Event-Time": json.loads(record.payload)["time"],
            "Event-Version": "1",
            "Event-Key": "u1",
            "Event-Correlation-Id": one.id,
            "Event-Headers": '{"trace":"t-1"}',
            "Event-Service": "data",
            "Event-Offset": str(one.offset),
        }
        assert status["connected"] is True
        assert status["cursor"] == one.offset + 1
        assert status["sent"] == 5_000
        assert status["stream"] == "EVENTS"
        assert status["duplicate_window"] == 120.0

    async def test_outage_events_are_sent_once_when_the_server_is_back(
        self, data_dir: Path, server: NatsServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        target = self.target(server)
        async with Broker(data_dir, sync=[target]) as broker:
            before = await publish_n(broker, "outage.test", 100)
            await wait_until(lambda: target.status()["backlog"] == 0)
            server.stop()
            with caplog.at_level(logging.WARNING, logger="localbroker.sync"):
                during = await publish_n(broker, "outage.test", 3_000, start=100)
                await wait_until(lambda: not target.status()["connected"], what="outage noticed")
                assert target.status()["backlog"] == 3_000
                server.start()
                await wait_until(lambda: target.status()["backlog"] == 0, what="catch up")
            warnings = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
            assert len(warnings) == 1, warnings
            assert "from offset 100" in warnings[0]
        assert await self.stored_ids(server, "outage.test") == before + during

    async def test_resend_after_the_duplicate_window_is_not_stored_twice(
        self, data_dir: Path, server: NatsServer
    ) -> None:
        """The saved cursor lags behind what the server stored (a crash before the save), and
        the broker comes back after the server forgot the message ids: the watermark catches
        what the duplicate window no longer does."""
        target = self.target(server, duplicate_window=0.5)
        async with Broker(data_dir, sync=[target]) as broker:
            ids = await publish_n(broker, "late.resend", 300)
            await wait_until(lambda: target.status()["backlog"] == 0)
        async with Broker(data_dir) as broker:  # as saved after offset 99 only
            await broker.store.set_value("sync.state.nats", {"cursor": 100, "seq": 100})

        async def window_over() -> bool:  # a probe id is accepted again: the ids are forgotten
            nc = await nats.connect(server.url)
            acks = [await nc.jetstream().publish("probe.x", b"{}", headers={"Nats-Msg-Id": "p"})]
            await nc.close()
            return not acks[0].duplicate

        await add_probe_stream(server.url)
        await window_over()
        await wait_until(window_over, what="the duplicate window to pass")
        target = self.target(server, duplicate_window=0.5)
        async with Broker(data_dir, sync=[target]) as broker:
            more = await publish_n(broker, "late.resend", 10, start=300)
            await wait_until(lambda: target.status()["backlog"] == 0)
            status = target.status()
        stored = await self.stored_ids(server, "late.resend")
        assert Counter(stored).most_common(1)[0][1] == 1, "an event is twice in the stream"
        assert stored == ids + more
        assert status["skipped_stored"] == 200

    @pytest.mark.slow
    async def test_broker_sigkill_mid_mirror_every_event_once(
        self, data_dir: Path, server: NatsServer
    ) -> None:
        # A tiny duplicate window: exactly once must come from the watermark, not the server.
        child = textwrap.dedent(
            """
            import asyncio, sys
            from localbroker import Broker, GenericEvent
            from localbroker.sync import NatsJetStream

            async def main() -> None:
                data, url, start = sys.argv[1:4]
                target = NatsJetStream(url, status_interval=0.1, batch_size=500,
                                       duplicate_window=0.1)
                n = int(start)
                async with Broker(data, sync=[target]) as broker:
                    while True:
                        await broker.publish_many(
                            [GenericEvent(topic="crash.sync", n=n + i) for i in range(100)])
                        n += 100
                        print(n, target.sent, flush=True)

            asyncio.run(main())
            """
        )
        published = 0
        for after in (0.6, 0.9):
            published = await asyncio.to_thread(
                run_and_kill, child, [str(data_dir), server.url, str(published)], after
            )
        target = self.target(server)
        async with Broker(data_dir, sync=[target]):
            await wait_until(lambda: target.status()["backlog"] == 0, what="catch up")
        ids = log_ids(data_dir)
        assert len(ids) >= published > 1000, "the children published too little to test anything"
        stored = await self.stored_ids(server, "crash.sync")
        assert Counter(stored).most_common(1)[0][1] == 1, "an event is twice in the stream"
        assert stored == ids

    @pytest.mark.slow
    async def test_server_kill_9_while_mirroring_loses_nothing(
        self, data_dir: Path, server: NatsServer
    ) -> None:
        target = self.target(server, batch_size=200)
        async with Broker(data_dir, sync=[target]) as broker:
            ids: list[str] = []
            for round_ in range(3):
                mirrored = len(ids)
                ids += await publish_n(broker, "kill.nine", 2_000, start=len(ids))
                await wait_until(lambda m=mirrored: target.sent > m, what="mirroring")
                server.kill()  # in the middle of the round's batches
                ids += await publish_n(broker, "kill.nine", 500, start=len(ids))
                await wait_until(lambda: not target.status()["connected"], what="outage noticed")
                server.start()
                await wait_until(lambda: target.status()["backlog"] == 0, what=f"catch up {round_}")
        stored = await self.stored_ids(server, "kill.nine")
        assert Counter(stored).most_common(1)[0][1] == 1, "an event is twice in the stream"
        assert stored == ids

    # -- inbound -----------------------------------------------------------------------------

    def inbound(self, server: NatsServer, **options: Any) -> NatsJetStream:
        return self.target(
            server, service="shop", inbound_topics=["payment.done"], fetch_wait=0.1, **options
        )

    async def test_plain_client_message_is_appended_once_then_acked(
        self, data_dir: Path, server: NatsServer
    ) -> None:
        target = self.inbound(server)
        broker = Broker(data_dir, sync=[target])
        received: list[Event] = []

        @broker.subscriber("payment.done", name="orders")
        async def on_payment(event: Event) -> None:
            received.append(event)

        async with broker:
            pending_at_append: list[int] = []
            original = broker.publish_many

            async def spy(events: Any) -> Any:
                # When the append starts, the server still waits for the acknowledgements.
                info = await consumer_info(server.url, "shop_payment_done")
                pending_at_append.append(info.num_ack_pending)
                return await original(events)

            broker.publish_many = spy  # type: ignore[method-assign]
            # What a service without localbroker publishes, with plain nats-py:
            await plain_publish(
                server.url,
                SUBJECT,
                json.dumps({"order_id": "o1", "amount": 12}).encode(),
                headers={
                    "Nats-Msg-Id": "pay-1",
                    "Event-Key": "o1",
                    "Event-Headers": json.dumps({"trace": "x"}),
                },
            )
            second = await plain_publish(server.url, SUBJECT, b'{"order_id": "o2"}')
            await wait_until(lambda: len(received) == 2, what="both events delivered")

            async def all_acked() -> bool:
                info = await consumer_info(server.url, "shop_payment_done")
                return info.num_ack_pending == 0 and info.num_pending == 0

            await wait_until(all_acked, what="both acknowledged")
            await wait_until(lambda: target.status()["backlog"] == 0, what="the mirror")
            await broker.wait_idle()
            status = broker.sync_status()["nats"]["inbound"]
        first, other = received
        assert first.id == "pay-1"
        assert first.key == "o1"
        assert first.payload() == {"order_id": "o1", "amount": 12}
        assert first.headers["trace"] == "x"
        assert first.headers["origin"] == "nats:EVENTS/1"
        assert other.id == f"EVENTS/{second}"
        assert other.payload() == {"order_id": "o2"}
        assert sum(pending_at_append) >= 2
        assert status["received"] == 2
        assert status["consumers"] == {"shop_payment_done": "payment.done"}
        assert len(await stored_messages(server.url)) == 2, "an inbound event was mirrored back"

    async def test_redelivery_after_a_crash_before_the_ack_is_not_appended_twice(
        self, data_dir: Path, server: NatsServer
    ) -> None:
        target = self.inbound(server, ack_wait=1.0)
        hang = asyncio.Event()

        async def never_ack(messages: Any, end: Any) -> None:  # dies between append and ack
            await hang.wait()

        target.inbound.acknowledge = never_ack
        async with Broker(data_dir, sync=[self.inbound(server)]):
            pass  # creates the durable consumer, so that the 20 messages wait for one fetch
        for i in range(20):
            await plain_publish(server.url, SUBJECT, b'{"n": %d}' % i, {"Nats-Msg-Id": f"p{i}"})
        async with Broker(data_dir, sync=[target]):
            await wait_until(lambda: target.inbound.ledger.received == 20, what="appended")
        assert (await consumer_info(server.url, "shop_payment_done")).num_ack_pending == 20

        target = self.inbound(server, ack_wait=1.0)
        async with Broker(data_dir, sync=[target]):
            # The server delivers them again once AckWait has passed.
            await wait_until(lambda: target.inbound.redelivered == 20, what="the redelivery")
            await plain_publish(server.url, SUBJECT, b'{"n": 20}', {"Nats-Msg-Id": "p20"})
            await wait_until(lambda: target.inbound.ledger.received == 1)
            assert target.inbound.ledger.duplicates == 20
        assert log_ids(data_dir) == [f"p{i}" for i in range(21)]
        assert (await consumer_info(server.url, "shop_payment_done")).num_ack_pending == 0

    async def test_messages_a_dead_instance_fetched_are_delivered_after_ack_wait(
        self, data_dir: Path, server: NatsServer
    ) -> None:
        target = self.inbound(server, ack_wait=1.0)
        async with Broker(data_dir, sync=[target]):
            pass  # creates the durable consumer
        for n in range(50):
            await plain_publish(server.url, SUBJECT, b'{"n": %d}' % n, {"Nats-Msg-Id": f"e{n}"})
        # Another instance of the service fetches them and dies without acknowledging any.
        nc = await nats.connect(server.url)
        dead = await nc.jetstream().pull_subscribe_bind("shop_payment_done", stream="EVENTS")
        assert len(await dead.fetch(100, timeout=2)) == 50
        await nc.close()
        target = self.inbound(server, ack_wait=1.0)
        async with Broker(data_dir, sync=[target]):
            await wait_until(lambda: target.inbound.ledger.received == 50, what="taken over")
            redelivered = target.inbound.redelivered
        assert sorted(log_ids(data_dir)) == sorted(f"e{n}" for n in range(50))
        assert redelivered == 50

    async def test_a_message_the_server_gives_up_on_is_reported(
        self, data_dir: Path, server: NatsServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        options = {"ack_wait": 1.0, "max_deliver": 1}
        async with Broker(data_dir, sync=[self.inbound(server, **options)]):
            pass  # creates the durable consumer
        seq = await plain_publish(server.url, SUBJECT, b'{"n": 1}')
        nc = await nats.connect(server.url)  # an instance that fetches it and dies
        dead = await nc.jetstream().pull_subscribe_bind("shop_payment_done", stream="EVENTS")
        assert len(await dead.fetch(1, timeout=2)) == 1
        await nc.close()
        target = self.inbound(server, **options)
        with caplog.at_level(logging.ERROR, logger="localbroker.sync"):
            async with Broker(data_dir, sync=[target]):
                await wait_until(lambda: target.inbound.given_up == 1, what="the advisory")
                status = target.status()["inbound"]
        assert status["given_up"] == 1
        (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert f"message {seq} of stream EVENTS to consumer shop_payment_done" in line
        assert log_ids(data_dir) == []

    async def test_ack_wait_and_max_deliver_follow_the_settings(
        self, data_dir: Path, server: NatsServer
    ) -> None:
        async with Broker(data_dir, ack_timeout=7, max_tries=3, sync=[self.inbound(server)]):
            info = await consumer_info(server.url, "shop_payment_done")
        assert (info.config.ack_wait, info.config.max_deliver) == (7, 3)  # the broker's
        target = self.inbound(server, ack_wait=2.5, max_deliver=9)
        async with Broker(data_dir, sync=[target]):
            info = await consumer_info(server.url, "shop_payment_done")
        assert (info.config.ack_wait, info.config.max_deliver) == (2.5, 9)  # updated in place

    async def test_two_instances_share_the_durable_consumer(
        self, tmp_path: Path, server: NatsServer
    ) -> None:
        handled: dict[str, list[int]] = {"a": [], "b": []}
        brokers = []
        for name in ("a", "b"):
            broker = Broker(
                tmp_path / name, sync=[self.inbound(server, inbound_batch=50, outbound=False)]
            )
            broker.subscribe(recorder(handled[name]), "payment.done", name="orders")
            brokers.append(broker)
        async with brokers[0], brokers[1]:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            for lo in range(0, 2000, 100):
                futures = [
                    await js.publish_async(SUBJECT, b'{"n": %d}' % n) for n in range(lo, lo + 100)
                ]
                await asyncio.gather(*futures)
                await asyncio.sleep(0.01)  # a producer's pace: both instances get to fetch
            await nc.close()
            await wait_until(lambda: len(handled["a"]) + len(handled["b"]) >= 2000)

            async def all_acked() -> bool:
                info = await consumer_info(server.url, "shop_payment_done")
                return info.num_ack_pending == 0 and info.num_pending == 0

            await wait_until(all_acked, what="every message acknowledged")
            for broker in brokers:
                await broker.wait_idle()
        everything = handled["a"] + handled["b"]
        assert sorted(everything) == list(range(2000)), Counter(everything).most_common(3)
        assert handled["a"]
        assert handled["b"]

    async def test_unusable_message_is_refused_logged_and_terminated(
        self, data_dir: Path, server: NatsServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        target = self.inbound(server, ack_wait=1.0)
        with caplog.at_level(logging.WARNING, logger="localbroker.sync"):
            async with Broker(data_dir, sync=[target]):
                no_data = await plain_publish(server.url, SUBJECT, b"")
                not_json = await plain_publish(server.url, SUBJECT, b"order o3 paid")
                await plain_publish(
                    server.url, SUBJECT, b'{"order_id": "o4"}', {"Nats-Msg-Id": "ok-1"}
                )
                await wait_until(lambda: target.inbound.ledger.received == 1, what="the good one")

                async def settled() -> bool:
                    info = await consumer_info(server.url, "shop_payment_done")
                    return info.num_ack_pending == 0 and info.num_pending == 0

                # Terminated: neither pending nor waiting to be delivered again.
                await wait_until(settled, what="nothing left to deliver")
                status = target.status()["inbound"]
                redelivered = target.inbound.redelivered
        assert log_ids(data_dir) == ["ok-1"]
        assert status["rejected"] == 2
        assert status["last_rejected"].startswith(f"EVENTS {not_json}: ")
        assert redelivered == 0
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 2, errors
        assert f"message {no_data} of stream EVENTS ({SUBJECT})" in errors[0]
        assert "has no data" in errors[0]
        assert f"message {not_json} of stream EVENTS ({SUBJECT})" in errors[1]
        assert "not valid JSON" in errors[1]
        assert len(await stored_messages(server.url, SUBJECT)) == 3, "they stay in the stream"

    # -- configuration and status ------------------------------------------------------------

    async def test_status_shows_the_target_from_the_cli(
        self, data_dir: Path, server: NatsServer
    ) -> None:
        target = self.inbound(server)
        async with Broker(data_dir, sync=[target]) as broker:
            await publish_n(broker, "cli.status", 30)
            await wait_until(lambda: target.status()["backlog"] == 0)
            await target.save()
            status = (await cli_sync_status(data_dir))["nats"]
        assert status["kind"] == "nats"
        assert status["connected"] is True
        assert status["running"] is True
        assert status["cursor"] == 30
        assert status["acked_seq"] == 30
        assert status["target"] == f"nats {server.url} stream EVENTS"
        assert status["inbound"]["consumers"] == {"shop_payment_done": "payment.done"}

    async def test_a_stream_that_does_not_take_the_subjects_fails_start(
        self, data_dir: Path, server: NatsServer
    ) -> None:
        nc = await nats.connect(server.url)
        await nc.jetstream().add_stream(StreamConfig(name="EVENTS", subjects=["orders.>"]))
        await nc.close()
        with pytest.raises(SyncConfigurationError, match=r"stream EVENTS.*'events\.>'"):
            async with Broker(data_dir, sync=[self.target(server)]):
                pass
        with pytest.raises(SyncConfigurationError, match="does not exist"):
            async with Broker(
                data_dir, sync=[self.target(server, stream="OTHER", create_stream=False)]
            ):
                pass
        async with Broker(data_dir) as broker:  # the failed starts left no lock behind
            assert broker.log.next_offset == 0


async def test_wrong_credentials_fail_start(data_dir: Path, tmp_path: Path) -> None:
    binary = NatsServer.binary_path()
    assert binary is not None or pytest.skip("no nats-server")
    server = NatsServer(binary, tmp_path / "auth", args=("--user", "app", "--pass", "right"))
    server.start()
    try:
        url = f"nats://app:wrong@127.0.0.1:{server.port}"
        with pytest.raises(SyncConfigurationError, match="authorization failed") as info:
            async with Broker(data_dir, sync=[NatsJetStream(url)]):
                pass
        assert "wrong" not in str(info.value)  # the password is not shown
    finally:
        server.stop()


async def add_probe_stream(url: str) -> None:
    """A stream with a short duplicate window, for :func:`window_over` probes."""
    nc = await nats.connect(url)
    await nc.jetstream().add_stream(
        StreamConfig(name="PROBE", subjects=["probe.>"], duplicate_window=0.5)
    )
    await nc.close()


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"url": "redis://localhost"}, "cannot use URL"),
        ({"url": "nats://h", "stream": "A.B"}, "stream"),
        ({"url": "nats://h", "subject_prefix": "events"}, "subject_prefix"),
        ({"url": "nats://h", "inbound_topics": ["pay..x"]}, "inbound_topics"),
        ({"url": "nats://h", "max_deliver": 0}, "max_deliver"),
    ],
)
def test_unusable_options_raise_at_construction(options: dict[str, Any], needle: str) -> None:
    with pytest.raises(SyncConfigurationError, match=needle):
        NatsJetStream(**options)


def test_target_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALBROKER_NATS_URL", "nats://hub:4222")
    monkeypatch.setenv("LOCALBROKER_NATS_INBOUND_TOPICS", '["refund.*"]')
    monkeypatch.setenv("LOCALBROKER_NATS_STREAM", "SHOP")
    (target,) = from_env()
    assert isinstance(target, NatsJetStream)
    assert target.config.url == "nats://hub:4222"
    assert target.config.inbound_topics == ("refund.*",)
    assert target.config.stream == "SHOP"

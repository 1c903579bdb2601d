"""NATS JetStream: the sync target contract, and what only NATS has (the message layout, the
sequence watermark after the duplicate window, AckWait and MaxDeliver, terminated messages,
the stream's subjects, credentials)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from localbroker import Broker
from localbroker.sync import NatsJetStream, SyncConfigurationError
from tests.conftest import require_binary
from tests.servers.nats import NatsServer
from tests.sync.conftest import FAST
from tests.sync.contract import Backend, SyncTargetContract, in_thread
from tests.sync.helpers import log_envelopes, log_ids, publish_n
from tests.waiting import wait_until

pytestmark = pytest.mark.nats

T = TypeVar("T")

STREAM = "EVENTS"
SERVICE = "shop"
SUBJECT = "events.payment.done"


def consumer(topic: str) -> str:
    """The durable consumer of service ``shop`` on ``topic``, named as the README says."""
    return f"{SERVICE}_{topic.replace('.', '_')}"


def inbound(url: str, topic: str = "payment.done", **options: Any) -> NatsJetStream:
    """A target of service ``shop`` consuming ``topic``, fetching often."""
    return NatsJetStream(
        url, service=SERVICE, inbound_topics=[topic], fetch_wait=0.1, **{**FAST, **options}
    )


class PlainClient:
    """A plain nats-py connection for the backend's hooks, on an event loop of its own in a
    thread: the contract calls the hooks synchronously from the test's loop (as it calls
    redis-py's), which cannot wait on itself."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="nats-test-client")
        self.thread.start()
        self._nc: NATS | None = None

    def run(self, work: Callable[[JetStreamContext], Awaitable[T]]) -> T:
        """``await work(js)`` on a connection (a new one if the server was restarted)."""
        return asyncio.run_coroutine_threadsafe(self._run(work), self.loop).result(timeout=60)

    async def _run(self, work: Callable[[JetStreamContext], Awaitable[T]]) -> T:
        if self._nc is None or not self._nc.is_connected:
            await self._close()

            async def quiet(exc: Exception) -> None:  # a restarted server is no test failure
                pass

            self._nc = await nats.connect(self.url, allow_reconnect=False, error_cb=quiet)
        return await work(self._nc.jetstream())

    async def _close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


async def ensure_stream(js: JetStreamContext) -> None:
    """The stream, as an operator would create it (what the target creates when missing)."""
    try:
        await js.stream_info(STREAM)
    except nats.js.errors.NotFoundError:
        await js.add_stream(
            StreamConfig(name=STREAM, subjects=["events.>"], storage=StorageType.FILE)
        )


async def read_stream(js: JetStreamContext, subject: str = "events.>") -> list[Msg]:
    """Every message of ``subject`` in the stream, in stream order, through an ephemeral
    consumer that acknowledges nothing."""
    try:
        if not (await js.stream_info(STREAM)).state.messages:
            return []
    except nats.js.errors.NotFoundError:
        return []
    sub = await js.pull_subscribe(
        subject,
        stream=STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL),
    )
    out: list[Msg] = []
    try:
        while True:
            try:
                batch = await sub.fetch(1000, timeout=1)
            except nats.errors.TimeoutError:
                break
            out.extend(batch)
            if batch[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out


async def consumer_info(js: JetStreamContext, topic: str) -> Any:
    """The durable consumer of ``topic``; None when it (or the stream) does not exist."""
    try:
        return await js.consumer_info(STREAM, consumer(topic))
    except nats.js.errors.NotFoundError:
        return None


class NatsBackend(Backend):
    has_inbound = True

    def __init__(self, server: NatsServer) -> None:
        self.server = server
        self.url = server.url
        self.client = PlainClient(server.url)

    def target(self, **options: Any) -> NatsJetStream:
        return NatsJetStream(self.url, **{**FAST, **options})

    def child_target(self, **options: Any) -> tuple[str, dict[str, Any]]:
        # A tiny duplicate window for the stream the child creates: exactly once must come
        # from the sequence watermark, not from the server dropping resent ids.
        return "NatsJetStream", {"url": self.url, "duplicate_window": 0.1, **options}

    def events(self) -> list[dict[str, Any]]:
        """The messages mirrored by a target (those with ``Event-Producer``), read by their
        documented headers, in stream order."""
        out = []
        for msg in self.client.run(read_stream):
            headers = msg.headers or {}
            if "Event-Producer" not in headers:
                continue
            out.append(
                {
                    "id": headers["Nats-Msg-Id"],
                    "topic": msg.subject.removeprefix("events."),
                    "time": datetime.fromisoformat(headers["Event-Time"]),
                    "version": int(headers["Event-Version"]),
                    "key": headers.get("Event-Key"),
                    "correlation_id": headers.get("Event-Correlation-Id"),
                    "causation_id": headers.get("Event-Causation-Id"),
                    "headers": json.loads(headers.get("Event-Headers", "{}")),
                    "data": json.loads(msg.data),
                    "service": headers["Event-Service"],
                    "producer": headers["Event-Producer"],
                    "offset": int(headers["Event-Offset"]),
                }
            )
        return out

    def inbound_target(self, topic: str, **options: Any) -> NatsJetStream:
        # JetStream's counterpart of claiming what a dead instance left is AckWait: the
        # server delivers such messages again by itself, so there is no claim interval.
        claim_idle = options.pop("claim_idle", None)
        options.pop("claim_interval", None)
        if claim_idle is not None:
            options["ack_wait"] = claim_idle
        return inbound(self.url, topic, **options)

    def produce(self, topic: str, data: dict[str, Any], event_id: str | None = None) -> str:
        headers = {"Nats-Msg-Id": event_id} if event_id else None
        return self._publish(topic, json.dumps(data).encode(), headers)

    def produce_malformed(self, topic: str) -> str:
        return self._publish(topic, b"", None)

    def _publish(self, topic: str, data: bytes, headers: dict[str, str] | None) -> str:
        async def publish(js: JetStreamContext) -> int:
            await ensure_stream(js)
            return int((await js.publish(f"events.{topic}", data, headers=headers)).seq)

        return f"message {self.client.run(publish)} of stream {STREAM}"

    def pending(self, topic: str) -> int:
        info = self.client.run(lambda js: consumer_info(js, topic))
        return 0 if info is None else int(info.num_ack_pending)

    def readers(self, topic: str) -> int:
        """Pull requests waiting on the consumer: one per instance fetching."""
        info = self.client.run(lambda js: consumer_info(js, topic))
        return 0 if info is None else int(info.num_waiting)

    def abandon(self, topic: str, count: int) -> None:
        async def fetch_and_die(js: JetStreamContext) -> None:
            await js.add_consumer(
                STREAM,
                ConsumerConfig(
                    durable_name=consumer(topic),
                    filter_subject=f"events.{topic}",
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                ),
            )
            sub = await js.pull_subscribe_bind(durable=consumer(topic), stream=STREAM)
            taken: list[Msg] = []
            while len(taken) < count:
                taken += await sub.fetch(count - len(taken), timeout=5)
            await sub.unsubscribe()  # and never acknowledges them

        self.client.run(fetch_and_die)

    def close(self) -> None:
        self.client.close()


class TestNatsContract(SyncTargetContract):
    @pytest.fixture
    def backend(self, nats_server: NatsServer) -> Iterator[NatsBackend]:
        backend = NatsBackend(nats_server)
        yield backend
        backend.close()


@pytest.fixture
async def js(nats_server: NatsServer) -> Any:
    """A plain nats-py JetStream context on the private server, for the tests below."""
    nc = await nats.connect(nats_server.url)
    yield nc.jetstream()
    await nc.close()


# -- outbound ----------------------------------------------------------------------------


async def test_message_as_a_plain_client_reads_it(
    data_dir: Path, nats_server: NatsServer, js: JetStreamContext
) -> None:
    target = NatsJetStream(nats_server.url, **FAST)
    async with Broker(data_dir, sync=[target]) as broker:
        one = await broker.publish(
            "user.created", {"name": "Ann"}, key="u1", headers={"trace": "t-1"}
        )
        await target.wait_mirrored()
        status = target.status()
        (record,) = broker.read_log(one.offset, 1)
    (msg,) = await read_stream(js)
    assert msg.subject == "events.user.created"
    assert json.loads(msg.data) == {"name": "Ann"}
    assert dict(msg.headers or {}) == {
        "Nats-Msg-Id": one.id,
        "Event-Time": json.loads(record.payload)["time"],
        "Event-Version": "1",
        "Event-Key": "u1",
        "Event-Correlation-Id": one.id,  # no Event-Causation-Id: a header that is None is left out
        "Event-Headers": '{"trace":"t-1"}',
        "Event-Service": target.service,
        "Event-Producer": target.producer,
        "Event-Offset": str(one.offset),
    }
    assert (status["stream"], status["subjects"]) == (STREAM, "events.>")
    assert status["duplicate_window"] == 120.0
    assert status["acked_seq"] == 1


async def test_server_dying_while_a_batch_awaits_its_acks_is_noticed_at_once(
    data_dir: Path, nats_server: NatsServer
) -> None:
    """nats-py leaves the acknowledgements of a lost connection waiting; the mirror must not
    wait ``publish_timeout`` for them (it showed ``connected`` that long)."""
    target = NatsJetStream(nats_server.url, publish_timeout=120, connect_timeout=0.5, **FAST)
    async with Broker(data_dir, sync=[target]) as broker:
        await publish_n(broker, "dying.server", 10)
        await target.wait_mirrored()
        assert target._nc is not None
        written = target._nc.stats["out_msgs"]
        assert nats_server.process is not None
        os.kill(nats_server.process.pid, signal.SIGSTOP)  # it reads nothing, acks nothing
        await publish_n(broker, "dying.server", 10, start=10)
        # Every message of the batch written: the mirror now waits for the acknowledgements.
        await wait_until(lambda: target._nc.stats["out_msgs"] >= written + 10, what="the batch")
        assert target.status()["connected"]
        await in_thread(nats_server.kill)
        await wait_until(lambda: not target.status()["connected"], what="the outage noticed")
        assert "connection" in target.status()["last_error"]
        await in_thread(nats_server.start)
        await target.wait_mirrored()
    nc = await nats.connect(nats_server.url)
    stored = [m.headers["Nats-Msg-Id"] for m in await read_stream(nc.jetstream()) if m.headers]
    await nc.close()
    assert stored == log_ids(data_dir)


async def test_resend_after_the_duplicate_window_is_not_stored_twice(
    data_dir: Path, nats_server: NatsServer, js: JetStreamContext
) -> None:
    """The saved cursor lags behind what the server stored (a crash before the save), and
    the broker comes back after the server forgot the message ids: the sequence watermark
    catches what the duplicate window no longer does."""
    target = NatsJetStream(nats_server.url, duplicate_window=0.5, **FAST)
    async with Broker(data_dir, sync=[target]) as broker:
        await publish_n(broker, "late.resend", 300)
        await target.wait_mirrored()
    async with Broker(data_dir) as broker:  # as saved after offset 99 only
        await broker.store.set_value("sync.state.nats", {"cursor": 100, "seq": 100})

    await js.add_stream(StreamConfig(name="PROBE", subjects=["probe.>"], duplicate_window=0.5))

    async def window_over() -> bool:  # a probe id is taken again: the ids are forgotten
        ack = await js.publish("probe.x", b"{}", headers={"Nats-Msg-Id": "p"})
        return not ack.duplicate

    await window_over()
    await wait_until(window_over, what="the duplicate window to pass")
    target = NatsJetStream(nats_server.url, duplicate_window=0.5, **FAST)
    async with Broker(data_dir, sync=[target]) as broker:
        await publish_n(broker, "late.resend", 10, start=300)
        await target.wait_mirrored()
        status = target.status()
    stored = [m.headers["Nats-Msg-Id"] for m in await read_stream(js) if m.headers]
    assert stored == log_ids(data_dir), "an event is missing or twice in the stream"
    assert status["skipped_stored"] == 200


async def test_a_stream_that_does_not_take_the_subjects_fails_start(
    data_dir: Path, nats_server: NatsServer, js: JetStreamContext
) -> None:
    await js.add_stream(StreamConfig(name=STREAM, subjects=["orders.>"]))
    with pytest.raises(SyncConfigurationError, match=r"stream EVENTS.*'events\.>'"):
        async with Broker(data_dir, sync=[NatsJetStream(nats_server.url)]):
            pass
    with pytest.raises(SyncConfigurationError, match="does not exist"):
        async with Broker(
            data_dir, sync=[NatsJetStream(nats_server.url, stream="OTHER", create_stream=False)]
        ):
            pass
    async with Broker(data_dir) as broker:  # the failed starts left no lock behind
        assert broker.log.next_offset == 0


async def test_wrong_credentials_fail_start(data_dir: Path, tmp_path: Path) -> None:
    binary = require_binary(NatsServer.binary_path(), "nats-server (apt install nats-server)")
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


# -- inbound -----------------------------------------------------------------------------


async def test_message_headers_become_the_event(
    data_dir: Path, nats_server: NatsServer, js: JetStreamContext
) -> None:
    target = inbound(nats_server.url)
    async with Broker(data_dir, sync=[target]):
        first = await js.publish(
            SUBJECT,
            b'{"order_id": "o1", "amount": 12}',
            headers={
                "Nats-Msg-Id": "pay-1",
                "Event-Key": "o1",
                "Event-Headers": json.dumps({"trace": "x"}),
            },
        )
        second = await js.publish(SUBJECT, b'{"order_id": "o2"}')  # only the data
        await wait_until(lambda: target.inbound.ledger.received == 2, what="both appended")
        status = target.status()["inbound"]
    one, other = log_envelopes(data_dir)
    assert (one["id"], one["key"]) == ("pay-1", "o1")
    assert one["data"] == {"order_id": "o1", "amount": 12}
    assert one["headers"] == {"trace": "x", "origin": f"nats:EVENTS/{first.seq}"}
    assert other["id"] == f"EVENTS/{second.seq}"  # no Nats-Msg-Id
    assert (other["topic"], other["data"]) == ("payment.done", {"order_id": "o2"})
    assert status["consumers"] == {"shop_payment_done": "payment.done"}


async def test_messages_of_this_service_are_acknowledged_not_appended(
    data_dir: Path, nats_server: NatsServer, js: JetStreamContext
) -> None:
    """Leftover e: loop prevention, as the README says. What this service mirrored (from this
    data directory, or from another instance of the service) is not appended again, and is
    counted; what another service (or a plain client) publishes on the topic is appended."""
    target = inbound(nats_server.url)
    async with Broker(data_dir, sync=[target]) as broker:
        mine = await broker.publish("payment.done", {"n": 0})  # mirrored out, comes back
        sibling = await js.publish(  # another instance of shop (its own data directory)
            SUBJECT, b'{"n": 1}', headers={"Event-Service": SERVICE, "Event-Producer": "p2"}
        )
        other = await js.publish(
            SUBJECT, b'{"n": 2}', headers={"Event-Service": "billing", "Nats-Msg-Id": "b-1"}
        )
        plain = await js.publish(SUBJECT, b'{"n": 3}')
        await wait_until(
            lambda: target.status()["inbound"]["own_service"] == 2,
            what="both messages of shop to be skipped",
        )
        await wait_until(lambda: target.inbound.ledger.received == 2, what="the others")
        await target.wait_mirrored()
    envelopes = log_envelopes(data_dir)
    assert [e["id"] for e in envelopes] == [mine.id, "b-1", f"EVENTS/{plain.seq}"]
    assert [e["data"]["n"] for e in envelopes] == [0, 2, 3]
    assert sibling.seq < other.seq
    assert (await consumer_info(js, "payment.done")).num_ack_pending == 0  # all acknowledged


async def test_redelivery_after_a_crash_before_the_ack_is_not_appended_twice(
    data_dir: Path, nats_server: NatsServer, js: JetStreamContext
) -> None:
    target = inbound(nats_server.url, ack_wait=1.0)
    hang = asyncio.Event()

    async def never_ack(messages: Any, end: Any) -> None:  # dies between append and ack
        await hang.wait()

    target.inbound.acknowledge = never_ack
    async with Broker(data_dir, sync=[inbound(nats_server.url)]):
        pass  # creates the durable consumer, so that the 20 messages wait for one fetch
    for i in range(20):
        await js.publish(SUBJECT, b'{"n": %d}' % i, headers={"Nats-Msg-Id": f"p{i}"})
    async with Broker(data_dir, sync=[target]):
        await wait_until(lambda: target.inbound.ledger.received == 20, what="appended")
    assert (await consumer_info(js, "payment.done")).num_ack_pending == 20

    target = inbound(nats_server.url, ack_wait=1.0)
    async with Broker(data_dir, sync=[target]):
        # The server delivers them again once AckWait has passed.
        await wait_until(lambda: target.inbound.redelivered == 20, what="the redelivery")
        await js.publish(SUBJECT, b'{"n": 20}', headers={"Nats-Msg-Id": "p20"})
        await wait_until(lambda: target.inbound.ledger.received == 1)
        assert target.inbound.ledger.duplicates == 20
    assert log_ids(data_dir) == [f"p{i}" for i in range(21)]
    assert (await consumer_info(js, "payment.done")).num_ack_pending == 0


async def test_a_message_the_server_gives_up_on_is_reported(
    data_dir: Path,
    nats_server: NatsServer,
    js: JetStreamContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    options = {"ack_wait": 1.0, "max_deliver": 1}
    async with Broker(data_dir, sync=[inbound(nats_server.url, **options)]):
        pass  # creates the durable consumer
    seq = (await js.publish(SUBJECT, b'{"n": 1}')).seq
    # An instance that fetches it and dies: with max_deliver 1 the server never delivers it
    # again.
    dead = await js.pull_subscribe_bind(durable=consumer("payment.done"), stream=STREAM)
    assert len(await dead.fetch(1, timeout=5)) == 1
    await dead.unsubscribe()
    target = inbound(nats_server.url, **options)
    with caplog.at_level(logging.ERROR, logger="localbroker.sync"):
        async with Broker(data_dir, sync=[target]):
            await wait_until(lambda: target.inbound.given_up == 1, what="the advisory")
            status = target.status()["inbound"]
    assert status["given_up"] == 1
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert f"message {seq} of stream EVENTS to consumer shop_payment_done" in line
    assert log_ids(data_dir) == []


async def test_ack_wait_and_max_deliver_follow_the_settings(
    data_dir: Path, nats_server: NatsServer, js: JetStreamContext
) -> None:
    async with Broker(data_dir, ack_timeout=7, max_tries=3, sync=[inbound(nats_server.url)]):
        info = await consumer_info(js, "payment.done")
    assert (info.config.ack_wait, info.config.max_deliver) == (7, 3)  # the broker's
    async with Broker(data_dir, sync=[inbound(nats_server.url, ack_wait=2.5, max_deliver=9)]):
        info = await consumer_info(js, "payment.done")
    assert (info.config.ack_wait, info.config.max_deliver) == (2.5, 9)  # updated in place


async def test_unusable_message_is_terminated_and_stays_in_the_stream(
    data_dir: Path,
    nats_server: NatsServer,
    js: JetStreamContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = inbound(nats_server.url, ack_wait=0.5)
    with caplog.at_level(logging.WARNING, logger="localbroker.sync"):
        async with Broker(data_dir, sync=[target]):
            not_json = (await js.publish(SUBJECT, b"order o3 paid")).seq
            await js.publish(SUBJECT, b'{"order_id": "o4"}', headers={"Nats-Msg-Id": "ok-1"})
            await wait_until(lambda: target.inbound.ledger.received == 1, what="the good one")

            async def settled() -> bool:
                info = await consumer_info(js, "payment.done")
                return info.num_ack_pending == 0 and info.num_pending == 0

            # Terminated: neither pending nor waiting to be delivered again (AckWait passes).
            await wait_until(settled, what="nothing left to deliver")
            status = target.status()["inbound"]
            redelivered = target.inbound.redelivered
    assert log_ids(data_dir) == ["ok-1"]
    assert status["rejected"] == 1
    assert status["last_rejected"].startswith(f"EVENTS {not_json}: ")
    assert redelivered == 0
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert f"message {not_json} of stream EVENTS ({SUBJECT})" in error
    assert "not valid JSON" in error
    assert len(await read_stream(js, SUBJECT)) == 2, "it stays in the stream"

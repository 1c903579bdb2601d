"""Consume other services' events from a NATS JetStream stream into the local log.

Each topic (or pattern) of ``inbound_topics`` is read through a durable pull consumer of the
stream, named after the service (``<durable>_<topic>``, see
:attr:`~localbroker.sync.config.NatsJetStreamConfig.durable`), with explicit acknowledgements:
two instances of one service fetch from the same consumer and split its messages. Each fetched
batch is appended to the local log with one ``publish_many`` (durable when it returns) and only
then acknowledged.

A message fetched by an instance that died before acknowledging it is delivered again by the
server once the consumer's AckWait (default: the broker's ``ack_timeout``) has passed, to
whichever instance fetches next: that is JetStream's counterpart of Redis' XAUTOCLAIM. After
MaxDeliver deliveries (default: the broker's ``max_tries``) the server stops delivering a
message; the consumer logs an ERROR naming its stream sequence (from the server's advisory)
and counts it as ``given_up``: the message stays in the stream.

Never twice, conflicts and refused messages: see :mod:`localbroker.sync.inbound`. A message
that cannot be used (no data, data that is not a JSON object, a bad header) is terminated
(``msg.term()``): the server never delivers it again, and it stays in the stream for inspection.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from localbroker.config import StartFrom
from localbroker.errors import LocalBrokerError, SerializationError, SyncError
from localbroker.events import Event, GenericEvent, to_event

from .errors import SyncConfigurationError
from .inbound import InboundLedger, Seen
from .nats_errors import nats_errors
from .nats_format import ORIGIN_PREFIX, SERVICE, envelope_of_message

if TYPE_CHECKING:
    from .nats_jetstream import NatsJetStream

__all__ = ["NatsInbound", "consumer_name"]

logger = logging.getLogger("localbroker.sync")

_NOT_IN_NAMES = re.compile(r"[^A-Za-z0-9_-]")


def consumer_name(durable: str, topic: str) -> str:
    """The durable consumer of ``topic``: ``<durable>_<topic>``, characters other than
    letters, digits, ``-`` and ``_`` replaced by ``_``."""
    return _NOT_IN_NAMES.sub("_", f"{durable}_{topic}")


class NatsInbound:
    """The inbound half of :class:`NatsJetStream`."""

    def __init__(self, target: NatsJetStream) -> None:
        self.target = target
        self.config = target.config
        self.ledger = InboundLedger(target.name, ORIGIN_PREFIX, self.config.dedupe_window)
        self.consumers: dict[str, str] = {}
        """Consumer name -> topic (or pattern); named once the service is known."""
        self._subscriptions: dict[str, tuple[NATS, JetStreamContext.PullSubscription]] = {}
        self.redelivered = 0
        """Messages fetched that had been delivered before (to an instance that died, or
        whose acknowledgement was lost)."""
        self.given_up = 0
        """Messages the server stopped delivering after MaxDeliver deliveries."""

    # -- state -------------------------------------------------------------------------------

    async def load_state(self, state: dict[str, Any]) -> None:
        await self.ledger.load(self.target.broker, state)

    def state(self) -> dict[str, Any]:
        return self.ledger.state()

    def status(self) -> dict[str, Any]:
        return {
            "consumers": self.consumers,
            **self.ledger.counters(),
            "redelivered": self.redelivered,
            "given_up": self.given_up,
        }

    # -- setup -------------------------------------------------------------------------------

    def _name_consumers(self) -> None:
        durable = self.config.durable or self.target.service
        names: dict[str, str] = {}
        for topic in self.config.inbound_topics:
            name = consumer_name(durable, topic)
            if name in names:
                raise SyncConfigurationError(
                    f"{self.target.name} sync: inbound topics {names[name]!r} and {topic!r} "
                    f"would share the consumer name {name!r}; drop one of them"
                )
            names[name] = topic
        self.consumers = names

    def consumer_config(self, name: str, topic: str) -> ConsumerConfig:
        broker = self.target.broker.config
        cfg = self.config
        return ConsumerConfig(
            name=name,
            durable_name=name,
            filter_subject=self.target.subject(topic),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=cfg.ack_wait if cfg.ack_wait is not None else broker.ack_timeout,
            max_deliver=cfg.max_deliver if cfg.max_deliver is not None else broker.max_tries,
            deliver_policy=(
                DeliverPolicy.ALL if cfg.inbound_start is StartFrom.EARLIEST else DeliverPolicy.NEW
            ),
        )

    async def setup(self, js: JetStreamContext) -> None:
        """Create the durable consumers, or bring their AckWait and MaxDeliver up to date."""
        if not self.consumers:
            self._name_consumers()
        stream = self.config.stream
        for name, topic in self.consumers.items():
            wanted = self.consumer_config(name, topic)
            with nats_errors(f"{self.target.describe()} consumer {name}"):
                try:
                    info = await js.consumer_info(stream, name)
                except nats.js.errors.NotFoundError:
                    await js.add_consumer(stream, wanted)
                    logger.info("%s: created consumer %s of %s", self.target.name, name, stream)
                    continue
                have = info.config
                if have.filter_subject != wanted.filter_subject:
                    raise SyncConfigurationError(
                        f"{self.target.describe()}: consumer {name} reads "
                        f"{have.filter_subject!r}, not {wanted.filter_subject!r}; delete it "
                        "or give this target another durable="
                    )
                if (have.ack_wait, have.max_deliver) != (wanted.ack_wait, wanted.max_deliver):
                    # Only the settings this target owns change; the position stays.
                    have.ack_wait, have.max_deliver = wanted.ack_wait, wanted.max_deliver
                    await js.add_consumer(stream, have)

    async def on_connect(self, nc: NATS) -> None:
        """Listen to the server's advisories about messages it stopped delivering."""
        if not self.consumers:
            self._name_consumers()
        for name in self.consumers:
            subject = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.config.stream}.{name}"
            await nc.subscribe(subject, cb=self._given_up)

    async def _given_up(self, msg: Msg) -> None:
        try:
            advisory = orjson.loads(msg.data)
            seq, deliveries = advisory["stream_seq"], advisory["deliveries"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        self.given_up += 1
        logger.error(
            "%s: the server stopped delivering message %s of stream %s to consumer %s after "
            "%s deliveries without an acknowledgement (max_deliver); unless it was appended "
            "just before a crash, it is not in the local log: it stays in the stream, where an "
            "operator can publish it again",
            self.target.name,
            seq,
            self.config.stream,
            advisory.get("consumer", "?"),
            deliveries,
        )

    # -- the loops ---------------------------------------------------------------------------

    def spawn_loops(self) -> None:
        for name in self.consumers:
            self.target.spawn(functools.partial(self.run, name), f"inbound {name}")

    async def _subscription(self, name: str) -> JetStreamContext.PullSubscription:
        nc, js = await self.target.jetstream()
        bound = self._subscriptions.get(name)
        if bound is None or bound[0] is not nc:
            await self.setup(js)
            with nats_errors(self.target.describe()):
                sub = await js.pull_subscribe_bind(durable=name, stream=self.config.stream)
            bound = self._subscriptions[name] = (nc, sub)
        return bound[1]

    async def run(self, name: str) -> None:
        target = self.target
        append_failures = 0
        while not target.closing:
            try:
                sub = await self._subscription(name)
                with nats_errors(f"{target.describe()} consumer {name}"):
                    try:
                        messages = await sub.fetch(
                            self.config.inbound_batch, timeout=self.config.fetch_wait
                        )
                    except nats.errors.TimeoutError:
                        messages = []  # nothing new
                target.health.ok()
                if messages:
                    await self.handle(messages)
                append_failures = 0
            except SyncError as exc:
                self._subscriptions.pop(name, None)
                await target.drop_connection()
                await target.retry_after_failure(exc)
            except (LocalBrokerError, OSError) as exc:
                # The local append failed (a full disk, ...): nothing was acknowledged, so the
                # server delivers the messages again after AckWait.
                append_failures += 1
                logger.error(
                    "%s: cannot append the messages fetched from consumer %s (%s); they are "
                    "not acknowledged and come again after AckWait (up to max_deliver times)",
                    target.name,
                    name,
                    exc,
                )
                await asyncio.sleep(self.config.reconnect.delay(append_failures))

    async def handle(self, messages: list[Msg]) -> None:
        """Append the messages' events (one durable write), then acknowledge them all."""
        to_ack, end = await self.append(messages)
        await self.acknowledge(to_ack, end)

    async def append(self, messages: list[Msg]) -> tuple[list[Msg], int | None]:
        """Append the new events among ``messages`` (terminating those that cannot be used);
        the messages to acknowledge, and the log offset after the last event appended."""
        ledger = self.ledger
        stream = self.config.stream
        prefix = self.config.subject_prefix
        events: list[Event] = []
        batch: dict[str, Seen] = {}
        to_ack: list[Msg] = []
        for msg in messages:
            meta = msg.metadata
            seq = meta.sequence.stream
            if meta.num_delivered > 1:
                self.redelivered += 1
            headers = msg.headers or {}
            if headers.get(SERVICE) == self.target.service:
                ledger.own += 1  # mirrored by this service itself: handled where published
                to_ack.append(msg)
                continue
            where = f"message {seq} of stream {stream} ({msg.subject})"
            try:
                envelope = envelope_of_message(
                    stream=stream,
                    seq=seq,
                    topic=msg.subject.removeprefix(prefix),
                    headers=headers,
                    data=msg.data,
                    stored_at=meta.timestamp,
                )
                event = to_event(envelope, GenericEvent)
            except SerializationError as exc:
                ledger.reject(f"{stream} {seq}", where, "terminated", exc)
                with nats_errors(self.target.describe()):
                    await msg.term()
                continue
            to_ack.append(msg)
            if ledger.is_new(event.id, envelope, batch, where):
                events.append(event)
        end = None
        if events:
            # publish_many returns once the batch is in the log (fsynced under fsync=always):
            # only then may the server forget the messages.
            results = await self.target.broker.publish_many(events)
            ledger.appended(batch)
            end = results[-1].offset + 1
        return to_ack, end

    async def acknowledge(self, messages: list[Msg], end: int | None) -> None:
        """Acknowledge ``messages`` (appended up to offset ``end``), and wait until the
        acknowledgements left (a lost one means a redelivery, which the ledger drops)."""
        nc, _ = await self.target.jetstream()
        with nats_errors(self.target.describe()):
            for msg in messages:
                await msg.ack()
            await nc.flush(timeout=max(1, round(self.config.publish_timeout)))
        if end is not None:
            self.ledger.scan_from = end

"""Mirror the local log to a NATS JetStream stream, and consume other services' messages into it.

Outbound, one subject per topic (``<subject_prefix><topic>``) in one stream (default
``EVENTS``, created if missing with subjects ``<subject_prefix>>`` and file storage); message
layout in :mod:`localbroker.sync.nats_format`. A batch is published pipelined (every message
sent, then every acknowledgement awaited); the cursor moves only once the server acknowledged
all of them.

Exactly once: every message carries ``Nats-Msg-Id`` = the event id, so a resend within the
stream's duplicate window is dropped by the server. A resend after the window (a broker down
longer than that after a crash, or a long outage after an acknowledgement was lost) is covered
by a sequence watermark: the cursor is saved with ``seq``, the highest stream sequence the
server acknowledged for events before the cursor. After a restart or a failure the mirror reads
the messages stored after ``seq`` (headers only) and skips the events of this data directory
it finds there (``Event-Producer`` and ``Event-Offset``) instead of publishing them again.

Inbound: see :mod:`localbroker.sync.nats_inbound`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from localbroker.log import Record

from .config import NatsJetStreamConfig, build_config
from .errors import SyncConfigurationError, TargetUnavailableError
from .nats_errors import nats_errors
from .nats_format import OFFSET, ORIGIN_PREFIX, PRODUCER, message_of_envelope
from .target import SyncTarget, redact

__all__ = ["NatsJetStream"]

logger = logging.getLogger("localbroker.sync")

#: Messages read at a time when looking for what a failed batch stored.
_SCAN_BATCH = 1000


def covers(filter_subject: str, prefix: str) -> bool:
    """Whether a stream subject (``events.>``, ``>``, ``*.>``) takes every ``<prefix>...``."""
    wanted = prefix.rstrip(".").split(".")
    for i, token in enumerate(filter_subject.split(".")):
        if token == ">":
            return True
        if i >= len(wanted) or token not in ("*", wanted[i]):
            return False
    return False


class NatsJetStream(SyncTarget[NatsJetStreamConfig]):
    """Sync target: mirror every local event to a NATS JetStream stream; optionally consume
    some topics through durable pull consumers.

    Example::

        broker = Broker("./data", sync=[NatsJetStream("nats://localhost:4222",
                                                      service="billing",
                                                      inbound_topics=["order.placed"])])

    Options are those of :class:`~localbroker.sync.config.NatsJetStreamConfig` (keywords, or
    ``LOCALBROKER_NATS_*`` environment variables).
    """

    kind = "nats"
    origin_prefix = ORIGIN_PREFIX

    def __init__(self, url: str | None = None, **options: Any) -> None:
        super().__init__(build_config(NatsJetStreamConfig, url=url, **options))
        if not self.config.url.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise SyncConfigurationError(
                f"nats sync: cannot use URL {redact(self.config.url)!r}: it must start with "
                "nats://, tls://, ws:// or wss://"
            )
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._lost = asyncio.Event()
        """Set when the current connection is lost (or closed)."""
        self._connect_lock = asyncio.Lock()
        self.acked_seq: int | None = None
        """Highest stream sequence acknowledged for an event before the cursor (None: this
        data directory never sent anything to the stream)."""
        self._verify = False
        self._stored: set[int] = set()
        self.skipped_stored = 0
        """Events not published again because the stream already held them (found after a
        failure or a restart)."""
        self.server_duplicates = 0
        """Messages the server dropped as duplicates (Nats-Msg-Id seen within its window)."""
        self.duplicate_window: float | None = None
        self.inbound: Any = None
        if self.config.inbound_topics:
            from .nats_inbound import NatsInbound

            self.inbound = NatsInbound(self)

    def describe(self) -> str:
        return f"nats {redact(self.config.url)} stream {self.config.stream}"

    def subject(self, topic: str) -> str:
        """The subject of ``topic`` (or of a topic pattern)."""
        return self.config.subject_prefix + topic

    def wanted(self) -> bool:
        return self.config.outbound

    # -- the connection ----------------------------------------------------------------------

    async def jetstream(self) -> tuple[NATS, JetStreamContext]:
        """The connection and its JetStream context, connecting if there is none."""
        async with self._connect_lock:
            if self._nc is None or self._js is None or self._nc.is_closed:
                cfg = self.config

                seen: list[Exception] = []

                async def quiet(exc: Exception) -> None:
                    # Failures surface as errors of the calls that meet them (and in the
                    # status); nats-py's default would log a traceback for each.
                    seen.append(exc)
                    logger.debug("%s: %s", self.name, exc)

                lost = asyncio.Event()

                async def closed() -> None:
                    lost.set()

                nc = NATS()
                with nats_errors(self.describe()):
                    try:
                        async with asyncio.timeout(cfg.connect_timeout):
                            await nc.connect(
                                cfg.url,
                                name=f"localbroker {self.service}",
                                connect_timeout=max(1, round(cfg.connect_timeout)),
                                # No reconnect inside nats-py: messages it buffered while
                                # disconnected would be sent long after their batch failed. A
                                # failed batch closes the connection; the next try opens another.
                                allow_reconnect=False,
                                # Even so, nats-py tries a server again and again while
                                # connecting: give up after the second try (our own backoff
                                # follows).
                                max_reconnect_attempts=1,
                                reconnect_time_wait=0,
                                error_cb=quiet,
                                disconnected_cb=closed,
                                closed_cb=closed,
                            )
                    except BaseException as exc:
                        # A refused connection leaves its socket open inside nats-py.
                        with contextlib.suppress(Exception):
                            await nc.close()
                        if isinstance(exc, TimeoutError | nats.errors.NoServersError):
                            last = f"{seen[-1]}" if seen else "no answer"
                            raise TargetUnavailableError(
                                f"{self.describe()}: cannot connect ({last})"
                            ) from None
                        raise
                self._nc, self._lost = nc, lost
                self._js = self._nc.jetstream(
                    timeout=cfg.publish_timeout,
                    publish_async_max_pending=cfg.batch_size,
                )
                if self.inbound is not None:
                    await self.inbound.on_connect(self._nc)
            return self._nc, self._js

    async def drop_connection(self) -> None:
        """Close the connection (after a failure): what it still buffered is discarded."""
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.config.connect_timeout):
                    await nc.close()

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        _, js = await self.jetstream()
        await self.stream_info(js)
        if self.inbound is not None:
            await self.inbound.setup(js)

    async def load_state(self, state: dict[str, Any]) -> None:
        if "seq" in state:
            self.acked_seq = int(state["seq"])
            # The last process may have died with a batch partly stored.
            self._verify = True
        if self.inbound is not None:
            await self.inbound.load_state(state)

    def extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.acked_seq is not None:
            state["seq"] = self.acked_seq
        if self.inbound is not None:
            state.update(self.inbound.state())
        return state

    def extra_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "stream": self.config.stream,
            "subjects": self.subject(">"),
            "duplicate_window": self.duplicate_window,
            "acked_seq": self.acked_seq,
            "server_duplicates": self.server_duplicates,
            "skipped_stored": self.skipped_stored,
        }
        if self.inbound is not None:
            status["inbound"] = self.inbound.status()
        return status

    async def start(self, broker: Any) -> None:
        await super().start(broker)
        if self.inbound is not None:
            self.inbound.spawn_loops()

    async def disconnect(self) -> None:
        await self.drop_connection()

    # -- the stream --------------------------------------------------------------------------

    async def stream_info(self, js: JetStreamContext) -> Any:
        """The stream's info, creating the stream if needed and allowed; checks its subjects."""
        cfg = self.config
        with nats_errors(self.describe()):
            try:
                info = await js.stream_info(cfg.stream)
            except nats.js.errors.NotFoundError:
                if not cfg.create_stream:
                    raise SyncConfigurationError(
                        f"{self.describe()}: the stream does not exist (and create_stream is "
                        "off); create it with the subjects "
                        f"{self.subject('>')!r} or choose another stream"
                    ) from None
                info = await js.add_stream(
                    StreamConfig(
                        name=cfg.stream,
                        subjects=[self.subject(">")],
                        storage=StorageType.FILE,
                        duplicate_window=cfg.duplicate_window,
                    )
                )
                logger.info("%s: created stream %s", self.name, cfg.stream)
        subjects = info.config.subjects or []
        if not any(covers(s, cfg.subject_prefix) for s in subjects):
            raise SyncConfigurationError(
                f"{self.describe()}: the stream takes the subjects {subjects}, not "
                f"{self.subject('>')!r}; add that subject to it, or choose another stream or "
                "subject_prefix"
            )
        self.duplicate_window = info.config.duplicate_window
        return info

    # -- outbound ----------------------------------------------------------------------------

    async def resume_point(self) -> int | None:
        _, js = await self.jetstream()
        state = (await self.stream_info(js)).state
        if self.acked_seq is None:
            # Nothing sent yet: whatever this directory publishes comes after this sequence.
            # Saved before the first batch, so a crash during it can be checked too.
            self.acked_seq = state.last_seq
            await self.save()
            return None
        if state.last_seq < self.acked_seq:
            logger.warning(
                "%s: stream %s ends at sequence %d, below the %d acknowledged to this data "
                "directory: it was deleted and created again; events from offset %d are sent "
                "to it",
                self.name,
                self.config.stream,
                state.last_seq,
                self.acked_seq,
                self.cursor,
            )
            self.acked_seq = max(0, state.first_seq - 1)
        if not self._verify or state.last_seq == self.acked_seq:
            self._verify = False
            return None
        found = await self._stored_after(js, self.acked_seq + 1)
        self._stored = {offset for offset in found if offset >= self.cursor}
        self._verify = False
        at = self.cursor
        while at in self._stored:
            at += 1
        self.skipped_stored += len(self._stored)
        if self._stored:
            logger.info(
                "%s: the stream already holds %d events of offsets %d.. (stored before a "
                "failure or a crash); they are not sent again",
                self.name,
                len(self._stored),
                min(self._stored),
            )
        return at

    async def _stored_after(self, js: JetStreamContext, first: int) -> set[int]:
        """Offsets of this data directory's events stored at stream sequence ``first`` or later."""
        offsets: set[int] = set()
        with nats_errors(f"{self.describe()}: reading the messages after sequence {first - 1}"):
            sub = await js.pull_subscribe(
                self.subject(">"),
                stream=self.config.stream,
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=first,
                    ack_policy=AckPolicy.NONE,
                    headers_only=True,  # the payloads are not needed
                    inactive_threshold=60.0,
                    mem_storage=True,
                ),
            )
            try:
                while True:
                    try:
                        messages = await sub.fetch(_SCAN_BATCH, timeout=self.config.fetch_wait)
                    except nats.errors.TimeoutError:
                        break  # nothing more
                    for msg in messages:
                        headers = msg.headers or {}
                        if headers.get(PRODUCER) == self.producer and OFFSET in headers:
                            offsets.add(int(headers[OFFSET]))
                    if messages[-1].metadata.num_pending == 0:
                        break
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        return offsets

    async def send(self, records: list[Record]) -> None:
        # Not what the stream already holds (found after a failure or a restart).
        outgoing = self.outgoing(records, skip=self._stored)
        if outgoing:
            try:
                await self._publish(outgoing)
            except BaseException:
                # Part of the batch may be stored: look before sending it again, on a new
                # connection (the old one may still hold some of it).
                self._verify = True
                await self.drop_connection()
                raise
        last = records[-1].offset
        self._stored = {offset for offset in self._stored if offset > last}

    async def _publish(self, outgoing: list[tuple[int, dict[str, Any]]]) -> None:
        _, js = await self.jetstream()
        cfg = self.config
        with nats_errors(self.describe()):
            try:
                async with asyncio.timeout(cfg.publish_timeout):
                    futures = []
                    for offset, envelope in outgoing:
                        headers, data = message_of_envelope(
                            envelope, service=self.service, producer=self.producer, offset=offset
                        )
                        futures.append(
                            await js.publish_async(
                                self.subject(envelope["topic"]), data, headers=headers
                            )
                        )
                    acks = await self._unless_lost(asyncio.gather(*futures), len(outgoing))
            except TimeoutError:
                raise TargetUnavailableError(
                    f"{self.describe()}: {len(outgoing)} messages not acknowledged within "
                    f"{cfg.publish_timeout} s"
                ) from None
        for ack in acks:
            if ack.stream != cfg.stream:
                raise SyncConfigurationError(
                    f"{self.describe()}: subject {self.subject('...')} is stored by stream "
                    f"{ack.stream}, not {cfg.stream}; remove the overlap, or use that stream"
                )
        self.server_duplicates += sum(1 for ack in acks if ack.duplicate)
        self.acked_seq = max(self.acked_seq or 0, max(ack.seq for ack in acks))

    async def _unless_lost(self, acks: Awaitable[list[Any]], count: int) -> list[Any]:
        """``await acks``, or TargetUnavailableError as soon as the connection is lost: nats-py
        leaves the acknowledgements of a lost connection waiting (until publish_timeout)."""
        pending = asyncio.ensure_future(acks)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({pending, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            acknowledged = pending.done()
            if not acknowledged:
                pending.cancel()
        if not acknowledged:
            raise TargetUnavailableError(
                f"{self.describe()}: the connection was lost before {count} messages were "
                "acknowledged"
            )
        return pending.result()

"""Consume other services' events from Redis Streams into the local log.

For each topic of ``inbound_topics``, the stream is read with XREADGROUP in a consumer group
named after the service; two instances of one service (same group, own consumer names) split
the stream. Each batch is appended to the local log with one ``publish_many`` (durable when it
returns) and only then XACKed. Entries left pending by a dead instance are taken over with
XAUTOCLAIM once idle for ``claim_idle`` seconds.

Events are appended as they arrive, with the ``version`` the entry names (1 when it names
none), never converted: like every event in the log they are upcast when they are read for a
handler (``Broker.upcaster``), so the producer and this service may be on different versions.

Never twice, conflicts and refused entries: see :mod:`localbroker.sync.inbound`. Entries that
cannot be used (no ``data`` field, JSON that is not an object, bytes that are not UTF-8, ...)
are acknowledged, so that they neither come back forever nor hold back the group; they stay in
the stream for inspection (``XRANGE <stream> <id> <id>``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from redis import exceptions as rex

from localbroker.config import StartFrom
from localbroker.errors import SerializationError, SyncError
from localbroker.events import Event, GenericEvent, to_event

from .inbound import InboundLedger, Seen
from .redis_errors import redis_errors
from .stream_format import ORIGIN_PREFIX, entry_to_envelope

if TYPE_CHECKING:
    from .redis_streams import RedisStreams

__all__ = ["InboundConsumer"]

logger = logging.getLogger("localbroker.sync")

Entries = list[tuple[bytes, dict[bytes, bytes] | None]]


class InboundConsumer:
    """The inbound half of :class:`RedisStreams`."""

    def __init__(self, target: RedisStreams) -> None:
        self.target = target
        self.config = target.config
        self.streams = {target.stream(t): t for t in self.config.inbound_topics}
        self.ledger = InboundLedger(target.name, ORIGIN_PREFIX, self.config.dedupe_window)
        self.unacked: dict[str, list[bytes]] = {}
        self.claimed = 0
        self._needs_pending_pass = True
        self._last_claim = 0.0

    @property
    def group(self) -> str:
        return self.target.service

    # -- state -------------------------------------------------------------------------------

    async def load_state(self, state: dict[str, Any]) -> None:
        await self.ledger.load(self.target.broker, state)

    def state(self) -> dict[str, Any]:
        return self.ledger.state()

    def status(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "consumer": self.target.consumer,
            "streams": sorted(self.streams),
            **self.ledger.counters(),
            "claimed": self.claimed,
        }

    # -- setup -------------------------------------------------------------------------------

    async def setup(self) -> None:
        """Create the consumer groups (checking that each key is a stream)."""
        client = self.target.client
        start = "0" if self.config.inbound_start is StartFrom.EARLIEST else "$"
        for stream in self.streams:
            with redis_errors(self.target.describe()):
                try:
                    await client.xgroup_create(stream, self.group, id=start, mkstream=True)
                except rex.ResponseError as exc:
                    if not str(exc).startswith("BUSYGROUP"):
                        raise

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        client = self.target.client
        block_ms = int(self.config.block * 1000)
        while not self.target.closing:
            try:
                if self._needs_pending_pass:
                    await self.setup()
                    await self._ack_unacked()
                    await self._pending_pass()
                    self._needs_pending_pass = False
                    self.target.health.ok()
                if time.monotonic() - self._last_claim >= self.config.claim_interval:
                    await self._claim()
                    self._last_claim = time.monotonic()
                with redis_errors(self.target.describe()):
                    response = await client.xreadgroup(
                        self.group,
                        self.target.consumer,
                        dict.fromkeys(self.streams, ">"),
                        count=self.config.inbound_batch,
                        block=block_ms,
                    )
                await self.handle(_by_stream(response))
            except SyncError as exc:
                self._needs_pending_pass = True
                await self.target.retry_after_failure(exc)

    async def _pending_pass(self) -> None:
        """Entries delivered to this consumer before a restart and never acknowledged."""
        client = self.target.client
        after: dict[Any, Any] = dict.fromkeys(self.streams, "0")
        while after:
            with redis_errors(self.target.describe()):
                response = await client.xreadgroup(
                    self.group, self.target.consumer, after, count=self.config.inbound_batch
                )
            batches = _by_stream(response)
            await self.handle(batches)
            for stream in list(after):
                entries = batches.get(stream) or []
                if entries:
                    after[stream] = entries[-1][0].decode()
                else:
                    del after[stream]

    async def _claim(self) -> None:
        """Take over entries another consumer (a dead instance) left pending too long."""
        client = self.target.client
        idle_ms = int(self.config.claim_idle * 1000)
        for stream in self.streams:
            start = "0-0"
            while True:
                with redis_errors(self.target.describe()):
                    reply = await client.xautoclaim(
                        stream,
                        self.group,
                        self.target.consumer,
                        idle_ms,
                        start_id=start,
                        count=self.config.inbound_batch,
                    )
                next_start, entries = reply[0], reply[1]
                if entries:
                    self.claimed += len(entries)
                    await self.handle({stream: entries})
                start = next_start.decode() if isinstance(next_start, bytes) else next_start
                if start == "0-0":
                    break

    async def handle(self, batches: dict[str, Entries]) -> None:
        """Append the entries' events (one durable write), then XACK them all."""
        ledger = self.ledger
        events: list[Event] = []
        acks: dict[str, list[bytes]] = {}
        batch: dict[str, Seen] = {}
        for stream, entries in batches.items():
            topic = self.streams[stream]
            for entry_id, raw in entries:
                acks.setdefault(stream, []).append(entry_id)
                if raw is None:  # deleted from the stream while pending
                    continue
                if raw.get(b"service", b"").decode(errors="replace") == self.target.service:
                    ledger.own += 1  # mirrored by this service itself: handled where published
                    continue
                where = f"entry {entry_id.decode()} of {stream}"
                try:
                    envelope = entry_to_envelope(stream, entry_id.decode(), raw, topic=topic)
                    event = to_event(envelope, GenericEvent)
                except SerializationError as exc:
                    ledger.reject(f"{stream} {entry_id.decode()}", where, "acknowledged", exc)
                    continue
                if ledger.is_new(event.id, envelope, batch, where):
                    events.append(event)
        end = None
        if events:
            # publish_many returns once the batch is in the log (fsynced under fsync=always):
            # only then may Redis forget the entries.
            results = await self.target.broker.publish_many(events)
            ledger.appended(batch)
            end = results[-1].offset + 1
        for stream, ids in acks.items():
            self.unacked.setdefault(stream, []).extend(ids)
        await self._ack_unacked()
        if end is not None:
            ledger.scan_from = end

    async def _ack_unacked(self) -> None:
        if not self.unacked:
            return
        with redis_errors(self.target.describe()):
            async with self.target.client.pipeline(transaction=False) as pipe:
                for stream, ids in self.unacked.items():
                    pipe.xack(stream, self.group, *ids)
                await pipe.execute()
        self.unacked.clear()


def _by_stream(response: Any) -> dict[str, Entries]:
    """XREADGROUP's reply (RESP2 list or RESP3 dict) as ``{stream: entries}``."""
    if not response:
        return {}
    items = response.items() if isinstance(response, dict) else response
    out: dict[str, Entries] = {}
    for stream, entries in items:
        name = stream.decode() if isinstance(stream, bytes) else stream
        if isinstance(entries, list) and entries and isinstance(entries[0], list):
            entries = entries[0]  # RESP3 wraps the entries once more
        out[name] = list(entries)
    return out

"""Consume other services' events from Redis Streams into the local log.

For each topic of ``inbound_topics``, the stream is read with XREADGROUP in a consumer group
named after the service; two instances of one service (same group, own consumer names) split
the stream. Each batch is appended to the local log with one ``publish_many`` (durable when it
returns) and only then XACKed. Entries left pending by a dead instance are taken over with
XAUTOCLAIM once idle for ``claim_idle`` seconds.

Never twice: an event appended but not yet acknowledged when the process died is delivered
again by Redis after the restart (it is still pending for this consumer). At start the part of
the local log that may hold such events (from the last point where everything was acknowledged)
is scanned for events that came from Redis, and their ids, with the ids of recent inbound
events, are dropped instead of appended again. The ids remembered are those of the inbound
events among the last ``dedupe_window`` records of the log at start (and all after
``scan_from``), then of the last ``dedupe_window`` inbound events appended.

An event id names one event. An entry whose (caller-supplied) ``id`` was already appended is
dropped; when its content (topic, key or data) differs from the event appended under that id,
it is not a redelivery but a producer reusing an id, and a WARNING names the id, the stream, the
entry and the entry appended before (counted as ``conflicts`` in the status). The entry stays in
the stream, so nothing is lost: a producer that meant a new event gives it a new id.

Entries that cannot be used (no ``data`` field, JSON that is not an object, bytes that are not
UTF-8, ...) are logged as an ERROR naming the stream and the entry id and acknowledged, so that
they do not come back forever nor hold back the group; they stay in the stream for inspection
(``XRANGE <stream> <id> <id>``), are counted as ``rejected`` and the last one is shown as
``last_rejected`` in the status.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
from redis import exceptions as rex

from localbroker.config import StartFrom
from localbroker.errors import SerializationError, SyncError
from localbroker.events import Event, GenericEvent, decode_envelope, to_event

from .redis_errors import redis_errors
from .stream_format import ORIGIN_HEADER, entry_to_envelope, is_from_redis

if TYPE_CHECKING:
    from .redis_streams import RedisStreams

__all__ = ["InboundConsumer"]

logger = logging.getLogger("localbroker.sync")

#: Bytes every inbound record's payload contains (a cheap filter before decoding).
_ORIGIN_MARK = b'"origin":"redis:'

Entries = list[tuple[bytes, dict[bytes, bytes] | None]]
#: What is remembered of an inbound event: a digest of its content and where it came from.
Seen = tuple[bytes, str]


def content_digest(envelope: dict[str, Any]) -> bytes:
    """A digest of what makes an event itself (topic, key, data), to tell a redelivery (same
    content) from another event under a reused id. Not the time: it may come from the entry id."""
    content = {k: envelope.get(k) for k in ("topic", "key", "data")}
    return hashlib.blake2b(
        orjson.dumps(content, option=orjson.OPT_SORT_KEYS), digest_size=16
    ).digest()


def _origin(envelope: dict[str, Any]) -> str:
    return str((envelope.get("headers") or {}).get(ORIGIN_HEADER, "?"))


class InboundConsumer:
    """The inbound half of :class:`RedisStreams`."""

    def __init__(self, target: RedisStreams) -> None:
        self.target = target
        self.config = target.config
        self.streams = {target.stream(t): t for t in self.config.inbound_topics}
        self.seen: collections.OrderedDict[str, Seen] = collections.OrderedDict()
        self.unacked: dict[str, list[bytes]] = {}
        self.scan_from = 0
        """Every event appended from Redis before this offset is acknowledged."""
        self.received = 0
        self.duplicates = 0
        self.rejected = 0
        self.last_rejected: str | None = None
        """The last entry refused, with the reason (``<stream> <entry id>: <reason>``)."""
        self.conflicts = 0
        """Entries dropped for reusing the id of an event with other content."""
        self.claimed = 0
        self._needs_pending_pass = True
        self._last_claim = 0.0

    @property
    def group(self) -> str:
        return self.target.service

    # -- state -------------------------------------------------------------------------------

    async def load_state(self, state: dict[str, Any]) -> None:
        broker = self.target.broker
        if "inbound_scan" in state:
            self.scan_from = max(int(state["inbound_scan"]), broker.log.start_offset)
        else:
            # Nothing came in from Redis yet: no part of the log can hold an unacked entry.
            self.scan_from = broker.log.next_offset
        # Also the recent past, so that an id reused across a restart is caught too.
        recent = max(broker.log.start_offset, broker.log.next_offset - self.config.dedupe_window)
        await self._scan_log(min(self.scan_from, recent))

    def state(self) -> dict[str, Any]:
        return {"inbound_scan": self.scan_from}

    def status(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "consumer": self.target.consumer,
            "streams": sorted(self.streams),
            "received": self.received,
            "duplicates_dropped": self.duplicates,
            "rejected": self.rejected,
            "last_rejected": self.last_rejected,
            "conflicts": self.conflicts,
            "claimed": self.claimed,
        }

    async def _scan_log(self, offset: int) -> None:
        """Remember the ids of the events appended from Redis from ``offset`` on: those that
        may not have been acknowledged (from ``scan_from``) and the recent ones."""
        broker = self.target.broker
        found = 0
        while offset < broker.visible_offset:
            records = broker.read_log(offset, 5000)
            if not records:
                break
            for record in records:
                if _ORIGIN_MARK in record.payload:
                    envelope = decode_envelope(record.payload)
                    if is_from_redis(envelope):
                        self._remember(
                            envelope["id"], (content_digest(envelope), _origin(envelope))
                        )
                        found += record.offset >= self.scan_from
            offset = records[-1].offset + 1
            await asyncio.sleep(0)  # a long scan must not starve the broker
        if found:
            logger.info("%s: %d events from Redis may await their XACK", self.target.name, found)

    def _remember(self, event_id: str, seen: Seen) -> None:
        self.seen[event_id] = seen
        self.seen.move_to_end(event_id)
        while len(self.seen) > self.config.dedupe_window:
            self.seen.popitem(last=False)

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
        events: list[Event] = []
        acks: dict[str, list[bytes]] = {}
        in_batch: dict[str, Seen] = {}
        for stream, entries in batches.items():
            topic = self.streams[stream]
            for entry_id, raw in entries:
                acks.setdefault(stream, []).append(entry_id)
                if raw is None:  # deleted from the stream while pending
                    continue
                if raw.get(b"service", b"").decode(errors="replace") == self.target.service:
                    continue  # mirrored by this service itself: already handled locally
                try:
                    envelope = entry_to_envelope(stream, entry_id.decode(), raw, topic=topic)
                    event = to_event(envelope, GenericEvent)
                except SerializationError as exc:
                    self._reject(stream, entry_id, exc)
                    continue
                this: Seen = (content_digest(envelope), _origin(envelope))
                before = in_batch.get(event.id) or self.seen.get(event.id)
                if before is not None:
                    self.duplicates += 1
                    if before[0] != this[0]:
                        self._conflict(stream, entry_id, event.id, before[1])
                    continue
                in_batch[event.id] = this
                events.append(event)
        if events:
            # publish_many returns once the batch is in the log (fsynced under fsync=always):
            # only then may Redis forget the entries.
            results = await self.target.broker.publish_many(events)
            for event in events:
                self._remember(event.id, in_batch[event.id])
            self.received += len(events)
            end = results[-1].offset + 1
        else:
            end = None
        for stream, ids in acks.items():
            self.unacked.setdefault(stream, []).extend(ids)
        await self._ack_unacked()
        if end is not None:
            self.scan_from = end

    def _reject(self, stream: str, entry_id: bytes, exc: SerializationError) -> None:
        self.rejected += 1
        self.last_rejected = f"{stream} {entry_id.decode()}: {exc}"
        logger.error(
            "%s: entry %s of %s cannot be used and is acknowledged without being appended "
            "(it stays in the stream): %s",
            self.target.name,
            entry_id.decode(),
            stream,
            exc,
        )

    def _conflict(self, stream: str, entry_id: bytes, event_id: str, first: str) -> None:
        self.conflicts += 1
        logger.warning(
            "%s: entry %s of %s reuses event id %r, already appended from %s with other "
            "content (topic, key or data); it is dropped, since an event id names one event "
            "(the entry stays in the stream; give it its own id to have it appended)",
            self.target.name,
            entry_id.decode(),
            stream,
            event_id,
            first.removeprefix("redis:"),
        )

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

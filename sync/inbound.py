"""What every inbound consumer shares: never appending an event twice, counting what it refused.

A server delivers a message again when its acknowledgement was lost: the process died between
the durable append and the acknowledgement, or the acknowledgement never reached the server.
So each consumer remembers the ids of the events it appended (:class:`InboundLedger`) and drops
a message whose id it already appended. At start the part of the local log that may hold such
events (from ``scan_from``, the last point where everything was acknowledged) is read back,
with the recent past (``dedupe_window`` records), so that a redelivery after a crash and an id
reused across a restart are both caught.

An event id names one event. A message whose id was already appended with other content
(topic, key or data) is not a redelivery but a producer reusing an id: a WARNING names the id,
where the message is and where the first event came from (counted as ``conflicts``), and it is
dropped. A message that cannot be used at all is refused with an ERROR naming where it is
(counted as ``rejected``, the last one shown as ``last_rejected``).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
from typing import TYPE_CHECKING, Any

import orjson

from localbroker.events import decode_envelope

if TYPE_CHECKING:
    from localbroker import Broker

__all__ = ["ORIGIN_HEADER", "InboundLedger", "Seen", "content_digest", "origin_of"]

logger = logging.getLogger("localbroker.sync")

#: Header set on every event an inbound consumer appends: ``<kind>:<where on the server>``
#: (``redis:events:payment.done/1700000000000-0``, ``nats:EVENTS/42``). The outbound mirror of a
#: target does not send events of its own kind back (no loops).
ORIGIN_HEADER = "origin"

#: What is remembered of an inbound event: a digest of its content and where it came from.
Seen = tuple[bytes, str]


def content_digest(envelope: dict[str, Any]) -> bytes:
    """A digest of what makes an event itself (topic, key, data), to tell a redelivery (same
    content) from another event under a reused id. Not the time: it may come from the server."""
    content = {k: envelope.get(k) for k in ("topic", "key", "data")}
    return hashlib.blake2b(
        orjson.dumps(content, option=orjson.OPT_SORT_KEYS), digest_size=16
    ).digest()


def origin_of(envelope: dict[str, Any]) -> str:
    """The ``origin`` header of an inbound event (``redis:<stream>/<entry>``, ...)."""
    return str((envelope.get("headers") or {}).get(ORIGIN_HEADER, "?"))


class InboundLedger:
    """The ids an inbound consumer appended, and its counters.

    ``origin_prefix`` (``redis:``, ``nats:``) marks the events this consumer appended: their
    ``origin`` header starts with it.
    """

    def __init__(self, target_name: str, origin_prefix: str, dedupe_window: int) -> None:
        self.target_name = target_name
        self.origin_prefix = origin_prefix
        self.dedupe_window = dedupe_window
        self._mark = f'"{ORIGIN_HEADER}":"{origin_prefix}'.encode()
        self.seen: collections.OrderedDict[str, Seen] = collections.OrderedDict()
        self.scan_from = 0
        """Every event appended from the server before this offset is acknowledged."""
        self.received = 0
        self.duplicates = 0
        self.rejected = 0
        self.last_rejected: str | None = None
        """The last message refused, with the reason (``<where>: <reason>``)."""
        self.conflicts = 0
        """Messages dropped for reusing the id of an event with other content."""
        self.own = 0
        """Messages of this service itself (mirrored by this broker, or by another instance of
        the service, which handled the event where it was published): acknowledged, never
        appended, so that an event does not come back to the service that published it."""

    # -- state -------------------------------------------------------------------------------

    async def load(self, broker: Broker, state: dict[str, Any]) -> None:
        """Restore ``scan_from`` and read back the ids that may come again."""
        if "inbound_scan" in state:
            self.scan_from = max(int(state["inbound_scan"]), broker.log.start_offset)
        else:
            # Nothing came in yet: no part of the log can hold an unacknowledged event.
            self.scan_from = broker.log.next_offset
        # Also the recent past, so that an id reused across a restart is caught too.
        recent = max(broker.log.start_offset, broker.log.next_offset - self.dedupe_window)
        await self._scan_log(broker, min(self.scan_from, recent))

    def state(self) -> dict[str, Any]:
        return {"inbound_scan": self.scan_from}

    def counters(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "duplicates_dropped": self.duplicates,
            "rejected": self.rejected,
            "last_rejected": self.last_rejected,
            "conflicts": self.conflicts,
            "own_service": self.own,
        }

    async def _scan_log(self, broker: Broker, offset: int) -> None:
        found = 0
        while offset < broker.visible_offset:
            records = broker.read_log(offset, 5000)
            if not records:
                break
            for record in records:
                if self._mark in record.payload:
                    envelope = decode_envelope(record.payload)
                    if origin_of(envelope).startswith(self.origin_prefix):
                        self.remember(
                            envelope["id"], (content_digest(envelope), origin_of(envelope))
                        )
                        found += record.offset >= self.scan_from
            offset = records[-1].offset + 1
            await asyncio.sleep(0)  # a long scan must not starve the broker
        if found:
            logger.info(
                "%s: %d inbound events may await their acknowledgement", self.target_name, found
            )

    def remember(self, event_id: str, seen: Seen) -> None:
        self.seen[event_id] = seen
        self.seen.move_to_end(event_id)
        while len(self.seen) > self.dedupe_window:
            self.seen.popitem(last=False)

    # -- one message -------------------------------------------------------------------------

    def is_new(
        self, event_id: str, envelope: dict[str, Any], batch: dict[str, Seen], where: str
    ) -> bool:
        """Whether to append this event: False for an id already appended (or earlier in
        ``batch``, which collects what is about to be appended); a WARNING if its content
        differs (``where`` names the message)."""
        this: Seen = (content_digest(envelope), origin_of(envelope))
        before = batch.get(event_id) or self.seen.get(event_id)
        if before is None:
            batch[event_id] = this
            return True
        self.duplicates += 1
        if before[0] != this[0]:
            self.conflicts += 1
            logger.warning(
                "%s: %s reuses event id %r, already appended from %s with other content "
                "(topic, key or data); it is dropped, since an event id names one event "
                "(the message stays on the server; give it its own id to have it appended)",
                self.target_name,
                where,
                event_id,
                before[1].removeprefix(self.origin_prefix),
            )
        return False

    def appended(self, batch: dict[str, Seen]) -> None:
        """The events of ``batch`` are in the log."""
        for event_id, seen in batch.items():
            self.remember(event_id, seen)
        self.received += len(batch)

    def reject(self, label: str, where: str, action: str, reason: object) -> None:
        """Count and log a message that cannot be used (``label`` goes into the status)."""
        self.rejected += 1
        self.last_rejected = f"{label}: {reason}"
        logger.error(
            "%s: %s cannot be used and is %s without being appended (it stays on the server): %s",
            self.target_name,
            where,
            action,
            reason,
        )

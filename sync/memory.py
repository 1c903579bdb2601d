"""A sync target whose server is an object in this process: for tests, yours and ours.

:class:`MemoryTarget` runs the same base-class logic as the real targets (cursor, outage
handling, resume, status, heartbeat) against a :class:`MemoryServer` that a test takes down and
brings back, reads back, or makes lose a reply. Nothing is sent over the network and no server
has to be installed.

Example (in a pytest test)::

    from localbroker import Broker
    from localbroker.sync import MemoryServer, MemoryTarget

    async def test_order_events_are_mirrored(tmp_path):
        server = MemoryServer()
        target = MemoryTarget(server)
        async with Broker(tmp_path, sync=[target]) as broker:
            await broker.publish("order.placed", {"order_id": "o1"})
            server.stop()                     # an outage: the broker goes on
            await broker.publish("order.placed", {"order_id": "o2"})
            server.start()
            await target.wait_mirrored()
        assert [e["data"] for e in server.events()] == [{"order_id": "o1"}, {"order_id": "o2"}]

Like the Redis mirror, each batch and this data directory's watermark (the last offset sent)
are stored together, and the mirror resumes from the larger of its cursor and the watermark,
so a batch the server stored but whose reply was lost is not stored twice; events are also kept
by id, so a resend after a crash changes nothing. It has no inbound side: to have an event
"arrive" from another service in a test, publish it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from localbroker.log import Record

from .config import MemoryTargetConfig, build_config
from .errors import TargetUnavailableError
from .target import SyncTarget

__all__ = ["MemoryServer", "MemoryTarget"]


class MemoryServer:
    """What a :class:`MemoryTarget` mirrors to: events by id, one watermark per producer.

    A test may call its methods from any thread (``stop``/``kill``/``start`` from
    ``asyncio.to_thread`` like those of a real server's fixture).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._up = True
        self._events: dict[str, dict[str, Any]] = {}
        self._watermarks: dict[str, int] = {}
        self._replies_to_lose = 0
        self.batches = 0
        """Batches stored (a batch whose reply was lost counts)."""

    @property
    def up(self) -> bool:
        return self._up

    def stop(self) -> None:
        """Take the server down: every call fails with TargetUnavailableError until start()."""
        self._up = False

    def kill(self) -> None:
        """A crash. Like :meth:`stop`: the server confirms a batch only once it holds it, so
        a crash loses nothing it confirmed (there is no unsynced state to lose)."""
        self.stop()

    def start(self) -> None:
        """Bring the server back, with everything it held."""
        self._up = True

    def lose_next_replies(self, count: int = 1) -> None:
        """The next ``count`` batches are stored, but their sender gets an error instead of the
        confirmation (a connection that drops after the server applied a write)."""
        with self._lock:
            self._replies_to_lose += count

    def events(self, topic: str | None = None) -> list[dict[str, Any]]:
        """The stored events in the order they first arrived: each an envelope (``id``,
        ``topic``, ``time``, ``version``, ``key``, ``correlation_id``, ``causation_id``,
        ``headers``, ``data``) with ``service``, ``producer``, ``offset`` and ``stored_at``."""
        with self._lock:
            return [dict(e) for e in self._events.values() if topic is None or e["topic"] == topic]

    def clear(self) -> None:
        """Forget every event and watermark."""
        with self._lock:
            self._events.clear()
            self._watermarks.clear()

    # -- what the target calls -------------------------------------------------------------

    def _check(self) -> None:
        if not self._up:
            raise TargetUnavailableError("memory server is down")

    def watermark(self, producer: str) -> int | None:
        """The last offset stored for ``producer`` (None: nothing yet)."""
        self._check()
        with self._lock:
            return self._watermarks.get(producer)

    def store(self, producer: str, entries: list[dict[str, Any]], last_offset: int) -> None:
        """Store ``entries`` (kept by id: an id stored before is left as it is) and the
        watermark, together."""
        self._check()
        with self._lock:
            now = time.time()
            for entry in entries:
                self._events.setdefault(entry["id"], {**entry, "stored_at": now})
            self._watermarks[producer] = last_offset
            self.batches += 1
            lost = self._replies_to_lose > 0
            self._replies_to_lose -= lost
        if lost:
            raise TargetUnavailableError("memory server: connection lost before the reply")


class MemoryTarget(SyncTarget[MemoryTargetConfig]):
    """Sync target mirroring to a :class:`MemoryServer` in this process (for tests).

    ``MemoryTarget(server=None, **options)``: without a server, it makes its own
    (``target.server``). Options are those every target has (:class:`~localbroker.sync.config.
    TargetConfig`: ``name``, ``service``, ``batch_size``, ``reconnect``, ...).
    """

    kind = "memory"

    def __init__(self, server: MemoryServer | None = None, **options: Any) -> None:
        super().__init__(build_config(MemoryTargetConfig, **options))
        self.server = server if server is not None else MemoryServer()

    def describe(self) -> str:
        return f"memory server {id(self.server):#x}"

    async def connect(self) -> None:
        self.server.watermark(self.producer)

    async def resume_point(self) -> int | None:
        mark = self.server.watermark(self.producer)
        return None if mark is None else mark + 1

    async def send(self, records: list[Record]) -> None:
        entries = [
            {**envelope, "service": self.service, "producer": self.producer, "offset": offset}
            for offset, envelope in self.envelopes(records)
        ]
        self.server.store(self.producer, entries, records[-1].offset)

"""What the event stores (MongoDB, PostgreSQL) share: besides the events, they keep every
failed try, every DLQ entry (and its later changes) and each subscriber's stats.

:class:`StoreTarget` follows three more cursors in ``state.db`` besides the log's: the id of the
last failed try sent (``errors_after``), the ``updated`` time of the last DLQ change sent
(``dlq_since``), and the stats last sent per subscriber (in memory: they are sent again after a
restart, which the stores' upserts make harmless). A store implements the writes, each
idempotent (an upsert keyed by ``<producer>:<local id>``).
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
from datetime import UTC, datetime
from typing import Any, TypeVar

from localbroker.broker.subscriber import histogram_quantile
from localbroker.errors import SyncError
from localbroker.state.store import DLQEntry, ErrorRecord

from .config import StoreConfig
from .target import SyncTarget

__all__ = ["StoreTarget"]

C = TypeVar("C", bound=StoreConfig)


def _when(seconds: float) -> datetime:
    """A Unix time as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


class StoreTarget(SyncTarget[C], abc.ABC):
    """A sync target that also stores failed tries, DLQ entries and subscriber stats.

    Subclasses implement :meth:`write_errors`, :meth:`write_dlq` and :meth:`write_stats`
    (idempotent, raising SyncError subclasses), besides :meth:`send` for the events.
    """

    def __init__(self, config: C) -> None:
        super().__init__(config)
        self.errors_after = 0
        """Id of the last failed try (errors table of ``state.db``) stored."""
        self.dlq_since = 0.0
        """``updated`` time of the last DLQ change stored."""
        self._dlq_sent_at_since: dict[int, float] = {}
        self._stats_sent: dict[str, dict[str, Any]] = {}
        self.errors_sent = 0
        self.dlq_sent = 0

    # -- what a store implements -------------------------------------------------------------

    @abc.abstractmethod
    async def write_errors(self, errors: list[ErrorRecord]) -> None:
        """Store failed tries (each once, by ``<producer>:<id>``)."""

    @abc.abstractmethod
    async def write_dlq(self, entries: list[DLQEntry]) -> None:
        """Store DLQ entries, replacing what was stored for the same ``<producer>:<id>``."""

    @abc.abstractmethod
    async def write_stats(self, stats: list[dict[str, Any]]) -> None:
        """Store subscribers' stats (see :meth:`subscriber_stats`), replacing earlier ones."""

    # -- lifecycle and cursors ---------------------------------------------------------------

    async def start(self, broker: Any) -> None:
        await super().start(broker)
        self.spawn(self._state_loop, "errors-dlq-stats")

    async def load_state(self, state: dict[str, Any]) -> None:
        self.errors_after = int(state.get("errors_after", 0))
        self.dlq_since = float(state.get("dlq_since", 0.0))

    def extra_state(self) -> dict[str, Any]:
        return {"errors_after": self.errors_after, "dlq_since": self.dlq_since}

    def extra_status(self) -> dict[str, Any]:
        return {
            "errors_cursor": self.errors_after,
            "errors_sent": self.errors_sent,
            "dlq_sent": self.dlq_sent,
        }

    # -- the loop ----------------------------------------------------------------------------

    async def _state_loop(self) -> None:
        while not self.closing:
            try:
                await self.sync_state()
            except SyncError as exc:
                await self.retry_after_failure(exc)
                continue
            await asyncio.sleep(self.config.poll_interval)

    async def sync_state(self) -> None:
        """Send new failed tries, DLQ changes and changed subscriber stats."""
        store = self.broker.store
        while True:
            errors = await store.errors_after(self.errors_after, limit=self.config.batch_size)
            if not errors:
                break
            await self.write_errors(errors)
            self.errors_after = errors[-1].id
            self.errors_sent += len(errors)
        while True:
            changed = [
                e
                for e in await store.dlq_updated_since(self.dlq_since, limit=self.config.batch_size)
                if self._dlq_sent_at_since.get(e.id) != e.updated
            ]
            if not changed:
                break
            await self.write_dlq(changed)
            last = changed[-1].updated
            if last != self.dlq_since:
                self._dlq_sent_at_since.clear()
            self.dlq_since = last
            self._dlq_sent_at_since.update((e.id, e.updated) for e in changed)
            self.dlq_sent += len(changed)
        stats = await self.subscriber_stats()
        changed_stats = [s for s in stats if self._stats_sent.get(s["name"]) != s]
        if changed_stats:
            await self.write_stats(changed_stats)
            self._stats_sent.update((s["name"], s) for s in changed_stats)

    async def subscriber_stats(self) -> list[dict[str, Any]]:
        """Per subscriber: name, patterns, committed, lag, processed, failures, dead,
        handler_p50, handler_p99, service, producer."""
        broker = self.broker
        return [
            {
                "name": s.name,
                "patterns": s.patterns,
                "committed": s.committed,
                "lag": max(0, broker.visible_offset - s.committed),
                "processed": s.processed,
                "failures": s.failures,
                "dead": s.dead,
                "handler_p50": histogram_quantile(s.handler_hist, 0.5),
                "handler_p99": histogram_quantile(s.handler_hist, 0.99),
                "service": self.service,
                "producer": self.producer,
            }
            for s in await broker.store.subscribers()
        ]

    def local_row(self, row: ErrorRecord | DLQEntry) -> dict[str, Any]:
        """The stored form of a failed try or DLQ entry: its fields (times as datetimes, a DLQ
        entry without its tries, which are stored as failed tries), ``id`` =
        ``<producer>:<row id>`` (unique across the instances sharing a store), ``local_id``,
        ``service`` and ``producer``."""
        out = dataclasses.asdict(row)
        out.pop("attempts", None)
        for name in ("time", "dead_at", "updated"):
            if name in out:
                out[name] = _when(out[name])
        out.update(
            id=f"{self.producer}:{row.id}",
            local_id=row.id,
            service=self.service,
            producer=self.producer,
        )
        return out

    def event_row(self, offset: int, envelope: dict[str, Any]) -> dict[str, Any]:
        """The stored form of an event: its envelope (``time`` as a datetime) with
        ``service``, ``producer`` and ``offset``."""
        return {
            "id": envelope["id"],
            "topic": envelope["topic"],
            "key": envelope.get("key"),
            "time": datetime.fromisoformat(envelope["time"]),
            "version": envelope.get("version", 1),
            "correlation_id": envelope.get("correlation_id"),
            "causation_id": envelope.get("causation_id"),
            "headers": envelope.get("headers") or {},
            "data": envelope.get("data") or {},
            "service": self.service,
            "producer": self.producer,
            "offset": offset,
        }

"""Mirror events, failed tries, DLQ entries and subscriber stats to MongoDB.

Collections (with ``collection_prefix``)::

    events       _id = event id (unique); topic, key, time, version, correlation_id,
                 causation_id, headers, data, service, producer, offset, stored_at
                 indexes: (topic, time), correlation_id, time;
                 with events_ttl, a TTL index on stored_at
    errors       _id = "<producer>:<errors row id>"; every failed try with its traceback
                 indexes: event_id, correlation_id, (subscriber, time), (topic, time)
    dlq          _id = "<producer>:<dlq row id>"; status dead | retrying | resolved | discarded
                 indexes: (status, subscriber), event_id, correlation_id
    subscribers  _id = "<producer>:<subscriber>"; processed, failures, dead, lag, p50/p99

Every write is an upsert keyed by ``_id`` (in an unordered bulk write), so sending a batch
again after a crash or an outage changes nothing: each event is in the store once.
``<producer>`` is the id of the data directory, so two instances of a service sharing a
database do not overwrite each other's rows.

Every write uses a journaled write concern (``j=True``, ``w`` from ``write_concern``): the
mirror's cursor moves past a batch only once the server has it in its journal, so a kill -9 of
mongod cannot lose events the mirror counted as sent (with ``w=1`` and no ``j``, mongod
acknowledges writes it has only in memory, and loses up to its journal commit interval of them
when killed).

``time`` is the event's own time (an event that came in from another service keeps its
origin's); ``stored_at`` is when the document was first written. ``events_ttl`` expires events
by ``stored_at``: an event dated in the past is kept ``events_ttl`` seconds like any other, not
deleted at once. A TTL index on ``time`` left by an older version is replaced at connect, and
documents without ``stored_at`` get the connect time as theirs (so none expires earlier than
the new rule says).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pymongo
from pymongo import AsyncMongoClient, ReplaceOne, UpdateOne
from pymongo import errors as merr
from pymongo.write_concern import WriteConcern

from localbroker.broker.subscriber import histogram_quantile
from localbroker.errors import SerializationError, SyncError
from localbroker.events import decode_envelope
from localbroker.log import Record
from localbroker.state.store import DLQEntry, ErrorRecord

from .config import MongoStoreConfig, build_config
from .errors import SyncConfigurationError, TargetUnavailableError
from .target import SyncTarget, logger, redact

__all__ = ["MongoStore"]

#: Server error codes that retrying cannot fix: auth failed, unauthorized, index options clash.
_FATAL_CODES = {13, 18, 85, 86}


@contextlib.contextmanager
def mongo_errors(where: str) -> Iterator[None]:
    """Raise pymongo's errors as SyncConfigurationError / TargetUnavailableError / SyncError."""
    try:
        yield
    except (merr.ConnectionFailure, merr.NetworkTimeout) as exc:
        raise TargetUnavailableError(f"{where}: {exc}") from exc
    except merr.OperationFailure as exc:
        if exc.code in _FATAL_CODES:
            raise SyncConfigurationError(f"{where}: {exc}") from exc
        raise SyncError(f"{where}: {exc}") from exc
    except merr.ConfigurationError as exc:
        raise SyncConfigurationError(f"{where}: {exc}") from exc
    except merr.PyMongoError as exc:
        raise SyncError(f"{where}: {exc}") from exc


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


#: A write of one document (an upsert keyed by ``_id``).
Op = ReplaceOne[dict[str, Any]] | UpdateOne


class MongoStore(SyncTarget[MongoStoreConfig]):
    """Sync target: every event, failed try, DLQ entry and subscriber's stats in MongoDB.

    Example::

        broker = Broker("./data", sync=[MongoStore("mongodb://localhost:27017/shop")])

    Options are those of :class:`~localbroker.sync.config.MongoStoreConfig` (keywords, or
    ``LOCALBROKER_MONGO_*`` environment variables).
    """

    kind = "mongo"

    def __init__(self, url: str | None = None, **options: Any) -> None:
        super().__init__(build_config(MongoStoreConfig, url=url, **options))
        timeout_ms = int(self.config.connect_timeout * 1000)
        write_timeout_ms = int(self.config.write_timeout * 1000)
        try:
            self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
                self.config.url,
                serverSelectionTimeoutMS=timeout_ms,
                connectTimeoutMS=timeout_ms,
                socketTimeoutMS=write_timeout_ms,
                tz_aware=True,
            )
            default = self.client.get_default_database(default="localbroker").name
        except (merr.ConfigurationError, merr.InvalidURI, ValueError, TypeError) as exc:
            raise SyncConfigurationError(
                f"mongo sync: cannot use URL {redact(self.config.url)!r}: {exc}"
            ) from exc
        # Journaled: the cursor may only move past writes that survive a kill -9 of the server.
        self.write_concern = WriteConcern(
            w=self.config.write_concern, j=True, wtimeout=write_timeout_ms
        )
        self.db = self.client.get_database(
            self.config.database or default, write_concern=self.write_concern
        )
        prefix = self.config.collection_prefix
        self.events = self.db[prefix + "events"]
        self.errors = self.db[prefix + "errors"]
        self.dlq = self.db[prefix + "dlq"]
        self.subscribers = self.db[prefix + "subscribers"]
        self.errors_after = 0
        """Id of the last failed try (errors table) stored in Mongo."""
        self.dlq_since = 0.0
        """``updated`` time of the last DLQ change stored in Mongo."""
        self._dlq_sent_at_since: dict[int, float] = {}
        self._stats_sent: dict[str, dict[str, Any]] = {}
        self.errors_sent = 0
        self.dlq_sent = 0
        self._indexes_made = False

    def describe(self) -> str:
        return f"mongo {redact(self.config.url)}"

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        with mongo_errors(self.describe()):
            await self.client.admin.command("ping")
            await self._create_indexes()
        self._indexes_made = True

    async def _create_indexes(self) -> None:
        asc = pymongo.ASCENDING
        await self.events.create_index([("topic", asc), ("time", asc)])
        await self.events.create_index([("correlation_id", asc)])
        await self._drop_ttl_on_time()
        await self.events.create_index([("time", asc)])
        await self._set_ttl()
        await self.errors.create_index([("event_id", asc)])
        await self.errors.create_index([("correlation_id", asc)])
        await self.errors.create_index([("subscriber", asc), ("time", asc)])
        await self.errors.create_index([("topic", asc), ("time", asc)])
        await self.dlq.create_index([("status", asc), ("subscriber", asc)])
        await self.dlq.create_index([("event_id", asc)])
        await self.dlq.create_index([("correlation_id", asc)])
        await self.subscribers.create_index([("service", asc), ("name", asc)])

    async def _index_on(self, field: str) -> tuple[str, dict[str, Any]] | None:
        """Name and description of the single-field index of ``events`` on ``field``."""
        for name, info in (await self.events.index_information()).items():
            if list(info["key"]) == [(field, pymongo.ASCENDING)]:
                return name, info
        return None

    async def _drop_ttl_on_time(self) -> None:
        """Drop the TTL index on ``time`` of older versions: it deleted events by their own
        time, so an event dated in the past went at once (the TTL is on ``stored_at`` now)."""
        found = await self._index_on("time")
        if found is None or "expireAfterSeconds" not in found[1]:
            return
        await self.events.drop_index(found[0])
        logger.warning(
            "%s: dropped the TTL index %s on %s.time (it expired events by their own time); "
            "events_ttl now counts from stored_at, when a document was stored",
            self.name,
            found[0],
            self.events.name,
        )

    async def _set_ttl(self) -> None:
        """Make the TTL index on ``stored_at`` match ``events_ttl`` (none when it is None)."""
        ttl = self.config.events_ttl
        found = await self._index_on("stored_at")
        current = found[1].get("expireAfterSeconds") if found is not None else None
        if ttl is None:
            if found is not None and current is not None:
                await self.events.drop_index(found[0])
                logger.warning(
                    "%s: events_ttl is not set: dropped the TTL index on %s.stored_at, events "
                    "are kept",
                    self.name,
                    self.events.name,
                )
            return
        seconds = int(ttl)
        if found is not None and current == seconds:
            return
        if found is not None and current is not None:
            await self.db.command(
                "collMod",
                self.events.name,
                index={"keyPattern": {"stored_at": 1}, "expireAfterSeconds": seconds},
            )
            return
        if found is not None:  # an index made by hand, without a TTL
            await self.events.drop_index(found[0])
        # Documents from before stored_at existed would never expire: they count from now.
        await self.events.update_many(
            {"stored_at": {"$exists": False}}, {"$set": {"stored_at": datetime.now(UTC)}}
        )
        await self.events.create_index(
            [("stored_at", pymongo.ASCENDING)], expireAfterSeconds=seconds
        )

    async def start(self, broker: Any) -> None:
        await super().start(broker)
        self.spawn(self._state_loop, "errors-dlq-stats")

    async def disconnect(self) -> None:
        await self.client.close()

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

    async def resume_point(self) -> int | None:
        with mongo_errors(self.describe()):
            await self.client.admin.command("ping")
            if not self._indexes_made:  # the server was unreachable at start
                await self._create_indexes()
                self._indexes_made = True
        return None

    # -- events ------------------------------------------------------------------------------

    async def send(self, records: list[Record]) -> None:
        ops: list[Op] = []
        now = datetime.now(UTC)
        for record in records:
            try:
                envelope = decode_envelope(record.payload)
            except SerializationError as exc:
                logger.error("%s: skipping offset %d: %s", self.name, record.offset, exc)
                continue
            doc = {
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
                "offset": record.offset,
            }
            # stored_at only on insert: a resend after a crash changes nothing, its TTL included.
            update = {"$set": doc, "$setOnInsert": {"stored_at": now}}
            ops.append(UpdateOne({"_id": envelope["id"]}, update, upsert=True))
        await self._bulk(self.events, ops)

    async def _bulk(self, collection: Any, ops: Sequence[Op]) -> None:
        if not ops:
            return
        with mongo_errors(self.describe()):
            await collection.bulk_write(ops, ordered=False)

    # -- errors, DLQ, stats ------------------------------------------------------------------

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
            await self._bulk(self.errors, [self._error_op(e) for e in errors])
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
            await self._bulk(self.dlq, [self._dlq_op(e) for e in changed])
            last = changed[-1].updated
            if last != self.dlq_since:
                self._dlq_sent_at_since.clear()
            self.dlq_since = last
            self._dlq_sent_at_since.update((e.id, e.updated) for e in changed)
            self.dlq_sent += len(changed)
        await self._send_stats()

    def _error_op(self, e: ErrorRecord) -> ReplaceOne[dict[str, Any]]:
        doc = dataclasses.asdict(e)
        local_id = doc.pop("id")
        doc.update(
            _id=f"{self.producer}:{local_id}",
            local_id=local_id,
            time=_when(e.time),
            service=self.service,
            producer=self.producer,
        )
        return ReplaceOne({"_id": doc["_id"]}, doc, upsert=True)

    def _dlq_op(self, e: DLQEntry) -> ReplaceOne[dict[str, Any]]:
        doc = dataclasses.asdict(e)
        local_id = doc.pop("id")
        doc.pop("attempts")  # every try is in the errors collection
        doc.update(
            _id=f"{self.producer}:{local_id}",
            local_id=local_id,
            dead_at=_when(e.dead_at),
            updated=_when(e.updated),
            service=self.service,
            producer=self.producer,
        )
        return ReplaceOne({"_id": doc["_id"]}, doc, upsert=True)

    async def _send_stats(self) -> None:
        broker = self.broker
        ops = []
        sent = {}
        for s in await broker.store.subscribers():
            stats = {
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
            if self._stats_sent.get(s.name) == stats:
                continue
            sent[s.name] = stats
            doc = {**stats, "_id": f"{self.producer}:{s.name}", "updated": datetime.now(UTC)}
            ops.append(ReplaceOne({"_id": doc["_id"]}, doc, upsert=True))
        await self._bulk(self.subscribers, ops)
        self._stats_sent.update(sent)

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

import contextlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pymongo
from pymongo import AsyncMongoClient, ReplaceOne, UpdateOne
from pymongo import errors as merr
from pymongo.write_concern import WriteConcern

from localbroker.errors import SyncError
from localbroker.log import Record
from localbroker.state.store import DLQEntry, ErrorRecord

from .config import MongoStoreConfig, build_config
from .errors import SyncConfigurationError, TargetUnavailableError
from .store import StoreTarget
from .target import logger, redact

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


#: A write of one document (an upsert keyed by ``_id``).
Op = ReplaceOne[dict[str, Any]] | UpdateOne


class MongoStore(StoreTarget[MongoStoreConfig]):
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

    async def disconnect(self) -> None:
        await self.client.close()

    async def resume_point(self) -> int | None:
        with mongo_errors(self.describe()):
            await self.client.admin.command("ping")
            if not self._indexes_made:  # the server was unreachable at start
                await self._create_indexes()
                self._indexes_made = True
        return None

    # -- events ------------------------------------------------------------------------------

    async def send(self, records: list[Record]) -> None:
        now = datetime.now(UTC)
        ops: list[Op] = []
        for offset, envelope in self.envelopes(records):
            doc = self.event_row(offset, envelope)
            # stored_at only on insert: a resend after a crash changes nothing, its TTL included.
            update = {"$set": doc, "$setOnInsert": {"stored_at": now}}
            ops.append(UpdateOne({"_id": doc.pop("id")}, update, upsert=True))
        await self._bulk(self.events, ops)

    async def _bulk(self, collection: Any, ops: Sequence[Op]) -> None:
        if not ops:
            return
        with mongo_errors(self.describe()):
            await collection.bulk_write(ops, ordered=False)

    # -- errors, DLQ, stats ------------------------------------------------------------------

    async def write_errors(self, errors: list[ErrorRecord]) -> None:
        await self._replace(self.errors, [self.local_row(e) for e in errors])

    async def write_dlq(self, entries: list[DLQEntry]) -> None:
        await self._replace(self.dlq, [self.local_row(e) for e in entries])

    async def _replace(self, collection: Any, rows: list[dict[str, Any]]) -> None:
        """Upsert each row as a document with ``_id`` = its ``id``."""
        docs = [{"_id": row.pop("id"), **row} for row in rows]
        await self._bulk(collection, [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in docs])

    async def write_stats(self, stats: list[dict[str, Any]]) -> None:
        now = datetime.now(UTC)
        rows = [{**s, "id": f"{self.producer}:{s['name']}", "updated": now} for s in stats]
        await self._replace(self.subscribers, rows)

"""Configuration of the sync targets.

Every option has a documented default and can be set by keyword or through the environment:
``LOCALBROKER_REDIS_<OPTION>`` for :class:`RedisStreamsConfig`, ``LOCALBROKER_MONGO_<OPTION>``
``LOCALBROKER_REDIS_<OPTION>`` for :class:`RedisStreamsConfig`, ``LOCALBROKER_MONGO_<OPTION>``
for :class:`MongoStoreConfig`, ``LOCALBROKER_POSTGRES_<OPTION>`` for :class:`PostgresStoreConfig`
and ``LOCALBROKER_NATS_<OPTION>`` for :class:`NatsJetStreamConfig` (for example
``LOCALBROKER_REDIS_URL=redis://host:6379/0``, ``LOCALBROKER_POSTGRES_DSN=postgresql://app@db/shop``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from localbroker.config import RetryPolicy, StartFrom, keywords
from localbroker.topics import TopicPattern

from .errors import SyncConfigurationError

__all__ = [
    "MemoryTargetConfig",
    "MongoStoreConfig",
    "NatsJetStreamConfig",
    "PostgresStoreConfig",
    "RedisStreamsConfig",
    "StoreConfig",
    "TargetConfig",
    "build_config",
]

C = TypeVar("C", bound="TargetConfig")


class TargetConfig(BaseSettings):
    """Options every sync target has."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    url: str
    """Server URL (``redis://...``, ``mongodb://...``, ``nats://...``; PostgreSQL's is ``dsn``)."""
    name: str | None = None
    """Name of this target in status output and state keys (default: its kind, ``redis``,
    ``mongo``, ``postgres``, ``nats``, ``memory``); give one when a broker has two targets of a
    kind."""
    service: str | None = None
    """Name of this application (service): the Redis consumer group, and a field of every
    mirrored entry and document. Default: ``LOCALBROKER_SERVICE``, else the ``service`` given
    to the broker's other sync targets (an error if they differ), else the data directory's
    name (see :func:`localbroker.sync.target.choose_service`)."""
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 2000
    """Events sent in one round trip (one MULTI/EXEC, one bulk write)."""
    reconnect: RetryPolicy = RetryPolicy(backoff_initial=0.2, backoff_multiplier=2, backoff_max=15)
    """Backoff between attempts while the server is unreachable (capped exponential)."""
    connect_timeout: Annotated[float, Field(gt=0)] = 3.0
    """Seconds to wait for the server before counting it as unreachable."""
    start_from: StartFrom = StartFrom.EARLIEST
    """Where the outbound mirror of a target never used on this directory starts: the whole
    log (``earliest``, default) or only new events (``latest``)."""
    status_interval: Annotated[float, Field(gt=0)] = 1.0
    """Seconds between two writes of the status and cursors to ``state.db``."""
    heartbeat_interval: Annotated[float, Field(gt=0)] = 5.0
    """While there is nothing to send, the server is pinged this often, so that the status
    shows an outage (``connected: false``) even when the log is idle."""


class RedisStreamsConfig(TargetConfig):
    """Options of :class:`~localbroker.sync.RedisStreams`."""

    model_config = SettingsConfigDict(env_prefix="LOCALBROKER_REDIS_", extra="forbid", frozen=True)

    stream_prefix: str = "events:"
    """Stream of topic ``T`` is ``<stream_prefix>T``."""
    state_prefix: str = "localbroker:"
    """Prefix of the keys the mirror keeps besides the streams (its watermarks)."""
    maxlen: Annotated[int, Field(ge=1)] | None = None
    """Trim each stream to about this many entries (``XADD MAXLEN ~``); ``None`` keeps all."""
    outbound: bool = True
    """Mirror local events to the streams."""
    inbound_topics: tuple[str, ...] = ()
    """Exact topics whose streams are consumed into the local log (patterns cannot be read
    from Redis). Empty: no inbound."""
    consumer: str | None = None
    """Consumer name in the group; default: host name and the data directory's producer id
    (stable across restarts, so a restarted instance takes its own pending entries back)."""
    inbound_start: StartFrom = StartFrom.LATEST
    """Where a consumer group created by this service starts: ``latest`` (``$``) or
    ``earliest`` (``0``)."""
    inbound_batch: Annotated[int, Field(ge=1)] = 500
    """Entries read (and appended with one fsync) at a time."""
    block: Annotated[float, Field(gt=0)] = 1.0
    """Seconds one XREADGROUP waits for new entries."""
    claim_idle: Annotated[float, Field(ge=0)] = 30.0
    """Entries pending this long with another consumer (a dead instance) are claimed."""
    claim_interval: Annotated[float, Field(gt=0)] = 5.0
    """Seconds between two XAUTOCLAIM passes."""
    dedupe_window: Annotated[int, Field(ge=0)] = 100_000
    """Ids of inbound events remembered, to drop entries whose id was already appended (a
    redelivery, or a reused id: logged when the content differs). At start, the inbound events
    among this many last records of the log are remembered."""


class StoreConfig(TargetConfig):
    """Options every event store (MongoDB, PostgreSQL) has."""

    poll_interval: Annotated[float, Field(gt=0)] = 0.5
    """Seconds between two looks for new errors, DLQ changes and subscriber stats."""


class MongoStoreConfig(StoreConfig):
    """Options of :class:`~localbroker.sync.MongoStore`."""

    model_config = SettingsConfigDict(env_prefix="LOCALBROKER_MONGO_", extra="forbid", frozen=True)

    database: str | None = None
    """Database; default: the one named in the URL, else ``localbroker``."""
    collection_prefix: str = ""
    """Prefix of the collection names (``events``, ``errors``, ``dlq``, ``subscribers``)."""
    events_ttl: Annotated[float, Field(gt=0)] | None = None
    """Keep events this many seconds after they were stored in MongoDB (a TTL index on the
    documents' ``stored_at``, not on the event's own ``time``); ``None``: forever (an existing
    TTL index is then dropped)."""
    write_concern: Literal["majority"] | Annotated[int, Field(ge=1)] = "majority"
    """How many servers must have a write in their journal before the mirror counts it as
    stored and moves its cursor past it (the ``w`` of MongoDB's write concern; ``j`` is always
    true, so a kill -9 of the server cannot lose what was counted). ``majority`` (default)
    survives a replica set failover too; on a standalone server it means that server. The
    URL's own write concern options are not used for the mirror's writes."""
    write_timeout: Annotated[float, Field(gt=0)] = 30.0
    """Seconds one write may take (the write concern's ``wtimeout`` and the socket timeout)
    before it counts as failed and is retried: a hung server or missing replicas show up as a
    failure in the status instead of a silent stall."""


class PostgresStoreConfig(StoreConfig):
    """Options of :class:`~localbroker.sync.PostgresStore`."""

    model_config = SettingsConfigDict(
        env_prefix="LOCALBROKER_POSTGRES_", extra="forbid", frozen=True, populate_by_name=True
    )

    url: str = Field(validation_alias=AliasChoices("dsn", "LOCALBROKER_POSTGRES_DSN", "url"))
    """The connection string (``dsn``, environment ``LOCALBROKER_POSTGRES_DSN``), as libpq
    takes it: ``postgresql://user:password@host:5432/dbname`` or ``host=... dbname=...``."""
    db_schema: str = "public"
    """Schema of the tables (``events``, ``errors``, ``dlq``, ``subscribers``); created if it
    does not exist. Give each application sharing a database its own if you like."""
    events_ttl: Annotated[float, Field(gt=0)] | None = None
    """Delete events this many seconds after they were stored (``stored_at``, not the event's
    own ``time``), in batches every ``retention_interval``; ``None``: keep them forever."""
    retention_interval: Annotated[float, Field(gt=0)] = 60.0
    """Seconds between two rounds of deleting expired events (with ``events_ttl``)."""
    retention_batch: Annotated[int, Field(ge=1)] = 10_000
    """Events deleted by one statement (one short transaction each), so that a large
    expiry never holds long locks."""
    synchronous_commit: Literal["on", "remote_write", "remote_apply"] = "on"
    """The ``synchronous_commit`` of the mirror's connection: a batch counts as stored (and the
    cursor moves past it) only once its commit is flushed to the server's WAL (``on``, the
    default), and with replicas, also written (``remote_write``) or applied
    (``remote_apply``) there. Values that would let a crash of the server lose a confirmed
    commit (``off``, ``local`` with replicas) are refused."""
    write_timeout: Annotated[float, Field(gt=0)] = 30.0
    """Seconds one statement may take (``statement_timeout``) before it counts as failed and is
    retried: a hung server shows up as a failure in the status, not a silent stall."""


class MemoryTargetConfig(TargetConfig):
    """Options of :class:`~localbroker.sync.MemoryTarget` (``LOCALBROKER_MEMORY_*``)."""

    model_config = SettingsConfigDict(env_prefix="LOCALBROKER_MEMORY_", extra="forbid", frozen=True)

    url: str = "memory://"
    """Not used: the server is the :class:`~localbroker.sync.MemoryServer` given."""


class NatsJetStreamConfig(TargetConfig):
    """Options of :class:`~localbroker.sync.NatsJetStream`."""

    model_config = SettingsConfigDict(env_prefix="LOCALBROKER_NATS_", extra="forbid", frozen=True)

    stream: Annotated[str, Field(pattern=r"^[^.*>\s]+$")] = "EVENTS"
    """The JetStream stream that holds the events (a name without ``.``, ``*``, ``>`` or
    spaces)."""
    subject_prefix: Annotated[str, Field(pattern=r"^([^.*>\s]+\.)+$")] = "events."
    """Subject of topic ``T`` is ``<subject_prefix>T`` (``events.order.placed``); the prefix
    ends with a dot."""
    create_stream: bool = True
    """Create the stream when it does not exist (subjects ``<subject_prefix>>``, file storage,
    ``duplicate_window``). Off: a missing stream is a configuration error."""
    duplicate_window: Annotated[float, Field(gt=0)] = 120.0
    """Seconds the server remembers message ids (``Nats-Msg-Id``) to drop resends, for a
    stream this target creates (an existing stream keeps its own). Resends after it are
    still dropped: see the README's NATS section."""
    publish_timeout: Annotated[float, Field(gt=0)] = 10.0
    """Seconds a batch's acknowledgements may take before the batch counts as failed (and is
    sent again: the server's duplicate detection drops what it already stored)."""
    outbound: bool = True
    """Mirror local events to the stream."""
    inbound_topics: tuple[str, ...] = ()
    """Topics (or patterns, ``payment.*``, ``payment.>``) consumed into the local log, each
    through a durable pull consumer. Empty: no inbound."""
    durable: str | None = None
    """Prefix of the durable consumers' names; default: the service. Consumer of topic ``T``
    is ``<durable>_<T>`` with every character other than letters, digits, ``-`` and ``_``
    replaced by ``_`` (``shop_payment_done``). Instances of one service share them."""
    inbound_start: StartFrom = StartFrom.LATEST
    """Where a consumer created by this service starts: ``latest`` (new messages) or
    ``earliest`` (everything the stream holds)."""
    inbound_batch: Annotated[int, Field(ge=1)] = 500
    """Messages fetched (and appended with one fsync) at a time."""
    fetch_wait: Annotated[float, Field(gt=0)] = 1.0
    """Seconds one fetch waits for messages."""
    ack_wait: Annotated[float, Field(gt=0)] | None = None
    """The consumers' AckWait: seconds after which a message fetched but not acknowledged (its
    instance died before appending it) is delivered again, to any instance. Default: the
    broker's ``ack_timeout``."""
    max_deliver: Annotated[int, Field(ge=1)] | None = None
    """The consumers' MaxDeliver: deliveries of one message (each ended by AckWait without an
    acknowledgement: its instance died, or the append failed) before the server stops
    delivering it. Default: the broker's ``max_tries``, as for a local subscriber. When the
    server gives up on a message, an ERROR names its stream sequence (the message stays in the
    stream) and the status counts it as ``given_up``. A message that cannot be used is
    terminated at once instead (never redelivered)."""
    dedupe_window: Annotated[int, Field(ge=0)] = 100_000
    """Ids of inbound events remembered, to drop messages whose id was already appended (a
    redelivery, or a reused id: logged when the content differs). At start, the inbound events
    among this many last records of the log are remembered."""

    @field_validator("inbound_topics")
    @classmethod
    def _patterns(cls, topics: tuple[str, ...]) -> tuple[str, ...]:
        for topic in topics:
            TopicPattern(topic)  # raises ConfigurationError naming the bad topic
        return topics


def build_config(cls: type[C], **options: Any) -> C:
    """``cls(**options)`` (plus the environment), raising SyncConfigurationError naming each problem.

    A None is kept for the options that take it (``maxlen=None``: no cap), and means "not
    given" for the others (``url=None``: the default or the environment).
    """
    try:
        return cls(**keywords(cls, options))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SyncConfigurationError(f"invalid {cls.__name__}: {problems}") from exc

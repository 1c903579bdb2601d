"""Mirror the local log to Redis Streams, MongoDB, PostgreSQL and NATS JetStream, and consume
other services' streams.

Example::

    from localbroker import Broker
    from localbroker.sync import MongoStore, NatsJetStream, PostgresStore, RedisStreams

    broker = Broker("./data", sync=[
        RedisStreams("redis://localhost:6379/0", service="shop", inbound_topics=["payment.done"]),
        MongoStore("mongodb://localhost:27017/events"),
        PostgresStore("postgresql://app@localhost:5432/shop"),
        NatsJetStream("nats://localhost:4222", inbound_topics=["refund.*"]),
    ])

or from the environment (``LOCALBROKER_REDIS_URL``, ``LOCALBROKER_MONGO_URL``,
``LOCALBROKER_POSTGRES_DSN``, ``LOCALBROKER_NATS_URL``, ...)::

    broker = Broker("./data", sync=from_env())

``RedisStreams`` needs the ``redis`` extra (``pip install 'localbroker[redis]'``), ``MongoStore``
the ``mongo`` extra, ``PostgresStore`` the ``postgres`` extra, ``NatsJetStream`` the ``nats``
extra; each is imported only when used, and raises :class:`~localbroker.MissingExtraError`
naming its extra when that is not installed. :class:`MemoryTarget` (with its
:class:`MemoryServer`) needs nothing: it is for tests.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from localbroker.extras import require_extra

from .config import (
    MemoryTargetConfig,
    MongoStoreConfig,
    NatsJetStreamConfig,
    PostgresStoreConfig,
    RedisStreamsConfig,
    TargetConfig,
)
from .errors import SyncConfigurationError, TargetUnavailableError
from .memory import MemoryServer, MemoryTarget
from .target import SyncTarget

if TYPE_CHECKING:
    from .mongo_store import MongoStore
    from .nats_jetstream import NatsJetStream
    from .postgres_store import PostgresStore
    from .redis_streams import RedisStreams

__all__ = [
    "MemoryServer",
    "MemoryTarget",
    "MemoryTargetConfig",
    "MongoStore",
    "MongoStoreConfig",
    "NatsJetStream",
    "NatsJetStreamConfig",
    "PostgresStore",
    "PostgresStoreConfig",
    "RedisStreams",
    "RedisStreamsConfig",
    "SyncConfigurationError",
    "SyncTarget",
    "TargetConfig",
    "TargetUnavailableError",
    "from_env",
]

_LAZY = {
    "RedisStreams": ("localbroker.sync.redis_streams", "redis", "redis"),
    "MongoStore": ("localbroker.sync.mongo_store", "pymongo", "mongo"),
    "PostgresStore": ("localbroker.sync.postgres_store", "psycopg", "postgres"),
    "NatsJetStream": ("localbroker.sync.nats_jetstream", "nats", "nats"),
}


#: The variable that switches each target on in :func:`from_env`, in the order of the list.
_FROM_ENV = {
    "LOCALBROKER_REDIS_URL": "RedisStreams",
    "LOCALBROKER_MONGO_URL": "MongoStore",
    "LOCALBROKER_POSTGRES_DSN": "PostgresStore",
    "LOCALBROKER_NATS_URL": "NatsJetStream",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'localbroker.sync' has no attribute {name!r}")
    module, driver, extra = _LAZY[name]
    require_extra(f"localbroker.sync.{name}", extra, driver)
    return getattr(importlib.import_module(module), name)


def from_env() -> list[SyncTarget[Any]]:
    """The targets configured in the environment: Redis if ``LOCALBROKER_REDIS_URL`` is set,
    MongoDB if ``LOCALBROKER_MONGO_URL`` is set, PostgreSQL if ``LOCALBROKER_POSTGRES_DSN`` is
    set, NATS JetStream if ``LOCALBROKER_NATS_URL`` is set (their other options are read from
    ``LOCALBROKER_REDIS_*`` / ``LOCALBROKER_MONGO_*`` / ``LOCALBROKER_POSTGRES_*`` /
    ``LOCALBROKER_NATS_*``)."""
    return [__getattr__(name)() for variable, name in _FROM_ENV.items() if os.environ.get(variable)]

"""Mirror the local log to Redis Streams, MongoDB and PostgreSQL, and consume other services'
streams.

Example::

    from localbroker import Broker
    from localbroker.sync import MongoStore, PostgresStore, RedisStreams

    broker = Broker("./data", sync=[
        RedisStreams("redis://localhost:6379/0", service="shop", inbound_topics=["payment.done"]),
        MongoStore("mongodb://localhost:27017/events"),
        PostgresStore("postgresql://app@localhost:5432/shop"),
    ])

or from the environment (``LOCALBROKER_REDIS_URL``, ``LOCALBROKER_MONGO_URL``,
``LOCALBROKER_POSTGRES_DSN``, ...)::

    broker = Broker("./data", sync=from_env())

``RedisStreams`` needs the ``redis`` extra (``pip install 'localbroker[redis]'``), ``MongoStore``
the ``mongo`` extra, ``PostgresStore`` the ``postgres`` extra; each is imported only when used,
and raises :class:`~localbroker.MissingExtraError` naming its extra when that is not installed.
:class:`MemoryTarget` (with its :class:`MemoryServer`) needs nothing: it is for tests.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from localbroker.extras import require_extra

from .config import (
    MemoryTargetConfig,
    MongoStoreConfig,
    PostgresStoreConfig,
    RedisStreamsConfig,
    TargetConfig,
)
from .errors import SyncConfigurationError, TargetUnavailableError
from .memory import MemoryServer, MemoryTarget
from .target import SyncTarget

if TYPE_CHECKING:
    from .mongo_store import MongoStore
    from .postgres_store import PostgresStore
    from .redis_streams import RedisStreams

__all__ = [
    "MemoryServer",
    "MemoryTarget",
    "MemoryTargetConfig",
    "MongoStore",
    "MongoStoreConfig",
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
    set (their other options are read from ``LOCALBROKER_REDIS_*`` / ``LOCALBROKER_MONGO_*`` /
    ``LOCALBROKER_POSTGRES_*``)."""
    targets: list[SyncTarget[Any]] = []
    for variable, name in (
        ("LOCALBROKER_REDIS_URL", "RedisStreams"),
        ("LOCALBROKER_MONGO_URL", "MongoStore"),
        ("LOCALBROKER_POSTGRES_DSN", "PostgresStore"),
    ):
        if os.environ.get(variable):
            targets.append(__getattr__(name)())
    return targets

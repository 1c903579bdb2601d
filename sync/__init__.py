"""Mirror the local log to Redis Streams and MongoDB, and consume other services' streams.

Example::

    from localbroker import Broker
    from localbroker.sync import MongoStore, RedisStreams

    broker = Broker("./data", sync=[
        RedisStreams("redis://localhost:6379/0", service="shop", inbound_topics=["payment.done"]),
        MongoStore("mongodb://localhost:27017/events"),
    ])

or from the environment (``LOCALBROKER_REDIS_URL``, ``LOCALBROKER_MONGO_URL``, ...)::

    broker = Broker("./data", sync=from_env())

``RedisStreams`` needs the ``redis`` extra (``pip install 'localbroker[redis]'``), ``MongoStore``
the ``mongo`` extra; each is imported only when used, and raises
:class:`~localbroker.MissingExtraError` naming its extra when that is not installed.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from localbroker.extras import require_extra

from .config import MongoStoreConfig, RedisStreamsConfig, TargetConfig
from .errors import SyncConfigurationError, TargetUnavailableError
from .target import SyncTarget

if TYPE_CHECKING:
    from .mongo_store import MongoStore
    from .redis_streams import RedisStreams

__all__ = [
    "MongoStore",
    "MongoStoreConfig",
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
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'localbroker.sync' has no attribute {name!r}")
    module, driver, extra = _LAZY[name]
    require_extra(f"localbroker.sync.{name}", extra, driver)
    return getattr(importlib.import_module(module), name)


def from_env() -> list[SyncTarget[Any]]:
    """The targets configured in the environment: Redis if ``LOCALBROKER_REDIS_URL`` is set,
    MongoDB if ``LOCALBROKER_MONGO_URL`` is set (their other options are read from
    ``LOCALBROKER_REDIS_*`` / ``LOCALBROKER_MONGO_*``)."""
    targets: list[SyncTarget[Any]] = []
    if os.environ.get("LOCALBROKER_REDIS_URL"):
        targets.append(__getattr__("RedisStreams")())
    if os.environ.get("LOCALBROKER_MONGO_URL"):
        targets.append(__getattr__("MongoStore")())
    return targets

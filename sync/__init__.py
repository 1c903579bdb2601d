"""Mirror the local log to Redis Streams, MongoDB and NATS JetStream, and consume other services'
streams.

Example::

    from localbroker import Broker
    from localbroker.sync import MongoStore, RedisStreams

    broker = Broker("./data", sync=[
        RedisStreams("redis://localhost:6379/0", service="shop", inbound_topics=["payment.done"]),
        MongoStore("mongodb://localhost:27017/events"),
        NatsJetStream("nats://localhost:4222", inbound_topics=["refund.*"]),
    ])

or from the environment (``LOCALBROKER_REDIS_URL``, ``LOCALBROKER_MONGO_URL``,
``LOCALBROKER_NATS_URL``, ...)::

    broker = Broker("./data", sync=from_env())

``RedisStreams`` needs the ``redis`` extra (``pip install 'localbroker[redis]'``), ``MongoStore``
the ``mongo`` extra, ``NatsJetStream`` the ``nats`` extra; each is imported only when used, and raises
:class:`~localbroker.MissingExtraError` naming its extra when that is not installed.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from localbroker.extras import require_extra

from .config import MongoStoreConfig, NatsJetStreamConfig, RedisStreamsConfig, TargetConfig
from .errors import SyncConfigurationError, TargetUnavailableError
from .target import SyncTarget

if TYPE_CHECKING:
    from .mongo_store import MongoStore
    from .nats_jetstream import NatsJetStream
    from .redis_streams import RedisStreams

__all__ = [
    "MongoStore",
    "MongoStoreConfig",
    "NatsJetStream",
    "NatsJetStreamConfig",
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
    "NatsJetStream": ("localbroker.sync.nats_jetstream", "nats", "nats"),
}


#: The variable that switches each target on in :func:`from_env`, in the order of the list.
_FROM_ENV = {
    "LOCALBROKER_REDIS_URL": "RedisStreams",
    "LOCALBROKER_MONGO_URL": "MongoStore",
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
    MongoDB if ``LOCALBROKER_MONGO_URL`` is set, NATS JetStream if ``LOCALBROKER_NATS_URL`` is
    set (their other options are read from ``LOCALBROKER_REDIS_*`` / ``LOCALBROKER_MONGO_*`` /
    ``LOCALBROKER_NATS_*``)."""
    return [__getattr__(name)() for variable, name in _FROM_ENV.items() if os.environ.get(variable)]

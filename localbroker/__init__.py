"""localbroker: a local-first, embedded event broker for Python.

Example::

    from localbroker import Broker, Event, Router

    class UserCreated(Event, topic="user.created"):
        user_id: str

    router = Router()                       # in the module that handles users

    @router.subscriber("user.created", name="email")
    async def welcome(event: UserCreated) -> None: ...

    broker = Broker("./data")
    broker.include_router(router)

    async with broker:
        await broker.publish(UserCreated(user_id="u1"))
"""

from localbroker.alerts import Alerts, AlertsConfig
from localbroker.broker.broker import Broker, ColdReader, Extension, SubscribeOptions
from localbroker.broker.chains import Chain, ChainNode, DeliveryState
from localbroker.broker.context import chain_scope
from localbroker.broker.delivery import DeliveryContext
from localbroker.broker.dlq import DeadLetterQueue
from localbroker.broker.health import Health, Stall, SubscriberHealth
from localbroker.broker.middleware import DeliverNext, Middleware, PublishNext
from localbroker.broker.router import Router
from localbroker.config import BrokerConfig, FsyncPolicy, MissingState, RetryPolicy, StartFrom
from localbroker.errors import (
    ArchiveError,
    BrokerStateError,
    ConfigurationError,
    CorruptLogError,
    LocalBrokerError,
    LogLockedError,
    MissingExtraError,
    MissingStateError,
    NotFoundError,
    RejectEvent,
    SerializationError,
    StateStoreError,
    SubscriberStalledError,
    SyncError,
)
from localbroker.events import Command, Event, GenericEvent, PublishResult
from localbroker.registry import EventRegistry
from localbroker.state.store import DLQEntry, ErrorRecord

__all__ = [
    "Alerts",
    "AlertsConfig",
    "ArchiveError",
    "Broker",
    "BrokerConfig",
    "BrokerStateError",
    "Chain",
    "ChainNode",
    "ColdReader",
    "Command",
    "ConfigurationError",
    "CorruptLogError",
    "DLQEntry",
    "DeadLetterQueue",
    "DeliverNext",
    "DeliveryContext",
    "DeliveryState",
    "ErrorRecord",
    "Event",
    "EventRegistry",
    "Extension",
    "FsyncPolicy",
    "GenericEvent",
    "Health",
    "LocalBrokerError",
    "LogLockedError",
    "Middleware",
    "MissingExtraError",
    "MissingState",
    "MissingStateError",
    "NotFoundError",
    "PublishNext",
    "PublishResult",
    "RejectEvent",
    "RetryPolicy",
    "Router",
    "SerializationError",
    "Stall",
    "StartFrom",
    "StateStoreError",
    "SubscribeOptions",
    "SubscriberHealth",
    "SubscriberStalledError",
    "SyncError",
    "chain_scope",
]

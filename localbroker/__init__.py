"""localbroker: a local-first, embedded event broker for Python."""

from localbroker.errors import (
    ArchiveError,
    BrokerStateError,
    ConfigurationError,
    CorruptLogError,
    LocalBrokerError,
    LogLockedError,
    NotFoundError,
    RejectEvent,
    SerializationError,
    SyncError,
)

__all__ = [
    "ArchiveError",
    "BrokerStateError",
    "ConfigurationError",
    "CorruptLogError",
    "LocalBrokerError",
    "LogLockedError",
    "NotFoundError",
    "RejectEvent",
    "SerializationError",
    "SyncError",
]

"""Errors raised by localbroker.

Every error derives from one root, so ``except LocalBrokerError`` catches them all::

    LocalBrokerError
    ├── ConfigurationError        bad option, URL or environment value; event classes without upcasters between them
    ├── BrokerStateError          broker not started, already closed, directory in use
    │   ├── LogLockedError        the log directory is held by another process (repair, a broker)
    │   └── LeaseLostError        this process no longer holds the lease it acted under (fencing)
    ├── CorruptLogError           a record's checksum or framing is wrong (names segment, byte, offset)
    ├── SubscriberStalledError    a subscriber cannot read on (damage in the log); from wait_idle
    ├── StateStoreError           state.db cannot be read or written, or holds a damaged row (names file, subscriber)
    │   ├── MissingStateError     the log holds events but state.db is gone: choose ``on_missing_state``
    │   └── StorageFullError      the disk holding state.db is full (names the file and what was not saved)
    ├── SerializationError        an event that cannot be encoded or decoded
    ├── NotFoundError             unknown subscriber, DLQ entry, chain or offset
    ├── RejectEvent               raised by a handler: do not retry, dead-letter now
    ├── SyncError                 a sync target (Redis, MongoDB, NATS) failed; ``retriable`` says if it may pass
    ├── ArchiveError              the archive (S3 or a directory) failed; ``retriable`` says if it may pass
    └── MissingExtraError         an optional part whose extra is not installed (also an ImportError)

``retriable`` is a class attribute that retry loops read instead of matching on types.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ArchiveError",
    "BrokerStateError",
    "ConfigurationError",
    "CorruptLogError",
    "LeaseLostError",
    "LocalBrokerError",
    "LogLockedError",
    "MissingExtraError",
    "MissingStateError",
    "NotFoundError",
    "RejectEvent",
    "SerializationError",
    "StateStoreError",
    "StorageFullError",
    "SubscriberStalledError",
    "SyncError",
]


class LocalBrokerError(Exception):
    """Root of every error localbroker raises."""

    retriable: bool = False


class ConfigurationError(LocalBrokerError, ValueError):
    """An option, URL or environment variable has a value localbroker cannot use."""


class BrokerStateError(LocalBrokerError):
    """The broker is not in a state that allows the call (not started, closed, ...)."""

    @classmethod
    def not_running(cls) -> BrokerStateError:
        """The error for a call that needs a started broker."""
        return cls("the broker is not running: use 'async with broker:' to start it")


class LogLockedError(BrokerStateError):
    """The log directory is not available to this opener.

    Raised by what needs the directory to itself (``localbroker repair``, ``state repair``,
    ``archive run``: ``CommitLog(..., exclusive=True)``) while a broker has it open, and by
    ``Broker.start`` while one of those holds it. Brokers share a directory with each other.
    """

    def __init__(self, directory: Path | str, holder: str | None = None) -> None:
        self.directory = Path(directory)
        self.holder = holder
        who = f" (held by {holder})" if holder else ""
        super().__init__(
            f"log directory {self.directory} is already open for writing by another process{who}; "
            "open it read-only, or stop the other broker first"
        )


class LeaseLostError(BrokerStateError):
    """A process acted under a lease (a singleton role, a subscriber's queue) it no longer holds.

    Another process took the lease over (this one stopped renewing it in time, or was taken
    for dead); the write that checked it was not made.
    """

    def __init__(self, lease: str, holder: str, epoch: int) -> None:
        self.lease = lease
        self.holder = holder
        self.epoch = epoch
        super().__init__(
            f"process {holder} no longer holds lease {lease!r} (epoch {epoch}): another "
            "process took it over; the change was not saved"
        )


class CorruptLogError(LocalBrokerError):
    """A record in the commit log failed its checksum or framing check.

    Names the segment file, the byte position where the bad record starts and, when known,
    the offset that record has (or should have), so an operator can inspect it
    (``localbroker verify DIR``) and repair the log (``localbroker repair DIR``).
    """

    def __init__(
        self, segment: Path | str, position: int, reason: str, *, offset: int | None = None
    ) -> None:
        self.segment = Path(segment)
        self.position = position
        self.reason = reason
        self.offset = offset
        at = f"at byte {position}" + (f" (offset {offset})" if offset is not None else "")
        super().__init__(f"corrupt record in {self.segment} {at}: {reason}")


class SubscriberStalledError(LocalBrokerError):
    """A subscriber cannot read the log on: the read at its position fails (see ``cause``).

    Raised by ``Broker.wait_idle``, which would otherwise wait for a queue that cannot move.
    The subscriber keeps retrying slowly, so it goes on by itself once the cause is gone
    (``localbroker repair DIR`` for a damaged log, see docs/log-format.md).
    """

    def __init__(self, subscriber: str, position: int, cause: str) -> None:
        self.subscriber = subscriber
        self.position = position
        self.cause = cause
        super().__init__(f"subscriber {subscriber!r} is stalled at offset {position}: {cause}")


class StateStoreError(LocalBrokerError):
    """``state.db`` could not be read or written, or one of its rows is damaged.

    Raised from the state layer instead of SQLite's own errors (``raise ... from`` keeps them
    as the cause). The message names the file and, when one is concerned, the subscriber::

        /data/state.db: subscriber 'email' has a damaged row (column 'done': ...); ...
    """

    def __init__(self, path: Path | str, message: str, subscriber: str | None = None) -> None:
        self.path = Path(path)
        """The ``state.db`` file concerned."""
        self.subscriber = subscriber
        """The subscriber whose row or change failed, if one is concerned."""
        self.message = message
        super().__init__(f"{self.path}: {message}")

    def __reduce__(self) -> tuple[object, ...]:
        return type(self), (self.path, self.message, self.subscriber)


class MissingStateError(StateStoreError):
    """The log of a data directory holds events but its ``state.db`` is gone.

    Subscriber positions, the DLQ and the error history went with it, so the broker refuses to
    start until told how to recreate the subscribers: ``on_missing_state="earliest"`` (deliver
    the whole log again) or ``"latest"`` (start at the end, skipping the log).
    """

    def __init__(self, data_dir: Path | str, first_offset: int, next_offset: int) -> None:
        self.data_dir = Path(data_dir)
        """The data directory whose ``state.db`` is missing."""
        self.first_offset = first_offset
        self.next_offset = next_offset
        state = self.data_dir / "state.db"
        super().__init__(
            state,
            f"missing, but the log in {self.data_dir} holds offsets {first_offset}..{next_offset - 1}: "
            "subscriber positions, the DLQ and the error history are gone. If the file was moved, "
            "put it back. Otherwise choose how to recreate the subscribers with "
            "on_missing_state (or LOCALBROKER_ON_MISSING_STATE): 'earliest' delivers every event "
            "in the log again (at least once), 'latest' starts at the end (the log's events are "
            "not delivered)",
        )

    def __reduce__(self) -> tuple[object, ...]:
        return type(self), (self.data_dir, self.first_offset, self.next_offset)


class StorageFullError(StateStoreError):
    """The disk holding ``state.db`` is full: a change could not be saved.

    Nothing is half-saved (the change's transaction is rolled back) and the broker goes on;
    once space is freed, changes are saved again. Positions not saved when the broker closes
    mean redelivery after the restart (at least once), never loss::

        /data/state.db: the disk is full: could not save subscriber positions (...)
    """

    retriable = True


class SerializationError(LocalBrokerError, TypeError):
    """An event could not be encoded to, or decoded from, its stored JSON form."""


class NotFoundError(LocalBrokerError, LookupError):
    """A subscriber, DLQ entry, chain or offset that does not exist was asked for."""


class RejectEvent(LocalBrokerError):
    """Raise from a handler to send the event straight to the DLQ, without retrying.

    Example::

        @broker.subscriber("order.placed", name="billing")
        async def bill(event: OrderPlaced) -> None:
            if event.amount < 0:
                raise RejectEvent("negative amount")
    """


class SyncError(LocalBrokerError):
    """A sync target (Redis Streams, MongoDB, NATS JetStream) failed."""

    retriable = True


class ArchiveError(LocalBrokerError):
    """The archive (S3) failed."""

    retriable = True


class MissingExtraError(LocalBrokerError, ImportError):
    """An optional part of localbroker was used without the extra that provides its libraries.

    Raised the same way by every optional part (``localbroker.sync`` targets,
    ``localbroker.archive``, ``localbroker.dashboard``, Parquet export), so that both
    ``except ImportError`` and ``except LocalBrokerError`` catch it. The message names the extra
    and the pip command::

        localbroker.archive needs the 's3' extra (boto3 is not installed): pip install 'localbroker[s3]'
    """

    def __init__(self, feature: str, extra: str, missing: str) -> None:
        self.feature = feature
        """What was used (``localbroker.archive``, ``RedisStreams``, ...)."""
        self.extra = extra
        """The extra to install."""
        self.missing = missing
        """The module that could not be imported."""
        super().__init__(
            f"{feature} needs the {extra!r} extra ({missing} is not installed): "
            f"pip install 'localbroker[{extra}]'",
            name=missing,
        )

    def __reduce__(self) -> tuple[type[MissingExtraError], tuple[str, str, str]]:
        return type(self), (self.feature, self.extra, self.missing)

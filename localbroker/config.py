"""Configuration models.

Every option has a documented default. Environment variables (``LOCALBROKER_*``) are read
in one place, :class:`BrokerConfig`, through pydantic-settings; keyword arguments to
:class:`~localbroker.Broker` win over them.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from localbroker.errors import ConfigurationError

__all__ = [
    "BrokerConfig",
    "FsyncPolicy",
    "MissingState",
    "RetryPolicy",
    "StartFrom",
    "SubscriberConfig",
    "keywords",
    "load_config",
    "none_from_environment",
    "problems",
]

MiB = 1024 * 1024


class FsyncPolicy(enum.StrEnum):
    """When appended records are forced to disk."""

    ALWAYS = "always"
    """``publish`` returns only once the record is fsynced. Concurrent publishers share one
    fsync (group commit). Nothing that ``publish`` confirmed is lost on a crash or power cut."""

    INTERVAL = "interval"
    """Records are fsynced every ``fsync_interval_ms``; ``publish`` returns once the record is
    written to the OS. A process crash loses nothing; a power cut may lose the last interval."""

    NEVER = "never"
    """The OS decides when to write back. A process crash loses nothing; a power cut may lose
    whatever the OS had not written yet."""


class StartFrom(enum.StrEnum):
    """Where a subscriber seen for the first time starts reading the log."""

    EARLIEST = "earliest"
    """The first event still in the log: the whole history."""

    LATEST = "latest"
    """The end of the log when the subscriber is first registered: only new events."""


class MissingState(enum.StrEnum):
    """What the broker does when the log holds events but ``state.db`` is missing."""

    FAIL = "fail"
    """Refuse to start (:class:`~localbroker.errors.MissingStateError`): an operator decides."""

    EARLIEST = "earliest"
    """Recreate ``state.db``; every subscriber starts at the first event in the log, so every
    event is delivered again (at least once). Logged as a WARNING."""

    LATEST = "latest"
    """Recreate ``state.db``; every subscriber starts at the end of the log, so the events
    already in it are not delivered. A WARNING names how many each subscriber skips."""


class RetryPolicy(BaseModel):
    """How a failed delivery is retried.

    The n-th retry waits ``min(backoff_max, backoff_initial * backoff_multiplier ** (n - 1))``
    seconds. ``backoff_initial=0`` retries immediately.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    backoff_initial: Annotated[float, Field(ge=0)] = 0.1
    """Seconds before the first retry (0 = immediately)."""
    backoff_multiplier: Annotated[float, Field(ge=1)] = 2.0
    """Factor applied to the wait after each failure."""
    backoff_max: Annotated[float, Field(ge=0)] = 30.0
    """Cap on the wait between two tries, in seconds."""

    @classmethod
    def immediate(cls) -> RetryPolicy:
        """Retry at once, with no wait."""
        return cls(backoff_initial=0.0)

    def delay(self, failures: int) -> float:
        """Seconds to wait before the next try, after ``failures`` failed tries."""
        if self.backoff_initial == 0 or failures <= 0:
            return 0.0
        return float(
            min(self.backoff_max, self.backoff_initial * self.backoff_multiplier ** (failures - 1))
        )


class SubscriberConfig(BaseModel):
    """Per-subscriber options; unset values fall back to the broker's defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    ack_timeout: Annotated[float, Field(gt=0)] | None = None
    """Seconds a handler may run before it is cancelled and the event redelivered."""
    max_tries: Annotated[int, Field(ge=1)] | None = None
    """Failed tries after which the event goes to the DLQ."""
    retry: RetryPolicy | None = None
    """Backoff between tries."""
    concurrency: Annotated[int, Field(ge=1)] = 1
    """Handlers of this subscriber running at once (events of one key never run together)."""
    start_from: StartFrom | int | datetime | None = None
    """For a subscriber seen for the first time: ``earliest``, ``latest``, an offset, or a time."""
    dont_retry: tuple[type[BaseException], ...] = ()
    """Exception types that send the event straight to the DLQ (besides ``RejectEvent``)."""
    per_process: bool = False
    """Every process sharing the data directory handles every event, each with its own
    position (``<name>@<process_name>``), instead of the processes sharing one queue."""


def none_from_environment(value: Any) -> Any:
    """Validator (``mode="before"``) of options that take None: an environment variable cannot
    hold None, so ``none`` (or ``null``, or an empty value) stands for it."""
    if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
        return None
    return value


class BrokerConfig(BaseSettings):
    """Options of a :class:`~localbroker.Broker`.

    Each can be set by keyword, or through the environment as ``LOCALBROKER_<NAME>``
    (for example ``LOCALBROKER_ACK_TIMEOUT=10``).
    """

    model_config = SettingsConfigDict(env_prefix="LOCALBROKER_", extra="forbid", frozen=True)

    data_dir: Path = Path("./localbroker-data")
    """Directory holding the commit log (``log/``) and the state databases."""
    fsync: FsyncPolicy = FsyncPolicy.ALWAYS
    """When appended records are forced to disk; see :class:`FsyncPolicy`."""
    fsync_interval_ms: Annotated[int, Field(ge=1)] = 50
    """With ``fsync="interval"``: milliseconds between two fsyncs."""
    segment_bytes: Annotated[int, Field(ge=4096)] = 64 * MiB
    """A segment is rolled when the next write would make it larger than this."""
    segment_max_age: Annotated[float, Field(gt=0)] | None = 24 * 3600.0
    """Seconds after which the active segment is rolled even if not full (``None``: never)."""
    ack_timeout: Annotated[float, Field(gt=0)] = 5.0
    """Seconds a handler may run before it is cancelled and the event redelivered."""
    max_tries: Annotated[int, Field(ge=1)] = 5
    """Failed tries after which an event goes to the dead letter queue."""
    retry: RetryPolicy = RetryPolicy()
    """Default backoff between tries."""
    start_from: StartFrom = StartFrom.LATEST
    """Where a subscriber seen for the first time starts (like Kafka's auto.offset.reset)."""
    max_in_flight: Annotated[int, Field(ge=1)] = 1000
    """Events read ahead per subscriber (waiting, running or backing off) before reading stops."""
    state_flush_interval: Annotated[float, Field(gt=0)] = 0.05
    """Seconds between two writes of subscriber positions to ``state.db``."""
    index_events: bool = True
    """Keep the event index (topic, time, key, chain ids) that chain queries and the dashboard use."""
    control_poll_interval: Annotated[float, Field(gt=0)] = 0.25
    """Seconds between two checks for operator requests (DLQ retry/discard from the CLI)."""
    history_retention: Annotated[float, Field(gt=0)] | None = 7 * 24 * 3600.0
    """Seconds the errors and tries of finished deliveries are kept in ``state.db`` (``None``:
    forever). Deliveries still retrying or in the DLQ keep theirs; DLQ entries stay until
    resolved or discarded."""
    on_missing_state: MissingState = MissingState.FAIL
    """What to do when the log holds events but ``state.db`` is missing; see :class:`MissingState`."""

    lease_timeout: Annotated[float, Field(ge=0.5)] = 10.0
    """Seconds a lease lasts unless renewed (renewed every second): the shared queues and
    singleton roles of a process that hangs, or that runs on another host and dies, are taken
    over after this; one that dies on the same host loses them at once (its liveness lock).
    A process stops a role it could not renew at 80% of it, before another can take it over,
    so a busy event loop needs a generous value."""
    process_name: Annotated[str, Field(min_length=1, pattern=r"^[^@]+$")] | None = None
    """Names this process among those sharing the data directory, for its per-process
    subscribers: their positions are kept under ``<subscriber>@<process_name>`` and resumed by
    the next process of that name. Unset: a name new at every start (its per-process
    subscribers start at their ``start_from`` and are forgotten when it stops)."""

    handler_shutdown_timeout: Annotated[float, Field(ge=0)] = 5.0
    """Seconds ``close()`` waits for plain ``def`` handlers still running in their threads.
    Threads still running then are abandoned with a warning: they cannot be stopped, but they
    do not keep the process from exiting, and their events are delivered again after a restart.
    Also how long an async handler that ignores its cancellation is cancelled again before its
    coroutine is closed."""
    index_max_lag: Annotated[int, Field(ge=1)] = 50_000
    """Events the event index may be behind the log. A publisher that finds it that far behind
    waits for it to catch up, which happens only under a sustained load above the indexer's
    rate: the lag, and the time the next start needs to catch up, stay bounded. An index that
    fails (damage, a full disk) never holds publishers."""
    index_close_timeout: Annotated[float, Field(ge=0)] = 1.0
    """Seconds ``close()`` lets the event index (``index.db``) catch up with the log. What it
    has not indexed by then is indexed at the next start (a WARNING names the offsets); chain
    queries and the dashboard read those events from the log meanwhile."""

    _none_from_environment = field_validator("segment_max_age", "history_retention", mode="before")(
        none_from_environment
    )

    @model_validator(mode="after")
    def _check(self) -> BrokerConfig:
        if self.fsync is FsyncPolicy.INTERVAL and self.fsync_interval_ms > 60_000:
            raise ValueError(
                "fsync_interval_ms above 60000 would leave a minute of events unsynced"
            )
        return self


def _accepts_none(model: type[BaseModel], name: str) -> bool:
    """Whether option ``name`` of ``model`` takes None as a value (``float | None``, ...)."""
    field = model.model_fields.get(name)
    if field is None:
        return False
    annotation = field.annotation
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(
        None
    ) in typing.get_args(annotation)


def keywords(model: type[BaseModel], options: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword options to build ``model`` with.

    A None given for an option that takes None is a value and is kept
    (``history_retention=None``: keep forever); a None for any other option means "not given"
    (the default, or the environment, applies), as for ``Broker(data_dir=None)``.
    """
    return {k: v for k, v in options.items() if v is not None or _accepts_none(model, k)}


def load_config(**overrides: Any) -> BrokerConfig:
    """Build a :class:`BrokerConfig` from the environment and ``overrides``.

    ``None`` is kept for the options that take it (see :func:`keywords`). Raises
    :class:`~localbroker.errors.ConfigurationError` naming every bad option.
    """
    try:
        return BrokerConfig(**keywords(BrokerConfig, overrides))
    except ValidationError as exc:
        raise ConfigurationError(f"invalid broker configuration: {problems(exc)}") from exc


def problems(exc: ValidationError, names: Mapping[str, str] | None = None) -> str:
    """Every error of a validation, as ``option: message; ...`` (``names`` renames options)."""
    names = names or {}
    located = ((".".join(str(p) for p in err["loc"]) or "config", err) for err in exc.errors())
    return "; ".join(f"{names.get(where, where)}: {err['msg']}" for where, err in located)

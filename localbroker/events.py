"""Events, commands and their stored envelope.

An event is a pydantic model. Its envelope fields (``id``, ``topic``, ``time``, ``key``,
``version``, ``correlation_id``, ``causation_id``, ``headers``) are declared here; a subclass
declares its own fields, which are the payload::

    class UserCreated(Event, topic="user.created"):
        user_id: str
        name: str

On disk an event is one JSON object: the envelope fields plus ``data`` holding the payload
(see ``docs/log-format.md``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
import uuid_utils
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from localbroker.errors import ConfigurationError, SerializationError
from localbroker.topics import validate_topic

__all__ = [
    "ENVELOPE_FIELDS",
    "Command",
    "Event",
    "GenericEvent",
    "PublishResult",
    "check_keys",
    "decode_envelope",
    "encode_event",
    "new_event_id",
    "to_event",
]

ENVELOPE_FIELDS = frozenset(
    {"id", "topic", "time", "key", "version", "correlation_id", "causation_id", "headers"}
)


def new_event_id() -> str:
    """A new time-sortable event id (UUIDv7, as a string)."""
    return str(uuid_utils.uuid7())


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Base class of typed events.

    Subclasses name their topic (and optionally a schema version, default 1) as class
    keywords; the docstring documents the topic (schema registry, dashboard, AsyncAPI)::

        class OrderPlaced(Event, topic="order.placed", version=2):
            '''An order was paid for: start shipping.'''
            order_id: str
            amount: int

    A new version of a topic is a new class with the next version, plus an upcaster that
    turns stored events of the old version into the new one (``Broker.upcaster``).

    ``id`` and ``time`` are filled in when the event is created; ``correlation_id`` and
    ``causation_id`` are filled in by :meth:`Broker.publish` from the event being handled,
    when there is one.
    """

    # JSON mode keeps NaN and ±Infinity as floats (pydantic's default turns untyped ones into
    # None) so that encode_event sees them and refuses them instead of storing null.
    model_config = ConfigDict(validate_assignment=False, ser_json_inf_nan="constants")

    id: str = Field(default_factory=new_event_id)
    """Unique, time-sortable id (UUIDv7)."""
    topic: str = ""
    """The topic the event is published to (the class keyword ``topic`` sets the default)."""
    time: datetime = Field(default_factory=_utcnow)
    """When the event was created (UTC)."""
    key: str | None = None
    """Ordering key: events with the same key reach a subscriber one at a time, in order."""
    version: int = 1
    """Schema version of the payload (the class keyword ``version`` sets the default)."""
    correlation_id: str | None = None
    """Id of the command that started the chain this event belongs to."""
    causation_id: str | None = None
    """Id of the event whose handler published this one."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Free-form string metadata (tracing ids, origin of synced events, ...)."""

    __topic__: ClassVar[str | None] = None
    __version__: ClassVar[int] = 1

    def __init_subclass__(cls, topic: str | None = None, version: int | None = None, **kw: Any):
        super().__init_subclass__(**kw)
        if topic is not None:
            cls.__topic__ = validate_topic(topic)
        if version is not None:
            if type(version) is not int or version < 1:
                raise ConfigurationError(
                    f"{cls.__qualname__}: version must be an integer >= 1, not {version!r}"
                )
            cls.__version__ = version

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        # Make the class keywords the field defaults, so UserCreated(...) needs no topic=.
        changed = False
        if cls.__topic__ is not None and cls.model_fields["topic"].default != cls.__topic__:
            cls.model_fields["topic"].default = cls.__topic__
            changed = True
        if cls.model_fields["version"].default != cls.__version__:
            cls.model_fields["version"].default = cls.__version__
            changed = True
        if changed:
            cls.model_rebuild(force=True)

    def payload(self) -> dict[str, Any]:
        """The event's own fields (everything but the envelope), as JSON-compatible values."""
        return self.model_dump(mode="json", exclude=set(ENVELOPE_FIELDS))


class GenericEvent(Event):
    """An event without a declared class: its payload fields are kept as extra attributes.

    ``broker.publish("user.created", {"user_id": "u1"})`` publishes one, and handlers of topics
    with no registered class receive one (``event.payload()`` returns the fields).
    """

    model_config = ConfigDict(extra="allow")


class Command(Event):
    """An event that starts a chain: its own id becomes the chain's correlation id.

    An HTTP POST, a mutation, a webhook or a scheduled job is published as a command; every
    event published while handling it (and their handlers' events, and so on) carries the
    command's id as ``correlation_id``.
    """

    def model_post_init(self, context: Any, /) -> None:
        if self.correlation_id is None:
            self.correlation_id = self.id


@dataclasses.dataclass(frozen=True, slots=True)
class PublishResult:
    """What :meth:`Broker.publish` returns once the event is stored (durably, by policy)."""

    id: str
    """The event's id."""
    topic: str
    """The topic it was published to."""
    offset: int
    """Its position in the commit log."""
    correlation_id: str | None
    """The chain it belongs to."""


def encode_event(event: Event) -> bytes:
    """The stored JSON envelope of ``event``; raise SerializationError if it cannot be encoded.

    JSON has no NaN or ±Infinity (orjson would write ``null``) and only string object keys
    (pydantic would turn ``1`` into ``"1"``): a payload holding either is refused, naming the
    field, rather than stored as something else. Keys of typed fields (``dict[int, float]``)
    are converted by pydantic and read back by the same class, so only untyped data (a
    :class:`GenericEvent`'s payload, extra fields) must use string keys.
    """
    extra = event.__pydantic_extra__
    if extra:
        check_keys(extra, event)
    try:
        fields = event.model_dump(mode="json")
    except Exception as exc:  # pydantic raises several types for unserialisable values
        raise SerializationError(f"{_cannot(event)}: {exc}") from exc
    data = {k: fields.pop(k) for k in list(fields) if k not in ENVELOPE_FIELDS}
    try:
        encoded = orjson.dumps(data)
    except TypeError as exc:
        raise SerializationError(f"{_cannot(event)}: {exc}") from exc
    # orjson writes NaN and ±Infinity as null: without a null, there is none to look for.
    if encoded.find(b"null") >= 0:
        path = _non_finite(data)
        if path is not None:
            raise SerializationError(
                f"{_cannot(event)}: data{path} is not a finite number; JSON has no NaN or Infinity"
            )
    fields["data"] = orjson.Fragment(encoded)
    return orjson.dumps(fields)


def check_keys(data: Any, event: Event | str) -> None:
    """Raise SerializationError naming the path if a dict in untyped ``data`` has a key that
    is not a string. ``event`` is the event, or the topic of a payload not yet made one."""
    found = _non_str_key(data, "data")
    if found is not None:
        path, key = found
        raise SerializationError(
            f"{_cannot(event)}: {path} has the non-string key {key!r} "
            f"({type(key).__name__}); JSON object keys are strings"
        )


def _cannot(event: Event | str) -> str:
    if isinstance(event, str):
        return f"event GenericEvent ({event}) cannot be serialised"
    return f"event {type(event).__name__} ({event.topic}) cannot be serialised"


# Values that hold no dict: skipped by one set lookup, the common case of a flat payload.
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _non_str_key(value: Any, path: str) -> tuple[str, Any] | None:
    """Path of the first dict below ``value`` with a non-string key, and that key."""
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) is not str:
                return path, key
            if type(item) not in _SCALARS:
                found = _non_str_key(item, _field_path(path, key))
                if found is not None:
                    return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if type(item) not in _SCALARS:
                found = _non_str_key(item, f"{path}[{i}]")
                if found is not None:
                    return found
    return None


def _non_finite(value: Any) -> str | None:
    """Path below ``value`` (JSON-mode data) to the first NaN or ±Infinity, if any."""
    if type(value) is float:
        return None if math.isfinite(value) else ""
    items: Iterable[tuple[Any, Any]]
    if type(value) is dict:
        items = value.items()
    elif type(value) is list:
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite(item)
        if found is not None:
            step = _field_path("", key) if isinstance(key, str) else f"[{key}]"
            return step + found
    return None


def _field_path(path: str, key: str) -> str:
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{key!r}]"


def decode_envelope(payload: bytes) -> dict[str, Any]:
    """Parse a stored envelope into a dict (envelope fields plus ``data``)."""
    try:
        envelope = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise SerializationError(f"stored event is not valid JSON: {exc}") from exc
    if not isinstance(envelope, dict) or "topic" not in envelope:
        raise SerializationError("stored event is not an envelope object with a topic")
    return envelope


def to_event(envelope: dict[str, Any], cls: type[Event] = GenericEvent) -> Event:
    """Build an event of ``cls`` from a stored envelope, as it is (no upcasting).

    Readers that may meet older versions use :meth:`EventRegistry.to_event
    <localbroker.registry.EventRegistry.to_event>`, which upcasts first.
    """
    target = GenericEvent if cls is Event else cls
    data = envelope.get("data") or {}
    fields = {k: v for k, v in envelope.items() if k != "data"}
    try:
        return target.model_validate({**data, **fields})
    except ValidationError as exc:
        raise SerializationError(
            f"event {envelope.get('id')} ({envelope['topic']}) does not fit "
            f"{target.__name__}: {exc}"
        ) from exc

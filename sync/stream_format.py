"""How an event is laid out in a Redis stream entry (documented in the README for other services).

Stream ``<stream_prefix><topic>`` (default ``events:user.created``), one entry per event, with
string fields::

    id              event id (UUIDv7)
    topic           the topic
    time            ISO 8601 UTC time of the event
    version         schema version (integer as text)
    key             ordering key              (absent when the event has none)
    correlation_id  chain id                  (absent when none)
    causation_id    id of the causing event   (absent when none)
    headers         JSON object of string headers
    data            JSON object: the payload
    service         the service that published it
    producer        id of the producing broker's data directory (mirrored events only)
    offset          the event's offset in the producer's log (mirrored events only)

Only ``data`` is required (a JSON object); an entry without it is refused (the inbound
consumer logs it and acknowledges it, see :mod:`localbroker.sync.redis_inbound`): other fields
are never taken as the payload. Missing ``id``/``time`` are derived from the entry id,
``topic`` from the stream name.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from localbroker.errors import SerializationError

__all__ = ["ENTRY_FIELDS", "ORIGIN_HEADER", "entry_fields", "entry_to_envelope", "is_from_redis"]

#: Header set on events appended from a stream: ``redis:<stream>/<entry id>``. The outbound
#: mirror does not send such events back (no loops).
ORIGIN_HEADER = "origin"
_ORIGIN_PREFIX = "redis:"

ENTRY_FIELDS = frozenset(
    {
        "id",
        "topic",
        "time",
        "version",
        "key",
        "correlation_id",
        "causation_id",
        "headers",
        "data",
        "service",
        "producer",
        "offset",
    }
)
_OPTIONAL = ("key", "correlation_id", "causation_id")


def is_from_redis(envelope: dict[str, Any]) -> bool:
    """Whether the event was appended from a Redis stream (and must not be mirrored back)."""
    headers = envelope.get("headers") or {}
    return str(headers.get(ORIGIN_HEADER, "")).startswith(_ORIGIN_PREFIX)


def entry_fields(
    envelope: dict[str, Any], *, service: str, producer: str, offset: int
) -> dict[str, str]:
    """The stream entry of a stored envelope."""
    fields = {
        "id": envelope["id"],
        "topic": envelope["topic"],
        "time": envelope["time"],
        "version": str(envelope.get("version", 1)),
        "headers": orjson.dumps(envelope.get("headers") or {}).decode(),
        "data": orjson.dumps(envelope.get("data") or {}).decode(),
        "service": service,
        "producer": producer,
        "offset": str(offset),
    }
    for name in _OPTIONAL:
        value = envelope.get(name)
        if value is not None:
            fields[name] = value
    return fields


def _json_object(value: str, what: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise SerializationError(f"field {what!r} is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise SerializationError(f"field {what!r} is not a JSON object")
    return parsed


def entry_to_envelope(
    stream: str, entry_id: str, raw: dict[bytes, bytes], *, topic: str
) -> dict[str, Any]:
    """The envelope of a stream entry, with the origin header set; SerializationError if unusable."""
    try:
        fields = {k.decode(): v.decode() for k, v in raw.items()}
    except UnicodeDecodeError as exc:
        raise SerializationError(f"entry {entry_id} of {stream} is not UTF-8: {exc}") from exc
    if "data" not in fields:
        raise SerializationError(
            f"entry {entry_id} of {stream} has no 'data' field (it has: "
            f"{', '.join(sorted(fields)) or 'no field'}); 'data' must hold the payload as a "
            "JSON object"
        )
    data = _json_object(fields["data"], "data")
    headers = _json_object(fields["headers"], "headers") if "headers" in fields else {}
    headers = {str(k): str(v) for k, v in headers.items()}
    headers[ORIGIN_HEADER] = f"{_ORIGIN_PREFIX}{stream}/{entry_id}"
    if "time" in fields:
        time = fields["time"]
    else:
        millis = int(entry_id.split("-", 1)[0])
        time = datetime.fromtimestamp(millis / 1000, UTC).isoformat()
    try:
        version = int(fields.get("version", 1))
    except ValueError as exc:
        raise SerializationError(
            f"entry {entry_id} of {stream}: version is not an integer"
        ) from exc
    envelope: dict[str, Any] = {
        "id": fields.get("id") or f"{stream}/{entry_id}",
        "topic": fields.get("topic") or topic,
        "time": time,
        "version": version,
        "headers": headers,
        "data": data,
    }
    for name in _OPTIONAL:
        envelope[name] = fields.get(name)
    return envelope

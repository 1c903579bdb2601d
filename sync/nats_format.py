"""How an event is laid out in a NATS JetStream message (documented in the README for other services).

Subject ``<subject_prefix><topic>`` (default ``events.user.created``) in the stream (default
``EVENTS``); the data is the payload as a JSON object; the rest of the envelope is in headers::

    Nats-Msg-Id          event id (UUIDv7); the server drops a resend within its duplicate window
    Event-Time           ISO 8601 UTC time of the event
    Event-Version        schema version (integer as text)
    Event-Key            ordering key                     (absent when the event has none)
    Event-Correlation-Id chain id                         (absent when none)
    Event-Causation-Id   id of the causing event          (absent when none)
    Event-Headers        JSON object of string headers    (absent when there are none)
    Event-Service        the service that published it
    Event-Producer       id of the producing broker's data directory (mirrored events only)
    Event-Offset         the event's offset in the producer's log    (mirrored events only)

Only the data is required (a JSON object); a message without it is refused (the inbound
consumer logs it and terminates it, see :mod:`localbroker.sync.nats_inbound`). A missing
``Nats-Msg-Id`` makes the id ``<stream>/<stream sequence>``, a missing ``Event-Time`` the time
the server stored the message; the topic is the subject without the prefix.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from localbroker.errors import SerializationError

from .inbound import ORIGIN_HEADER
from .stream_format import json_object

__all__ = [
    "MSG_ID",
    "OFFSET",
    "ORIGIN_PREFIX",
    "PRODUCER",
    "SERVICE",
    "envelope_of_message",
    "message_of_envelope",
]

MSG_ID = "Nats-Msg-Id"
TIME = "Event-Time"
VERSION = "Event-Version"
HEADERS = "Event-Headers"
SERVICE = "Event-Service"
PRODUCER = "Event-Producer"
OFFSET = "Event-Offset"
_OPTIONAL = {
    "key": "Event-Key",
    "correlation_id": "Event-Correlation-Id",
    "causation_id": "Event-Causation-Id",
}
#: Origin header of events appended from a stream: ``nats:<stream>/<stream sequence>``.
ORIGIN_PREFIX = "nats:"


def message_of_envelope(
    envelope: dict[str, Any], *, service: str, producer: str, offset: int
) -> tuple[dict[str, str], bytes]:
    """The headers and data of the message of a stored envelope."""
    headers = {
        MSG_ID: envelope["id"],
        TIME: envelope["time"],
        VERSION: str(envelope.get("version", 1)),
        SERVICE: service,
        PRODUCER: producer,
        OFFSET: str(offset),
    }
    for name, header in _OPTIONAL.items():
        value = envelope.get(name)
        if value is not None:
            headers[header] = value
    if envelope.get("headers"):
        headers[HEADERS] = orjson.dumps(envelope["headers"]).decode()
    return headers, orjson.dumps(envelope.get("data") or {})


def envelope_of_message(
    *,
    stream: str,
    seq: int,
    topic: str,
    headers: dict[str, str] | None,
    data: bytes,
    stored_at: datetime,
) -> dict[str, Any]:
    """The envelope of a message, with the origin header set; SerializationError if unusable."""
    where = f"message {seq} of stream {stream}"
    headers = headers or {}
    if not data:
        raise SerializationError(
            f"{where} has no data; the data must hold the payload as a JSON object"
        )
    try:
        payload = json_object(data, "data")
        own = json_object(headers[HEADERS], HEADERS) if HEADERS in headers else {}
    except SerializationError as exc:
        raise SerializationError(f"{where}: {exc}") from exc
    own = {str(k): str(v) for k, v in own.items()}
    own[ORIGIN_HEADER] = f"{ORIGIN_PREFIX}{stream}/{seq}"
    try:
        version = int(headers.get(VERSION, 1))
    except ValueError as exc:
        raise SerializationError(f"{where}: {VERSION} is not an integer") from exc
    envelope: dict[str, Any] = {
        "id": headers.get(MSG_ID) or f"{stream}/{seq}",
        "topic": topic,
        "time": headers.get(TIME) or stored_at.isoformat(),
        "version": version,
        "headers": own,
        "data": payload,
    }
    for name, header in _OPTIONAL.items():
        envelope[name] = headers.get(header)
    return envelope

"""Encoding events: what JSON cannot hold is refused with the field named, never altered."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from localbroker import Broker, Event, GenericEvent, SerializationError
from localbroker.events import decode_envelope, encode_event


class Reading(Event, topic="sensor.read"):
    readings: list[float]
    celsius: float = 20.0
    by_hour: dict[int, float] = {}
    extra: dict[str, Any] = {}


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (Reading(readings=[1.0, 2.0, 3.0, math.nan]), r"data\.readings\[3\] is not a finite"),
        (Reading(readings=[], celsius=math.inf), r"data\.celsius is not a finite"),
        (Reading(readings=[], extra={"a b": [{"x": -math.inf}]}), r"data\.extra\['a b'\]\[0\]\.x"),
        (GenericEvent(topic="a.b", level=math.nan), r"data\.level is not a finite"),
        (GenericEvent(topic="a.b", s={"v": (0.5, -math.inf)}), r"data\.s\.v\[1\] is not a finite"),
        (
            GenericEvent(topic="a.b", scores={1: 2}),
            r"data\.scores has the non-string key 1 \(int\)",
        ),
        (GenericEvent(topic="a.b", rows=[{"k": {(1, 2): 0}}]), r"data\.rows\[0\]\.k has the non"),
    ],
)
def test_what_json_cannot_hold_is_refused_naming_the_field(event: Event, message: str) -> None:
    with pytest.raises(SerializationError, match=message):
        encode_event(event)


def test_values_json_holds_are_stored_as_they_are() -> None:
    typed = Reading(readings=[-0.0, 1e308, 5e-324], by_hour={7: 1.5}, extra={"n": None})
    data = decode_envelope(encode_event(typed))["data"]
    assert data["readings"] == [-0.0, 1e308, 5e-324]
    assert Reading.model_validate({**data, "topic": "sensor.read"}).by_hour == {7: 1.5}
    untyped = GenericEvent(topic="a.b", note=None, text="null", nested={"x": [None, 1.5]})
    assert decode_envelope(encode_event(untyped))["data"] == {
        "note": None,
        "text": "null",
        "nested": {"x": [None, 1.5]},
    }


async def test_publish_refuses_nan_and_non_string_keys_and_stores_nothing(tmp_path: Path) -> None:
    async with Broker(tmp_path) as broker:
        with pytest.raises(SerializationError, match=r"data\.temps\[1\] is not a finite"):
            await broker.publish("sensor.raw", {"temps": [20.5, math.nan]})
        with pytest.raises(SerializationError, match=r"data has the non-string key 1 \(int\)"):
            await broker.publish("sensor.raw", {1: "one"})  # type: ignore[dict-item]
        with pytest.raises(SerializationError, match=r"data\.scores has the non-string key 2"):
            await broker.publish("sensor.raw", {"scores": {2: 0.5}})
        with pytest.raises(SerializationError, match=r"data\.celsius is not a finite"):
            await broker.publish_many(
                [Reading(readings=[]), Reading(readings=[], celsius=-math.inf)]
            )
        assert broker.log.next_offset == 0

"""``user.registered`` in three versions and a router with the upcasters between them.

Shared by the tests of every path an event is read on (live delivery, replay, DLQ retry,
archive reads, inbound sync): each asserts that stored versions 1 and 2 reach a handler
typed with version 3 as :func:`expected_v3` says.
"""

from __future__ import annotations

from typing import Any

from localbroker import Event, Router


class UserRegisteredV1(Event, topic="user.registered"):
    name: str


class UserRegisteredV2(Event, topic="user.registered", version=2):
    name: str
    email: str


class UserRegistered(Event, topic="user.registered", version=3):
    """A user signed up: send the welcome mail.

    Version 3 splits the name; version 2 added the email.
    """

    first_name: str
    last_name: str
    email: str


upcasters = Router()


@upcasters.upcaster("user.registered", from_version=1)
def add_email(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "email": f"{data['name'].lower().replace(' ', '.')}@example.invalid"}


@upcasters.upcaster("user.registered", from_version=2)
def split_name(data: dict[str, Any]) -> dict[str, Any]:
    # Changes its argument in place: the registry hands each upcaster a copy, so a retry
    # upcasts the stored payload again rather than this one.
    first, _, last = data.pop("name").partition(" ")
    data.update(first_name=first, last_name=last)
    return data


def stored_versions() -> list[Event]:
    """One event of each version, as an application of each era published it."""
    return [
        UserRegisteredV1(name="Ann Lee", key="u1"),
        UserRegisteredV2(name="Bo Ek", email="bo@mail.example", key="u2"),
        UserRegistered(first_name="Cy", last_name="Ng", email="cy@mail.example", key="u3"),
    ]


def expected_v3() -> list[tuple[str, str, str, int]]:
    """(first name, last name, email, version) of :func:`stored_versions` read as version 3."""
    return [
        ("Ann", "Lee", "ann.lee@example.invalid", 3),
        ("Bo", "Ek", "bo@mail.example", 3),
        ("Cy", "Ng", "cy@mail.example", 3),
    ]


def as_tuple(event: Event) -> tuple[str, str, str, int]:
    assert isinstance(event, UserRegistered), type(event)
    return (event.first_name, event.last_name, event.email, event.version)

"""Next releases of the application of tests/broker/users_module.py, for ``--app``."""

from __future__ import annotations

from localbroker import Event, Router
from tests.versioned import upcasters


class UserRegisteredV4(Event, topic="user.registered", version=4):
    """Version 4: one display name again (its upcaster from version 3 is forgotten)."""

    display_name: str
    email: str


forgot_upcaster = Router()
forgot_upcaster.include_router(upcasters)
forgot_upcaster.register(UserRegisteredV4)


class ChangedInPlace(Event, topic="user.registered", version=3):
    """Version 3 with a field added, but no new version."""

    first_name: str
    last_name: str
    email: str
    age: int


changed_in_place = Router()
changed_in_place.include_router(upcasters)
changed_in_place.register(ChangedInPlace)

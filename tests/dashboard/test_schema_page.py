"""The event page shows what the schema registry recorded of the event's topic."""

from __future__ import annotations

import html
import json
from pathlib import Path

from localbroker import Broker, Event
from localbroker.dashboard import create_app
from tests.broker import users_module
from tests.dashboard.conftest import SCRIPT, client_for
from tests.versioned import UserRegistered, UserRegisteredV1


class Shouting(Event, topic="note.shout"):
    __doc__ = f"Docs are escaped: {SCRIPT}"

    text: str


async def test_event_page_shows_the_topics_doc_and_the_schema_of_the_events_version(
    tmp_path: Path,
) -> None:
    broker = Broker(tmp_path, start_from="earliest")
    broker.include_router(users_module.router)
    async with broker:
        published = [
            await broker.publish(UserRegisteredV1(name="Ann Lee")),
            await broker.publish(UserRegistered(first_name="B", last_name="E", email="b@x")),
            await broker.publish(Shouting(text="hi")),
            await broker.publish("note.untyped", {"n": 1}),
        ]
        await broker.wait_idle()
    async with client_for(create_app(tmp_path)) as client:
        old, new, shout, untyped = [
            (await client.get(f"/events/{p.offset}")).text for p in published
        ]

    assert "Schema: user.registered version 1 <code>tests.versioned.UserRegisteredV1</code>" in old
    assert "newest class (version 3) get it upcast by" in old
    assert "<code>tests.versioned.add_email</code> (1 → 2)" in old
    assert "A user signed up: send the welcome mail." in old  # the topic's doc: the newest class's
    schema = json.loads(html.unescape(old.split('<pre class="json schema">')[1].split("</pre>")[0]))
    assert schema["required"] == ["name"]

    assert "Schema: user.registered version 3" in new
    assert "get it upcast" not in new  # already the newest
    assert "first_name" in new

    assert SCRIPT not in shout  # escaped, like everything else on the page
    assert html.escape(SCRIPT) in shout
    assert "No schema is recorded for version 1" in untyped

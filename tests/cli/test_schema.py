"""``localbroker schema``: the schema registry a broker records in its data directory, read
by another process (list, show, check, sample, AsyncAPI)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner, Result

from localbroker import Broker, RetryPolicy
from localbroker.cli.main import cli
from tests.broker import users_module
from tests.versioned import UserRegistered, UserRegisteredV1


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    import localbroker.cli.schema_cmds as schema_cmds

    monkeypatch.setattr(schema_cmds, "console", Console(width=250))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """The users module ran once: version 1 and 3 events, a handler publishing mail."""

    async def run() -> None:
        broker = Broker(tmp_path / "data", start_from="earliest", retry=RetryPolicy.immediate())
        broker.include_router(users_module.router)
        async with broker:
            await broker.publish(UserRegisteredV1(name="Ann Lee"))
            await broker.publish(UserRegistered(first_name="Bo", last_name="Ek", email="b@x"))
            await broker.wait_idle()

    asyncio.run(run())
    return tmp_path / "data"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, ["schema", *args])


def test_list_names_topics_versions_users_and_docs(data: Path) -> None:
    result = invoke("list", "--data", str(data))
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if "│" in line}
    registered = rows["user.registered"]
    assert "1, 3" in registered  # version 2 has no class here, and no event
    assert "tests.versioned.UserRegistered " in registered
    assert "welcome" in registered
    assert "(outside handlers)" in registered
    assert "A user signed up: send the welcome mail." in registered
    sent = rows["mail.welcome_sent"]
    assert "audit" in sent  # untyped, on mail.*
    assert "welcome" in sent  # published from the welcome handler
    assert "The welcome mail went out." in sent


def test_show_prints_the_doc_upcasters_and_the_json_schema(data: Path) -> None:
    result = invoke("show", "user.registered", "--data", str(data))
    assert result.exit_code == 0, result.output
    assert "Version 3 splits the name" in result.output
    assert "upcaster 1 -> 2: tests.versioned.add_email" in result.output
    assert "upcaster 2 -> 3: tests.versioned.split_name" in result.output
    assert "subscriber welcome: tests.versioned.UserRegistered" in result.output
    assert "versions in the log: 1, 3" in result.output
    schema = json.loads(result.output[result.output.index("{") :])
    assert sorted(schema["properties"]) == ["email", "first_name", "last_name"]
    as_json = json.loads(invoke("show", "user.registered", "--json", "--data", str(data)).output)
    assert as_json["versions"]["1"]["json_schema"]["required"] == ["name"]
    missing = invoke("show", "user.nothing", "--data", str(data))
    assert missing.exit_code == 1
    assert "no topic 'user.nothing'" in missing.output


def test_check_passes_then_finds_a_version_no_upcaster_reaches(data: Path) -> None:
    ok = invoke("check", "--data", str(data))
    assert ok.exit_code == 0, ok.output
    assert "ok" in ok.output

    forgot = invoke("check", "--data", str(data), "--app", "tests.cli.schema_app:forgot_upcaster")
    assert forgot.exit_code == 1, forgot.output
    assert (
        "topic 'user.registered': events of version 1, 3 cannot reach version 4 "
        "(tests.cli.schema_app.UserRegisteredV4): no upcaster from version 3"
    ) in " ".join(forgot.output.split())

    changed = invoke("check", "--data", str(data), "--app", "tests.cli.schema_app:changed_in_place")
    assert changed.exit_code == 1, changed.output
    assert "the schema of version 3 (tests.cli.schema_app.ChangedInPlace) is not the one" in (
        " ".join(changed.output.split())
    )

    bad = invoke("check", "--data", str(data), "--app", "tests.cli.schema_app:nothing")
    assert bad.exit_code == 1
    assert "has no 'nothing'" in bad.output


def test_sample_makes_payloads_the_class_and_the_schema_accept(data: Path) -> None:
    result = invoke("sample", "user.registered", "-n", "5", "--data", str(data))
    assert result.exit_code == 0, result.output
    payloads = [json.loads(line) for line in result.output.splitlines()]
    assert len(payloads) == 5
    assert len({json.dumps(p, sort_keys=True) for p in payloads}) == 5
    schema = UserRegistered.model_json_schema()
    for payload in payloads:
        UserRegistered.model_validate(payload)
        jsonschema.validate(payload, schema)
    # Older versions too, and the same seed gives the same payloads.
    v1 = invoke("sample", "user.registered", "--version", "1", "--seed", "7", "--data", str(data))
    assert all(set(json.loads(line)) == {"name"} for line in v1.output.splitlines())
    again = invoke(
        "sample", "user.registered", "--version", "1", "--seed", "7", "--data", str(data)
    )
    assert again.output == v1.output


SPEC = Path(__file__).parent / "asyncapi_spec" / "3.0.0.json"


def test_asyncapi_document_is_valid_asyncapi_3(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "asyncapi.json"
    result = invoke("asyncapi", "--data", str(data), "--title", "users", "-o", str(out))
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    validator = jsonschema.Draft7Validator(json.loads(SPEC.read_text()))
    assert [e.message for e in validator.iter_errors(document)] == []
    # The validation has teeth: an operation without its action is refused.
    broken = json.loads(out.read_text())
    del broken["operations"]["receive.user.registered.welcome"]["action"]
    assert not validator.is_valid(broken)

    assert document["info"] == {"title": "users", "version": "1"}
    channel = document["channels"]["user.registered"]
    assert channel["address"] == "user.registered"
    assert channel["description"].startswith("A user signed up")
    assert sorted(channel["messages"]) == ["user.registered.v1", "user.registered.v3"]
    v3 = document["components"]["messages"]["user.registered.v3"]
    assert sorted(v3["payload"]["properties"]) == ["email", "first_name", "last_name"]
    receive = document["operations"]["receive.user.registered.welcome"]
    assert receive["channel"] == {"$ref": "#/channels/user.registered"}
    assert {"$ref": "#/channels/user.registered/messages/user.registered.v3"} in receive["messages"]
    send = document["operations"]["send.mail.welcome_sent"]
    assert (send["action"], send["summary"]) == ("send", "published by welcome")


def test_asyncapi_moves_nested_models_to_components() -> None:
    from pydantic import BaseModel

    from localbroker import Event, EventRegistry
    from localbroker.schemas import app_catalog, asyncapi

    class Address(BaseModel):
        city: str

    class Shipped(Event, topic="order.shipped:eu"):  # ':' is not allowed in component keys
        to: Address
        via: list[Address] = []

    registry = EventRegistry()
    registry.register(Shipped)
    document = asyncapi(app_catalog(registry, []), title="t")
    validator = jsonschema.Draft7Validator(json.loads(SPEC.read_text()))
    assert [e.message for e in validator.iter_errors(document)] == []
    payload = document["components"]["messages"]["order.shipped_eu.v1"]["payload"]
    assert payload["properties"]["to"] == {
        "$ref": "#/components/schemas/order.shipped_eu.v1.Address"
    }
    assert document["components"]["schemas"]["order.shipped_eu.v1.Address"]["required"] == ["city"]
    assert "$defs" not in payload

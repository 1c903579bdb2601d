"""``localbroker schema ...``: the schema registry recorded in a data directory.

Reads what the broker recorded in ``state.db`` (``localbroker.schemas``), so it works beside a
running broker and without the application's code. ``--app module:attribute`` (a ``Broker``
or a ``Router``) lays the application's current classes and upcasters over it: that is how
``check`` finds a new version that no upcaster chain reaches before it is deployed.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from localbroker import schemas
from localbroker.broker.broker import Broker
from localbroker.broker.router import Router
from localbroker.cli.common import data_option, fmt_time, run
from localbroker.errors import ConfigurationError, NotFoundError
from localbroker.extras import require_extra
from localbroker.schemas import TopicSchema
from localbroker.view import BrokerView

__all__ = ["load_app", "schema_group"]

console = Console()

F = TypeVar("F", bound=Callable[..., Any])


def app_option(fn: F) -> F:
    """``--app module:attribute``: the application's Broker or Router."""
    return click.option(
        "--app",
        "app",
        metavar="MODULE:ATTR",
        default=None,
        help="The application's Broker or Router (e.g. shop.app:broker), imported from the "
        "current directory: its classes and upcasters are laid over the recorded ones.",
    )(fn)


def _ensure_importable_from_cwd() -> None:
    """Let the application's modules be imported from the current directory (as python -m)."""
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))


def load_app(spec: str, data_dir: Path) -> Broker:
    """Import ``module:attribute`` (a Broker, or a Router included in a broker on ``data_dir``)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(
            f"--app must be module:attribute (e.g. shop.app:broker), not {spec!r}"
        )
    _ensure_importable_from_cwd()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"--app {spec}: cannot import {module_name!r}: {exc}") from exc
    try:
        app = getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(f"--app {spec}: {module_name} has no {attribute!r}") from None
    if isinstance(app, Broker):
        return app
    if isinstance(app, Router):
        broker = Broker(data_dir)  # only registers: nothing is opened
        broker.include_router(app)
        return broker
    raise ConfigurationError(f"--app {spec} is a {type(app).__name__}, not a Broker or a Router")


@dataclasses.dataclass(frozen=True, slots=True)
class Catalogs:
    """What a command shows: the recorded catalog, with the application's laid over it."""

    shown: dict[str, TopicSchema]
    recorded: dict[str, TopicSchema]
    app: Broker | None
    """The application given with --app (its registry knows the classes)."""


async def _catalogs(data: Path, app: str | None) -> Catalogs:
    async with BrokerView(data) as view:
        recorded = await schemas.load(view.store)
    if app is None:
        return Catalogs(recorded, recorded, None)
    broker = load_app(app, data)
    current = schemas.app_catalog(broker.registry, broker.subscriptions.values())
    return Catalogs(schemas.merge(recorded, current), recorded, broker)


def _topic(catalog: dict[str, TopicSchema], topic: str) -> TopicSchema:
    entry = catalog.get(topic)
    if entry is None:
        known = ", ".join(catalog) or "none recorded (has a broker run on this directory?)"
        raise NotFoundError(f"no topic {topic!r} in the schema registry (topics: {known})")
    return entry


@click.group("schema")
def schema_group() -> None:
    """Topics, their versions, JSON Schemas and docs, who uses them (the schema registry).

    Example: localbroker schema list --data ./data
    """


@schema_group.command("list")
@data_option
@app_option
@run
async def list_topics(data: Path, app: str | None) -> None:
    """List the topics: versions, newest class, subscribers, publishers, documentation.

    Example: localbroker schema list --data ./data
    """
    catalog = (await _catalogs(data, app)).shown
    if not catalog:
        console.print(f"no topic recorded in {data} (a broker records them when it starts)")
        return
    table = Table("topic", "versions", "class", "subscribers", "publishers", "doc", title="Topics")
    for topic, entry in catalog.items():
        newest = entry.newest
        table.add_row(
            escape(topic),
            ", ".join(map(str, sorted(entry.versions))) or "untyped",
            escape(entry.versions[newest].class_name or "") if newest is not None else "-",
            escape(", ".join(entry.subscribers)) or "-",
            escape(", ".join(entry.publishers)) or "-",
            escape((entry.doc or "").split("\n", 1)[0]),
        )
    console.print(table)


@schema_group.command("show")
@click.argument("topic")
@data_option
@app_option
@click.option(
    "--version", "version", type=int, default=None, help="This version (default: newest)."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print what is recorded of the topic as JSON."
)
@run
async def show(topic: str, data: Path, app: str | None, version: int | None, as_json: bool) -> None:
    """Show a topic: its documentation, versions, upcasters, users and JSON Schema.

    Example: localbroker schema show user.created --data ./data
    """
    entry = _topic((await _catalogs(data, app)).shown, topic)
    if as_json:
        click.echo(orjson.dumps(entry.model_dump(mode="json"), option=orjson.OPT_INDENT_2))
        return
    console.print(f"[bold]{escape(topic)}[/]  recorded {fmt_time(entry.updated)} UTC")
    if entry.doc:
        console.print(escape(entry.doc), highlight=False)
    for number, schema in sorted(entry.versions.items()):
        console.print(f"version {number}: {escape(schema.class_name or '?')}")
    for number, name in sorted(entry.upcasters.items()):
        console.print(f"upcaster {number} -> {number + 1}: {escape(name)}")
    if entry.published:
        console.print(f"versions in the log: {', '.join(map(str, entry.published))}")
    for name, cls in sorted(entry.subscribers.items()):
        console.print(f"subscriber {escape(name)}: {escape(cls or 'untyped')}")
    for name in entry.publishers:
        console.print(f"publisher {escape(name)}")
    if entry.versions:
        chosen = entry.version(version)
        if chosen.json_schema is None:
            console.print(f"[yellow]no JSON Schema:[/] {escape(chosen.error or '?')}")
        else:
            console.print_json(orjson.dumps(chosen.json_schema).decode())


@schema_group.command("check")
@data_option
@app_option
@run
async def check(data: Path, app: str | None) -> None:
    """Report versions that no upcaster chain carries to the newest one; exit 1 if any.

    Checks the versions recorded in the data directory (classes registered before, versions
    appended to the log) against the upcasters of the application (--app) or, without it,
    of the last broker that ran. With --app it also reports a version whose schema changed.

    Example: localbroker schema check --data ./data --app shop.app:broker
    """
    catalogs = await _catalogs(data, app)
    catalog = catalogs.shown
    found = schemas.problems(catalog, catalogs.recorded if app is not None else None)
    for problem in found:
        console.print(f"[red]problem:[/] {escape(problem)}", soft_wrap=True)
    if found:
        raise SystemExit(1)
    console.print(f"[green]ok[/]: {len(catalog)} topics, every version reaches the newest")


@schema_group.command("sample")
@click.argument("topic")
@data_option
@app_option
@click.option(
    "--version", "version", type=int, default=None, help="This version (default: newest)."
)
@click.option("-n", "--count", type=int, default=3, show_default=True, help="How many payloads.")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Another seed, other payloads."
)
@run
async def sample(
    topic: str, data: Path, app: str | None, version: int | None, count: int, seed: int
) -> None:
    """Print example payloads of a topic, one JSON line each, valid for its class.

    The class is the application's (--app) or the one recorded, imported by name from the
    current directory. Made with polyfactory: pip install 'localbroker[schema]'. Subscribers
    can start work before the publisher exists.

    Example: localbroker schema sample user.created -n 5 --data ./data
    """
    require_extra("localbroker schema sample", "schema", "polyfactory")
    catalogs = await _catalogs(data, app)
    entry = _topic(catalogs.shown, topic)
    known = catalogs.app.registry.classes(topic) if catalogs.app is not None else {}
    number = version if version is not None else entry.newest
    cls = known.get(number) if number is not None else None
    if cls is None:
        _ensure_importable_from_cwd()
        cls = schemas.import_class(entry, version)
    for payload in schemas.sample(cls, count, seed=seed):
        click.echo(orjson.dumps(payload))


@schema_group.command("asyncapi")
@data_option
@app_option
@click.option("--title", default=None, help="The document's title (default: the directory name).")
@click.option("--app-version", default="1", show_default=True, help="info.version of the document.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here.")
@run
async def asyncapi(
    data: Path, app: str | None, title: str | None, app_version: str, output: Path | None
) -> None:
    """Write an AsyncAPI 3.0 document (JSON) of the application's topics.

    Example: localbroker schema asyncapi --data ./data -o asyncapi.json
    """
    catalog = (await _catalogs(data, app)).shown
    document = schemas.asyncapi(catalog, title=title or data.resolve().name, version=app_version)
    text = orjson.dumps(document, option=orjson.OPT_INDENT_2)
    if output is None:
        click.echo(text)
    else:
        output.write_bytes(text + b"\n")

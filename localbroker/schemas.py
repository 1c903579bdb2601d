"""The schema registry: the topics an application uses, their versions and JSON Schemas.

When a broker starts it records, in its ``state.db`` (key/value table, one ``schema.topic.<topic>``
row per topic), what it knows of each topic: every version with its class, docstring and the
JSON Schema of its payload (from pydantic), the upcasters between versions, the subscribers
that take it and the publishers that published it (a subscriber's name when published from
its handler, ``(outside handlers)`` otherwise), and the versions appended to the log. Versions
recorded once stay recorded: the log may still hold events of a version whose class is gone.

Other processes read it from there (``localbroker schema list|show|check|sample|asyncapi``, the
dashboard), with or without the application's code. :func:`problems` finds versions that no
upcaster chain carries to the newest one; :func:`sample` makes example payloads of a class;
:func:`asyncapi` writes an AsyncAPI 3 document of the topics.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from localbroker.errors import NotFoundError, StateStoreError
from localbroker.events import ENVELOPE_FIELDS, Event
from localbroker.extras import require_extra
from localbroker.registry import EventRegistry
from localbroker.topics import TopicPattern

if TYPE_CHECKING:
    from localbroker.broker.context import ChainScope
    from localbroker.broker.subscriber import Subscription
    from localbroker.state.store import StateStore

__all__ = [
    "OUTSIDE_HANDLERS",
    "SCHEMA_PREFIX",
    "SchemaRecorder",
    "TopicSchema",
    "VersionSchema",
    "app_catalog",
    "asyncapi",
    "import_class",
    "load",
    "merge",
    "payload_schema",
    "problems",
    "sample",
    "save",
]

logger = logging.getLogger("localbroker.schemas")

#: Key prefix of the recorded topics in ``state.db``'s key/value table.
SCHEMA_PREFIX = "schema.topic."
#: The publisher recorded for events published outside any handler.
OUTSIDE_HANDLERS = "(outside handlers)"


class VersionSchema(BaseModel):
    """One version of a topic: its class and the JSON Schema of its payload."""

    class_name: str | None = None
    """``module.QualifiedName`` of the class."""
    doc: str | None = None
    """The class's docstring: the documentation of the topic at this version."""
    json_schema: dict[str, Any] | None = None
    """JSON Schema (draft 2020-12, from pydantic) of the payload: the fields of ``data``."""
    error: str | None = None
    """Why there is no schema (pydantic cannot describe a field type), if there is none."""


class TopicSchema(BaseModel):
    """What the schema registry knows of one topic."""

    topic: str
    versions: dict[int, VersionSchema] = {}
    """Every version a class was registered for, by version."""
    upcasters: dict[int, str] = {}
    """Upcasters by the version they start from (the function's name)."""
    subscribers: dict[str, str | None] = {}
    """Subscribers receiving the topic, with the class each takes (None: untyped)."""
    publishers: list[str] = []
    """Who published it: subscribers (from their handlers) and ``(outside handlers)``."""
    published: list[int] = []
    """Versions appended to the log (since the schema registry exists)."""
    updated: float = 0.0
    """When it was recorded (Unix time)."""

    @property
    def newest(self) -> int | None:
        """The newest version that has a class, if any."""
        return max(self.versions) if self.versions else None

    @property
    def doc(self) -> str | None:
        """The docstring of the newest version's class."""
        newest = self.newest
        return self.versions[newest].doc if newest is not None else None

    def version(self, version: int | None = None) -> VersionSchema:
        """Version ``version`` (default: the newest); NotFoundError when it has no class."""
        number = self.newest if version is None else version
        if number is None or number not in self.versions:
            known = ", ".join(map(str, sorted(self.versions))) or "none"
            raise NotFoundError(
                f"topic {self.topic!r} has no class for version {version} (versions: {known})"
                if version is not None
                else f"topic {self.topic!r} has no event class (it is published untyped)"
            )
        return self.versions[number]


def _name(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def payload_schema(cls: type[Event]) -> VersionSchema:
    """The recorded form of ``cls``: its name, docstring and the JSON Schema of its payload."""
    own_doc = cls.__dict__.get("__doc__")
    doc = inspect.cleandoc(own_doc) if isinstance(own_doc, str) else None
    try:
        schema = cls.model_json_schema()
    except Exception as exc:  # pydantic cannot describe some field types (callables, ...)
        return VersionSchema(class_name=_name(cls), doc=doc, error=str(exc))
    properties = schema.get("properties", {})
    for name in ENVELOPE_FIELDS:
        properties.pop(name, None)
    required = [r for r in schema.get("required", []) if r not in ENVELOPE_FIELDS]
    if required:
        schema["required"] = required
    else:
        schema.pop("required", None)
    return VersionSchema(class_name=_name(cls), doc=doc, json_schema=schema)


def app_catalog(
    registry: EventRegistry, subscriptions: Iterable[Subscription], topics: Iterable[str] = ()
) -> dict[str, TopicSchema]:
    """What an application (its registry and subscriptions) says of its topics.

    ``topics``: more topics it is known to use (published untyped).
    """
    subscriptions = list(subscriptions)
    names = set(registry.topics()) | set(topics)
    for sub in subscriptions:
        names.update(p for p in sub.patterns if "*" not in p and ">" not in p)
    now = time.time()
    catalog = {}
    for topic in sorted(names):
        subscribers: dict[str, str | None] = {}
        for sub in subscriptions:
            if any(TopicPattern(p).matches(topic) for p in sub.patterns):
                cls = sub.handler.event_class(topic)
                typed = cls is not None and cls.__topic__ is not None
                subscribers[sub.name] = _name(cls) if typed and cls is not None else None
        catalog[topic] = TopicSchema(
            topic=topic,
            versions={v: payload_schema(c) for v, c in registry.classes(topic).items()},
            upcasters={v: _name(fn) for v, fn in registry.upcasters(topic).items()},
            subscribers=subscribers,
            updated=now,
        )
    return catalog


def merge(
    recorded: Mapping[str, TopicSchema], app: Mapping[str, TopicSchema]
) -> dict[str, TopicSchema]:
    """The application's view laid over what was recorded before.

    Versions, publishers and published versions accumulate; the application's upcasters and
    subscribers replace the recorded ones (for topics it has classes or upcasters of).
    """
    merged = dict(recorded)
    for topic, now in app.items():
        before = recorded.get(topic)
        if before is None:
            merged[topic] = now
            continue
        own = bool(now.versions or now.upcasters)
        merged[topic] = TopicSchema(
            topic=topic,
            versions={**before.versions, **now.versions},
            upcasters=now.upcasters if own else before.upcasters,
            subscribers=now.subscribers,
            publishers=sorted({*before.publishers, *now.publishers}),
            published=sorted({*before.published, *now.published}),
            updated=now.updated,
        )
    return dict(sorted(merged.items()))


def _structure(schema: Any) -> Any:
    """A schema without titles and descriptions (documentation changes are no schema change)."""
    if isinstance(schema, dict):
        return {k: _structure(v) for k, v in schema.items() if k not in ("title", "description")}
    if isinstance(schema, list):
        return [_structure(v) for v in schema]
    return schema


def problems(
    catalog: Mapping[str, TopicSchema], recorded: Mapping[str, TopicSchema] | None = None
) -> list[str]:
    """What would break reading the topics of ``catalog`` (a merged view), one sentence each.

    - a version of a topic (with a class, or appended to the log) that no chain of upcasters
      carries to the newest version;
    - events appended at a version newer than the newest class;
    - with ``recorded`` (what the data directory held before): a version whose schema is not
      the recorded one (events stored under it may not fit the class any more).
    """
    found = []
    for topic, entry in catalog.items():
        newest = entry.newest
        if newest is None:
            continue
        target = f"version {newest} ({entry.versions[newest].class_name})"
        olds = sorted(v for v in {*entry.versions, *entry.published} if v < newest)
        missing = sorted(
            {step for v in olds for step in range(v, newest) if step not in entry.upcasters}
        )
        if missing:
            stuck = [v for v in olds if any(step >= v for step in missing)]
            found.append(
                f"topic {topic!r}: events of version {_listing(stuck)} cannot reach {target}: "
                f"no upcaster from version {_listing(missing)}"
            )
        newer = sorted(v for v in entry.published if v > newest)
        if newer:
            found.append(
                f"topic {topic!r}: events of version {_listing(newer)} are in the log, newer "
                f"than {target}, its newest class: no handler can read them"
            )
        before = (recorded or {}).get(topic)
        if before is None:
            continue
        for version, now in sorted(entry.versions.items()):
            old = before.versions.get(version)
            if (
                old is not None
                and old.json_schema is not None
                and now.json_schema is not None
                and _structure(old.json_schema) != _structure(now.json_schema)
            ):
                found.append(
                    f"topic {topic!r}: the schema of version {version} ({now.class_name}) is not "
                    f"the one recorded for it: events stored as version {version} may not fit; "
                    f"give the changed class version={newest + 1} and an upcaster from "
                    f"version {newest}"
                )
    return found


def _listing(numbers: Iterable[int]) -> str:
    return ", ".join(map(str, numbers))


# -- in state.db ---------------------------------------------------------------------------


async def load(store: StateStore) -> dict[str, TopicSchema]:
    """The topics recorded in ``store`` (empty when no broker recorded any yet)."""
    raw = await store.values(SCHEMA_PREFIX)
    catalog = {}
    for key, value in raw.items():
        try:
            entry = TopicSchema.model_validate(value)
        except ValidationError as exc:
            raise StateStoreError(
                store.path, f"the recorded schema {key!r} is damaged: {exc}"
            ) from exc
        catalog[entry.topic] = entry
    return catalog


async def save(store: StateStore, catalog: Mapping[str, TopicSchema]) -> None:
    """Record ``catalog`` in ``store`` (one transaction)."""
    if not catalog:
        return
    await store.set_values(
        {f"{SCHEMA_PREFIX}{t}": entry.model_dump(mode="json") for t, entry in catalog.items()}
    )


class SchemaRecorder:
    """Keeps a broker's schema registry in its ``state.db`` up to date (used by the broker).

    At start, :meth:`record` lays the application's catalog over the recorded one, logs a
    WARNING for each problem (a version no upcaster chain carries on) and saves it. While the
    broker runs, :meth:`note` remembers who publishes which version of which topic (a set
    lookup per publish) and :meth:`save_if_changed` records what is new.
    """

    def __init__(self, registry: EventRegistry, subscriptions: Mapping[str, Subscription]) -> None:
        self._registry = registry
        self._subscriptions = subscriptions
        self._seen: set[tuple[str, int, str]] = set()
        self._recorded: dict[str, TopicSchema] = {}
        # Changes counted, and the count last saved: a save cut short (the flush task is
        # cancelled by close() in the middle of it) leaves them unequal, so close saves again.
        self._changes = 0
        self._saved = 0
        self._failing = False  # the last save failed: report the next failure no more

    def note(self, event: Event, scope: ChainScope | None) -> None:
        """``event`` is being published (from a handler when ``scope`` names a subscriber)."""
        publisher = scope.subscriber if scope is not None and scope.subscriber else None
        key = (event.topic, event.version, publisher or OUTSIDE_HANDLERS)
        if key not in self._seen:
            self._seen.add(key)
            self._changes += 1

    def touch(self) -> None:
        """Subscriptions or classes changed: record them again."""
        self._changes += 1

    def catalog(self) -> dict[str, TopicSchema]:
        """The recorded topics with what this broker knows now laid over them."""
        app = app_catalog(
            self._registry, self._subscriptions.values(), (t for t, _, _ in self._seen)
        )
        for topic, version, publisher in self._seen:
            entry = app[topic]
            if publisher not in entry.publishers:
                entry.publishers.append(publisher)
            if version not in entry.published:
                entry.published.append(version)
        return merge(self._recorded, app)

    async def record(self, store: StateStore) -> None:
        """At start: merge, warn about problems, save."""
        recorded = await load(store)
        self._recorded = recorded
        await self._save(store, warn_against=recorded)

    async def save_if_changed(self, store: StateStore) -> None:
        """Record what changed since the last save; failures are logged and tried again."""
        if self._changes == self._saved:
            return
        try:
            await self._save(store)
        except Exception as exc:
            if not self._failing:  # once per outage (a full disk), not at every flush
                named = isinstance(exc, StateStoreError)  # says what failed, in which file
                logger.error(
                    "%s; will retry",
                    exc if named else f"could not record the schemas in {store.path}: {exc!r}",
                    exc_info=not named,
                )
            self._failing = True
        else:
            self._failing = False

    async def _save(
        self, store: StateStore, warn_against: dict[str, TopicSchema] | None = None
    ) -> None:
        changes = self._changes
        catalog = self.catalog()
        if warn_against is not None:
            for problem in problems(catalog, warn_against):
                logger.warning("schema registry of %s: %s", store.path.parent, problem)
        await save(store, catalog)
        self._recorded = catalog
        self._saved = changes


# -- example payloads ----------------------------------------------------------------------


def import_class(entry: TopicSchema, version: int | None = None) -> type[Event]:
    """The class recorded for ``version`` (default: the newest) of a topic, imported by name.

    Raises :class:`NotFoundError` when it cannot be imported here (run from the application's
    directory, or give the application) or is no longer that topic and version.
    """
    recorded = entry.version(version)
    number = version if version is not None else entry.newest
    name = recorded.class_name or ""
    parts = name.split(".")
    problem = "it is not recorded"
    for cut in range(len(parts) - 1, 0, -1):  # module.Qualified.Name: find the module part
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError as exc:
            problem = str(exc)
            continue
        try:
            for attribute in parts[cut:]:
                found = getattr(found, attribute)
        except AttributeError as exc:
            problem = str(exc)
            continue
        if (
            isinstance(found, type)
            and issubclass(found, Event)
            and (found.__topic__, found.__version__) == (entry.topic, number)
        ):
            return found
        problem = f"it is now {found!r}, not version {number} of {entry.topic!r}"
        break
    raise NotFoundError(
        f"version {number} of {entry.topic!r} was recorded from the class {name or '?'}, which "
        f"cannot be used here ({problem}): run from the application's directory or give it "
        "with --app"
    )


def sample(cls: type[Event], count: int = 3, *, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` example payloads of ``cls`` (valid for it, so for its JSON Schema too).

    Made by polyfactory (the ``schema`` extra), which follows the fields' types and
    constraints; the same ``seed`` gives the same payloads. For subscribers to work with
    before the publisher exists::

        for payload in sample(UserCreated, 5):
            await broker.publish(UserCreated.model_validate(payload))
    """
    require_extra("localbroker schema sample", "schema", "polyfactory")
    from polyfactory.factories.pydantic_factory import ModelFactory

    factory = ModelFactory.create_factory(cls)
    factory.seed_random(seed)
    found: dict[str, dict[str, Any]] = {}
    for _ in range(count * 10):  # a field with few values may allow fewer than count
        if len(found) >= count:
            break
        payload = factory.build().payload()
        found.setdefault(repr(sorted(payload.items())), payload)
    return list(found.values())


# -- AsyncAPI ------------------------------------------------------------------------------


def _component_name(text: str) -> str:
    """A component key (AsyncAPI allows letters, digits, '.', '-' and '_')."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def _relocate_refs(schema: Any, prefix: str) -> Any:
    """``schema`` with its ``#/$defs/X`` references pointing at ``#/components/schemas/<prefix>X``."""
    if isinstance(schema, dict):
        out = {k: _relocate_refs(v, prefix) for k, v in schema.items() if k != "$defs"}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            out["$ref"] = f"#/components/schemas/{prefix}{ref.removeprefix('#/$defs/')}"
        return out
    if isinstance(schema, list):
        return [_relocate_refs(v, prefix) for v in schema]
    return schema


def asyncapi(
    catalog: Mapping[str, TopicSchema],
    *,
    title: str = "localbroker application",
    version: str = "1",
) -> dict[str, Any]:
    """An AsyncAPI 3.0 document of ``catalog``'s topics.

    One channel per topic (address = the topic), one message per version with a class (its
    payload schema; the envelope fields as message headers are not repeated), one ``receive``
    operation per subscriber and one ``send`` operation per topic that has publishers. Nested
    models of a payload (pydantic's ``$defs``) become ``components.schemas``.
    """
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for topic, entry in catalog.items():
        channel_id = _component_name(topic)
        channel_messages: dict[str, Any] = {}
        for number, schema in sorted(entry.versions.items()):
            message_id = f"{channel_id}.v{number}"
            message: dict[str, Any] = {
                "name": message_id,
                "title": f"{topic} version {number}",
                "contentType": "application/json",
                "x-localbroker-version": number,
                "x-localbroker-class": schema.class_name,
            }
            if schema.doc:
                message["summary"] = schema.doc.splitlines()[0]
                message["description"] = schema.doc
            if schema.json_schema is not None:
                prefix = f"{message_id}."
                for name, definition in schema.json_schema.get("$defs", {}).items():
                    schemas[f"{prefix}{name}"] = _relocate_refs(definition, prefix)
                message["payload"] = _relocate_refs(schema.json_schema, prefix)
            messages[message_id] = message
            channel_messages[message_id] = {"$ref": f"#/components/messages/{message_id}"}
        if not channel_messages:  # published untyped: any JSON object
            message_id = f"{channel_id}.untyped"
            messages[message_id] = {
                "name": message_id,
                "contentType": "application/json",
                "payload": {"type": "object"},
            }
            channel_messages[message_id] = {"$ref": f"#/components/messages/{message_id}"}
        channel: dict[str, Any] = {"address": topic, "messages": channel_messages}
        if entry.doc:
            channel["description"] = entry.doc
        channels[channel_id] = channel
        refs = [{"$ref": f"#/channels/{channel_id}/messages/{m}"} for m in channel_messages]
        for subscriber in sorted(entry.subscribers):
            operations[_component_name(f"receive.{topic}.{subscriber}")] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "summary": f"subscriber {subscriber}",
                "messages": refs,
            }
        if entry.publishers:
            operations[_component_name(f"send.{topic}")] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "summary": "published by " + ", ".join(entry.publishers),
                "messages": refs,
            }
    components: dict[str, Any] = {"messages": messages}
    if schemas:
        components["schemas"] = schemas
    return {
        "asyncapi": "3.0.0",
        "info": {"title": title, "version": version},
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": components,
    }

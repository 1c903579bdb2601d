"""Event classes by topic and version, and the upcasters that carry stored events forward.

Each broker (and each :class:`~localbroker.Router`) has its own registry: nothing here is
process-wide, so two brokers in one process (or two tests) never see each other's classes.

A topic may have several classes, one per schema version, as long as upcasters lead from
every older version to the newer ones::

    class UserCreatedV1(Event, topic="user.created"):          # version 1
        name: str

    class UserCreated(Event, topic="user.created", version=2):
        name: str
        email: str

    @broker.upcaster("user.created", from_version=1)           # payload dict -> dict, 1 -> 2
    def add_email(data: dict) -> dict:
        return {**data, "email": f"{data['name']}@unknown.invalid"}

Stored events are never rewritten: an event is upcast each time it is read, one version at a
time (1 -> 2 -> 3), into the version of the class the reader asks for (see
:meth:`EventRegistry.to_event`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from localbroker.errors import ConfigurationError, SerializationError
from localbroker.events import Event, GenericEvent, to_event
from localbroker.topics import validate_topic

__all__ = ["EventRegistry", "Upcaster"]

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
"""Turns the payload (``data``) of version ``n`` of a topic into the payload of version ``n+1``."""

U = TypeVar("U", bound=Upcaster)


def _name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


class EventRegistry:
    """The event classes of an application, by topic and version, and its upcasters.

    Example::

        registry = EventRegistry()
        registry.register(UserCreatedV1, UserCreated)
        registry.add_upcaster("user.created", 1, add_email)
        registry.check()                          # ConfigurationError: no path 1 -> 2
        event = registry.to_event(envelope, UserCreated)   # a stored v1 event, as version 2
    """

    def __init__(self) -> None:
        self._classes: dict[str, dict[int, type[Event]]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        self._subscribers: dict[type[Event], set[str]] = {}

    # -- registration ------------------------------------------------------------------------

    def register(self, *classes: type[Event], subscriber: str | None = None) -> None:
        """Add event classes (each must name its topic); ``subscriber`` takes them in a handler.

        Raises :class:`ConfigurationError` for a class without a topic, or for another class
        already registered under the same topic and version. Whether the versions of one
        topic are joined by upcasters is checked by :meth:`check` (upcasters may be
        registered after the classes).
        """
        for cls in classes:
            topic = _topic_of(cls)
            versions = self._classes.setdefault(topic, {})
            other = versions.get(cls.__version__)
            # The same class defined again (a module reloaded, a notebook cell run twice)
            # replaces itself; another class of the same version is a conflict.
            if other is not None and _name(other) != _name(cls):
                raise ConfigurationError(
                    f"two classes for version {cls.__version__} of topic {topic!r}: {_name(other)} "
                    f"and {_name(cls)}; give the newer one version={cls.__version__ + 1} and an "
                    f"upcaster from version {cls.__version__}"
                )
            versions[cls.__version__] = cls
            users = self._subscribers.setdefault(cls, set())
            if subscriber is not None:
                users.add(subscriber)

    def upcaster(self, topic: str, *, from_version: int) -> Callable[[U], U]:
        """Decorator registering an upcaster of ``topic`` from ``from_version`` to the next.

        Example::

            @registry.upcaster("user.created", from_version=1)
            def add_email(data: dict) -> dict:
                return {**data, "email": ""}
        """

        def register(fn: U) -> U:
            self.add_upcaster(topic, from_version, fn)
            return fn

        return register

    def add_upcaster(self, topic: str, from_version: int, fn: Upcaster) -> None:
        """Register ``fn`` (payload dict -> dict) from ``from_version`` to ``from_version + 1``.

        Another function already registered for the same topic and version raises
        :class:`ConfigurationError` (registering the same one again changes nothing).
        """
        validate_topic(topic)
        if not callable(fn):
            raise ConfigurationError(f"upcaster {fn!r} of {topic!r} is not callable")
        if type(from_version) is not int or from_version < 1:
            raise ConfigurationError(
                f"upcaster {_name(fn)} of {topic!r}: from_version must be an integer >= 1, "
                f"not {from_version!r}"
            )
        other = self._upcasters.get((topic, from_version))
        if other is not None and other is not fn:
            raise ConfigurationError(
                f"two upcasters of {topic!r} from version {from_version}: {_name(other)} and "
                f"{_name(fn)}"
            )
        self._upcasters[(topic, from_version)] = fn

    def merge(self, other: EventRegistry) -> None:
        """Add everything ``other`` holds (a router's classes and upcasters)."""
        for versions in other._classes.values():
            for cls in versions.values():
                self.register(cls)
        for cls, names in other._subscribers.items():
            for name in names:
                self.register(cls, subscriber=name)
        for (topic, version), fn in other._upcasters.items():
            self.add_upcaster(topic, version, fn)

    def copy(self) -> EventRegistry:
        """An independent registry holding the same (to try a registration before making it)."""
        twin = EventRegistry()
        twin.merge(self)
        return twin

    # -- what it holds -----------------------------------------------------------------------

    def __contains__(self, cls: object) -> bool:
        return cls in self._subscribers

    def topics(self) -> list[str]:
        """Topics with at least one class or upcaster, sorted."""
        return sorted({*self._classes, *(topic for topic, _ in self._upcasters)})

    def classes(self, topic: str) -> dict[int, type[Event]]:
        """The classes of ``topic`` by version (oldest first)."""
        return dict(sorted(self._classes.get(topic, {}).items()))

    def latest(self, topic: str) -> type[Event] | None:
        """The class of the newest version of ``topic``, if it has one."""
        versions = self._classes.get(topic)
        return versions[max(versions)] if versions else None

    def upcasters(self, topic: str) -> dict[int, Upcaster]:
        """The upcasters of ``topic`` by the version they start from."""
        return dict(sorted((v, fn) for (t, v), fn in self._upcasters.items() if t == topic))

    def subscribers(self, cls: type[Event]) -> set[str]:
        """Names of the subscribers whose handlers take ``cls``."""
        return set(self._subscribers.get(cls, ()))

    # -- checks ------------------------------------------------------------------------------

    def problems(self) -> Iterator[str]:
        """What :meth:`check` would refuse, one sentence each."""
        for topic, versions in sorted(self._classes.items()):
            newest = max(versions)
            missing = [v for v in range(min(versions), newest) if (topic, v) not in self._upcasters]
            if missing:
                classes = ", ".join(
                    f"{_name(c)} (version {v})" for v, c in sorted(versions.items())
                )
                yield (
                    f"topic {topic!r} has classes {classes} but no upcaster from version "
                    f"{', '.join(map(str, missing))}: register one for each, e.g. "
                    f"@broker.upcaster({topic!r}, from_version={missing[0]}) on a function "
                    "payload dict -> dict"
                )
            for version, cls in sorted(versions.items()):
                if version < newest and self._subscribers.get(cls):
                    names = ", ".join(sorted(self._subscribers[cls]))
                    yield (
                        f"subscriber {names} takes {_name(cls)} (version {version} of "
                        f"{topic!r}) but the topic has version {newest} "
                        f"({_name(versions[newest])}), which upcasters cannot turn back into "
                        f"version {version}: type the handler with the newest class"
                    )

    def check(self) -> None:
        """Raise :class:`ConfigurationError` naming every problem :meth:`problems` finds."""
        found = list(self.problems())
        if found:
            raise ConfigurationError("; ".join(found))

    def missing_upcaster(self, topic: str, from_version: int, to_version: int) -> int | None:
        """The first version on the way ``from_version`` -> ``to_version`` with no upcaster."""
        for version in range(from_version, to_version):
            if (topic, version) not in self._upcasters:
                return version
        return None

    # -- reading stored events ---------------------------------------------------------------

    def target_version(self, topic: str, cls: type[Event]) -> int | None:
        """The version an event of ``topic`` is upcast to when read as ``cls``.

        The class's own version; for :class:`GenericEvent` (untyped handlers), the newest
        version registered for the topic, or None (as stored) when it has no class.
        """
        if cls is GenericEvent or cls.__topic__ is None:
            newest = self.latest(topic)
            return newest.__version__ if newest is not None else None
        return cls.__version__

    def upcast(self, envelope: dict[str, Any], version: int) -> dict[str, Any]:
        """The envelope with its payload carried from its stored version to ``version``.

        The stored envelope is not changed (upcasters get a copy of the payload). Raises
        :class:`SerializationError` naming the event when there is no way there: an upcaster
        missing, an upcaster that fails or returns something else than a dict, or a stored
        version newer than ``version`` (upcasters only go up).
        """
        stored = _stored_version(envelope)
        if stored == version:
            return envelope
        topic = envelope["topic"]
        what = f"event {envelope.get('id')} ({topic}, version {stored})"
        if stored > version:
            raise SerializationError(
                f"{what} is newer than the version {version} it is read as; upcasters only go "
                "up: read it with the class of the newest version"
            )
        missing = self.missing_upcaster(topic, stored, version)
        if missing is not None:
            raise SerializationError(
                f"{what} cannot be read as version {version}: no upcaster of {topic!r} from "
                f"version {missing} (register one with @broker.upcaster({topic!r}, "
                f"from_version={missing}))"
            )
        data: Any = copy.deepcopy(envelope.get("data") or {})
        for step in range(stored, version):
            fn = self._upcasters[(topic, step)]
            try:
                data = fn(data)
            except Exception as exc:
                raise SerializationError(
                    f"{what}: upcaster {_name(fn)} ({step} -> {step + 1}) failed: {exc!r}"
                ) from exc
            if not isinstance(data, dict):
                raise SerializationError(
                    f"{what}: upcaster {_name(fn)} ({step} -> {step + 1}) returned "
                    f"{type(data).__name__}, not a dict"
                )
        return {**envelope, "version": version, "data": data}

    def to_event(self, envelope: dict[str, Any], cls: type[Event] | None = None) -> Event:
        """A stored envelope as an event of ``cls``, upcast to its version.

        ``cls`` None (or :class:`Event`): the newest class registered for the envelope's
        topic, else a :class:`GenericEvent`. Raises :class:`SerializationError` when the
        event cannot be upcast (see :meth:`upcast`) or does not fit the class.
        """
        if cls is None or cls is Event:
            cls = self.latest(envelope["topic"]) or GenericEvent
        version = self.target_version(envelope["topic"], cls)
        if version is not None:
            envelope = self.upcast(envelope, version)
        return to_event(envelope, cls)


def _topic_of(cls: type[Event]) -> str:
    if not (isinstance(cls, type) and issubclass(cls, Event)):
        raise ConfigurationError(f"{cls!r} is not an Event class")
    if cls.__topic__ is None:
        raise ConfigurationError(
            f'{_name(cls)} names no topic: declare it as class {cls.__name__}(Event, topic="...")'
        )
    return cls.__topic__


def _stored_version(envelope: dict[str, Any]) -> int:
    version = envelope.get("version", 1)
    if type(version) is not int or version < 1:
        raise SerializationError(
            f"event {envelope.get('id')} ({envelope.get('topic')}) has no valid version: "
            f"{version!r}"
        )
    return version

"""What a handler receives, and how it is called."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import types
import typing
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from localbroker.broker.clock import Clock
from localbroker.broker.dependencies import dependency_parameters, inject
from localbroker.errors import ConfigurationError
from localbroker.events import Event, GenericEvent
from localbroker.topics import TopicPattern

if TYPE_CHECKING:
    from localbroker.broker.broker import Broker

__all__ = ["DeliveryContext", "Handler", "HandlerSpec"]

Handler = Callable[..., Awaitable[None] | None]
"""A subscriber's handler: ``(event)`` or ``(event, context)``, ``async def`` or plain ``def``."""


@dataclasses.dataclass(slots=True)
class Delivery:
    """One event on its way to one subscriber (internal bookkeeping)."""

    offset: int
    envelope: dict[str, Any]
    key: str | None
    tries: int = 0
    budget: int = 5
    dlq_id: int | None = None
    errors: list[str] = dataclasses.field(default_factory=list)


class HandlerCall:
    """One try of a handler: the task awaiting it and its ack deadline (internal bookkeeping).

    The subscriber's ack watchdog cancels ``task`` once ``deadline`` (its clock's time) has
    passed. One object per try, so that a late ``extend()`` from the thread of an abandoned try can
    never touch the deadline of a later one.
    """

    __slots__ = ("deadline", "expired", "task")

    def __init__(self, task: asyncio.Task[None], deadline: float) -> None:
        self.task = task
        self.deadline = deadline
        """Loop time by which the handler must have returned (``inf`` until it starts)."""
        self.expired = False
        """Set by the watchdog when it cancelled ``task`` for being past the deadline."""


class DeliveryContext:
    """Second, optional parameter of a handler: the delivery's attempt and history.

    Example::

        @broker.subscriber("report.requested", name="reports", ack_timeout=5)
        async def build(event: ReportRequested, ctx: DeliveryContext) -> None:
            for chunk in chunks:
                await render(chunk)
                ctx.extend()          # still working: renew the ack timer
            await ctx.broker.publish(ReportBuilt(...))   # joins the event's chain

    ``ctx.broker`` is the broker delivering the event: handlers declared on a
    :class:`~localbroker.Router` publish through it, needing no module-level broker.
    """

    __slots__ = (
        "_ack_timeout",
        "_call",
        "_clock",
        "attempt",
        "broker",
        "envelope",
        "offset",
        "previous_errors",
        "subscriber",
    )

    def __init__(
        self,
        *,
        subscriber: str,
        offset: int,
        attempt: int,
        previous_errors: list[str],
        envelope: dict[str, Any],
        ack_timeout: float,
        call: HandlerCall,
        clock: Clock,
        broker: Broker,
    ) -> None:
        self.broker = broker
        """The broker delivering the event (to publish from a router's handler)."""
        self.subscriber = subscriber
        """Name of the subscriber the event is delivered to."""
        self.offset = offset
        """The event's position in the log."""
        self.attempt = attempt
        """1 for the first try, 2 for the first retry, ..."""
        self.previous_errors = previous_errors
        """``Type('message')`` of each earlier failed try, oldest first."""
        self.envelope = envelope
        """The envelope as stored (id, topic, time, key, version, chain ids, headers, data):
        before any upcasting."""
        self._ack_timeout = ack_timeout
        self._call = call
        self._clock = clock

    def extend(self, seconds: float | None = None) -> None:
        """Renew the ack timer: the handler gets ``seconds`` (default: ``ack_timeout``) more.

        Safe to call from a plain ``def`` handler running in a thread.
        """
        delay = self._ack_timeout if seconds is None else seconds
        # Clock.time() is safe from a thread and an attribute assignment is atomic.
        # After the try ended the call is no longer watched, and this changes nothing.
        self._call.deadline = self._clock.time() + delay


@dataclasses.dataclass(frozen=True, slots=True)
class HandlerSpec:
    """A handler and what its signature asks for.

    The annotation of the event parameter chooses the events: a class with a topic receives
    that topic only (whatever else the patterns match), a union of such classes receives
    their topics, each as its class; untyped, :class:`Event` or :class:`GenericEvent`
    receives every topic of the patterns (topics without a class of the union as
    :class:`GenericEvent`, or as the topicless class named).
    """

    fn: Handler
    call: Handler
    """What a delivery calls: ``fn``, or ``fn`` with its ``Depends`` parameters resolved."""
    event_types: tuple[type[Event], ...]
    """The event classes of the annotation (empty when untyped)."""
    by_topic: dict[str, type[Event]]
    """The class each typed topic is delivered as."""
    catch_all: type[Event] | None
    """The class of every other topic, or None when the handler takes its typed topics only."""
    wants_context: bool
    is_async: bool

    @classmethod
    def inspect(cls, fn: Handler) -> HandlerSpec:
        if not callable(fn):
            raise ConfigurationError(f"handler {fn!r} is not callable")
        name = getattr(fn, "__qualname__", fn)
        signature = list(inspect.signature(fn).parameters.values())
        dependencies = dependency_parameters(fn, signature)
        params = [
            p
            for p in signature
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in dependencies
        ]
        if not 1 <= len(params) <= 2:
            raise ConfigurationError(
                f"handler {name} must take (event) or (event, context), "
                f"not {len(params)} positional parameters"
            )
        event_types = _event_types(fn, params[0])
        by_topic: dict[str, type[Event]] = {}
        catch_all: type[Event] | None = None
        for event_type in event_types:
            topic = event_type.__topic__
            if topic is None:
                if catch_all is not None and catch_all is not event_type:
                    raise ConfigurationError(
                        f"handler {name}: {catch_all.__name__} and {event_type.__name__} "
                        "both name no topic; which one would an event be?"
                    )
                catch_all = event_type
            elif by_topic.setdefault(topic, event_type) is not event_type:
                raise ConfigurationError(
                    f"handler {name} takes {by_topic[topic].__name__} and "
                    f"{event_type.__name__}, both of topic {topic!r}: take the newest version "
                    "only (older stored events are upcast to it)"
                )
        if not event_types:
            catch_all = GenericEvent
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
        )
        return cls(
            fn=fn,
            call=inject(fn) if dependencies else fn,
            event_types=event_types,
            by_topic=by_topic,
            catch_all=GenericEvent if catch_all is Event else catch_all,
            wants_context=len(params) == 2,
            is_async=is_async,
        )

    def receives(self, patterns: tuple[str, ...]) -> tuple[str, ...]:
        """What a subscription of this handler to ``patterns`` receives, as patterns.

        ``patterns`` itself when the handler takes every topic; for a typed handler, the
        topics of its classes (those ``patterns`` match): a handler typed ``UserCreated`` on
        ``user.*`` receives ``user.created`` and nothing else. Raises
        :class:`ConfigurationError` for what could never be delivered: a class whose topic
        no pattern matches, an exact topic none of the classes has.
        """
        name = getattr(self.fn, "__qualname__", self.fn)
        compiled = [TopicPattern(p) for p in patterns]
        unmatched = [t for t in self.by_topic if not any(p.matches(t) for p in compiled)]
        if unmatched:
            raise ConfigurationError(
                f"handler {name} takes "
                + ", ".join(f"{self.by_topic[t].__name__} (topic {t!r})" for t in unmatched)
                + f" but is subscribed to {', '.join(patterns)}, which never delivers it"
            )
        if self.catch_all is not None:
            return patterns
        foreign = [p for p in compiled if p.exact and p.pattern not in self.by_topic]
        if foreign:
            raise ConfigurationError(
                f"handler {name} is subscribed to {', '.join(p.pattern for p in foreign)} but "
                f"takes only {', '.join(c.__name__ for c in self.event_types)}: add the "
                "topic's class to the annotation (a union), or leave it untyped"
            )
        return tuple(self.by_topic)

    def event_class(self, topic: str) -> type[Event] | None:
        """The class an event of ``topic`` is delivered as; None: not for this handler."""
        return self.by_topic.get(topic, self.catch_all)


def _event_types(fn: Handler, param: inspect.Parameter) -> tuple[type[Event], ...]:
    """The Event classes the annotation of ``param`` names (empty when it names none)."""
    if param.annotation is inspect.Parameter.empty:
        return ()
    try:
        annotation = typing.get_type_hints(fn).get(param.name)
    except Exception as exc:
        # Typically a class defined inside a function, named in a string annotation (or
        # under `from __future__ import annotations`): guessing "untyped" would deliver
        # every topic of the patterns to a handler written for one.
        raise ConfigurationError(
            f"handler {getattr(fn, '__qualname__', fn)}: cannot resolve the annotation "
            f"{param.annotation!r} of {param.name!r} ({exc}); define the event class at "
            "module level"
        ) from exc
    members = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else (annotation,)
    )
    found = tuple(m for m in members if isinstance(m, type) and issubclass(m, Event))
    others = [m for m in members if m not in found and m is not type(None)]
    if found and others:
        raise ConfigurationError(
            f"handler {getattr(fn, '__qualname__', fn)}: the annotation of {param.name!r} "
            f"mixes event classes with {', '.join(map(repr, others))}"
        )
    return found

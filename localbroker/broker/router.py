"""Routers: handlers, event classes and upcasters declared in a module, without a broker."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar, Unpack

from localbroker.broker.delivery import Handler, HandlerSpec
from localbroker.errors import ConfigurationError
from localbroker.events import Event
from localbroker.registry import EventRegistry, Upcaster
from localbroker.topics import TopicPattern

if TYPE_CHECKING:
    from localbroker.broker.broker import SubscribeOptions

__all__ = ["RoutedHandler", "Router"]

F = TypeVar("F", bound=Handler)
U = TypeVar("U", bound=Upcaster)


@dataclasses.dataclass(frozen=True, slots=True)
class RoutedHandler:
    """A handler declared on a router, subscribed when the router is included in a broker."""

    handler: Handler
    topics: tuple[str, ...]
    options: SubscribeOptions


class Router:
    """Subscribers, event classes and upcasters of one module, for any broker to include.

    Handlers are declared on a router instead of a module-level broker, so the same module
    serves every broker that includes it (the application's, each test's own on a temporary
    directory)::

        # users.py
        router = Router()

        @router.subscriber("user.created", name="welcome")
        async def welcome(event: UserCreated, ctx: DeliveryContext) -> None:
            await ctx.broker.publish(WelcomeSent(user_id=event.user_id))

        @router.upcaster("user.created", from_version=1)
        def add_email(data: dict) -> dict:
            return {**data, "email": ""}

        # app.py
        broker = Broker("./data")
        broker.include_router(users.router)

    A handler's problems (its signature, an annotation naming a class its patterns never
    deliver, two classes for one version) are raised where it is declared; whether the
    versions of a topic are joined by upcasters is checked when the broker starts.
    """

    def __init__(self) -> None:
        self.registry = EventRegistry()
        """The event classes and upcasters declared on this router."""
        self._handlers: list[RoutedHandler] = []

    @property
    def handlers(self) -> list[RoutedHandler]:
        """The handlers declared on this router (and on routers it includes), in order."""
        return list(self._handlers)

    def subscriber(self, *topics: str, **options: Unpack[SubscribeOptions]) -> Callable[[F], F]:
        """Decorator: :meth:`Broker.subscriber <localbroker.Broker.subscriber>`, for later."""

        def register(fn: F) -> F:
            self.subscribe(fn, *topics, **options)
            return fn

        return register

    def subscribe(
        self, handler: Handler, *topics: str, **options: Unpack[SubscribeOptions]
    ) -> None:
        """Declare ``handler`` for ``topics``; the options are those of ``Broker.subscribe``."""
        if not topics:
            raise ConfigurationError("subscribe needs at least one topic or pattern")
        for topic in topics:
            TopicPattern(topic)
        spec = HandlerSpec.inspect(handler)
        spec.receives(topics)
        self.registry.register(*(c for c in spec.event_types if c.__topic__ is not None))
        self._handlers.append(RoutedHandler(handler, tuple(topics), options))

    def upcaster(self, topic: str, *, from_version: int) -> Callable[[U], U]:
        """Decorator: :meth:`Broker.upcaster <localbroker.Broker.upcaster>`, for later."""
        return self.registry.upcaster(topic, from_version=from_version)

    def register(self, *classes: type[Event]) -> None:
        """Declare event classes this router's module publishes (see ``Broker.register``)."""
        self.registry.register(*classes)

    def include_router(self, router: Router) -> None:
        """Take over everything ``router`` declares (routers nest)."""
        trial = self.registry.copy()
        trial.merge(router.registry)  # raises before anything changes
        self.registry.merge(router.registry)
        self._handlers.extend(router._handlers)

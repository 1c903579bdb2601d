"""What a handler receives, and how it is called."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Any

from localbroker.errors import ConfigurationError
from localbroker.events import Event

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

    The subscriber's ack watchdog cancels ``task`` once ``deadline`` (loop time) has passed.
    One object per try, so that a late ``extend()`` from the thread of an abandoned try can
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
    """

    __slots__ = (
        "_ack_timeout",
        "_call",
        "_loop",
        "attempt",
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
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.subscriber = subscriber
        """Name of the subscriber the event is delivered to."""
        self.offset = offset
        """The event's position in the log."""
        self.attempt = attempt
        """1 for the first try, 2 for the first retry, ..."""
        self.previous_errors = previous_errors
        """``Type('message')`` of each earlier failed try, oldest first."""
        self.envelope = envelope
        """The stored envelope (id, topic, time, key, chain ids, headers, data)."""
        self._ack_timeout = ack_timeout
        self._call = call
        self._loop = loop

    def extend(self, seconds: float | None = None) -> None:
        """Renew the ack timer: the handler gets ``seconds`` (default: ``ack_timeout``) more.

        Safe to call from a plain ``def`` handler running in a thread.
        """
        delay = self._ack_timeout if seconds is None else seconds
        # loop.time() is monotonic and an attribute assignment is atomic: safe from a thread.
        # After the try ended the call is no longer watched, and this changes nothing.
        self._call.deadline = self._loop.time() + delay


@dataclasses.dataclass(frozen=True, slots=True)
class HandlerSpec:
    """A handler and what its signature asks for."""

    fn: Handler
    event_type: type[Event] | None
    wants_context: bool
    is_async: bool

    @classmethod
    def inspect(cls, fn: Handler) -> HandlerSpec:
        if not callable(fn):
            raise ConfigurationError(f"handler {fn!r} is not callable")
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if not 1 <= len(params) <= 2:
            raise ConfigurationError(
                f"handler {getattr(fn, '__qualname__', fn)} must take (event) or (event, context), "
                f"not {len(params)} positional parameters"
            )
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # annotations naming local classes cannot always be resolved
            hints = {}
        annotation = hints.get(params[0].name)
        event_type = (
            annotation
            if isinstance(annotation, type)
            and issubclass(annotation, Event)
            and annotation is not Event
            else None
        )
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
        )
        return cls(fn=fn, event_type=event_type, wants_context=len(params) == 2, is_async=is_async)

"""Middleware: code around publishing and around each delivery (auth, logging, tracing, metrics).

**Order.** Middleware runs in the order it was added, the first added outermost: its
``publish`` sees the events first and the results (or the exception) last, and the same for
``deliver``. With ``[auth, tracing]``: ``auth`` before ``tracing`` before the handler, and the
handler's exception reaches ``tracing`` before ``auth``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from localbroker.broker.delivery import DeliveryContext
from localbroker.events import Event, PublishResult

__all__ = ["DeliverNext", "Middleware", "PublishNext", "chain_deliver", "chain_publish"]

PublishNext = Callable[[list[Event]], Awaitable[list[PublishResult]]]
"""What a middleware's ``publish`` calls to go on: the next middleware, then the log."""
DeliverNext = Callable[[Event], Awaitable[None]]
"""What a middleware's ``deliver`` calls to go on: the next middleware, then the handler."""


class Middleware:
    """Subclass and override ``publish``, ``deliver`` or both; add with
    ``Broker(middleware=[...])`` or ``broker.add_middleware(...)``.

    Example (timing every handler, and refusing events without a tenant)::

        class Metrics(Middleware):
            async def deliver(self, event, context, call_next):
                started = time.perf_counter()
                try:
                    await call_next(event)
                except Exception:
                    failures.labels(context.subscriber).inc()
                    raise                          # the try still fails: retried, then DLQ
                finally:
                    handler_time.observe(time.perf_counter() - started)

        class RequireTenant(Middleware):
            async def publish(self, events, call_next):
                if any("tenant" not in e.headers for e in events):
                    raise PermissionError("events need a tenant header")   # nothing stored
                return await call_next(events)

    - ``publish`` wraps every append: ``publish`` and ``publish_sync`` (one event),
      ``publish_many`` (the batch, which stays all or nothing), and so events that inbound
      sync appends. The events have their ids and chain ids already; pass on modified copies
      (``event.model_copy(update={"headers": {...}})``), and return ``call_next``'s results.
      An exception stores nothing and reaches the caller.
    - ``deliver`` wraps each try of each handler, after the event was upcast to the
      handler's class; it runs in the event loop, also for plain ``def`` handlers. Whatever
      it raises is the try's failure (retried, then dead-lettered, as a handler's); it counts
      against the ack timer.
    """

    async def publish(self, events: list[Event], call_next: PublishNext) -> list[PublishResult]:
        """Around an append of ``events`` (one, or a ``publish_many`` batch)."""
        return await call_next(events)

    async def deliver(self, event: Event, context: DeliveryContext, call_next: DeliverNext) -> None:
        """Around one try of a handler on ``event``."""
        await call_next(event)


def overrides(middleware: Middleware, method: str) -> bool:
    """Whether ``middleware`` does something in ``method`` (others are left out of the chain)."""
    return getattr(type(middleware), method) is not getattr(Middleware, method)


def chain_publish(middleware: Sequence[Middleware], inner: PublishNext) -> PublishNext:
    """``inner`` wrapped in the ``publish`` of each middleware, the first outermost."""
    call = inner
    for mw in reversed(middleware):
        call = _publish_step(mw, call)
    return call


def chain_deliver(
    middleware: Sequence[Middleware], context: DeliveryContext, inner: DeliverNext
) -> DeliverNext:
    """``inner`` wrapped in the ``deliver`` of each middleware, the first outermost."""
    call = inner
    for mw in reversed(middleware):
        call = _deliver_step(mw, context, call)
    return call


def _publish_step(mw: Middleware, call_next: PublishNext) -> PublishNext:
    async def step(events: list[Event]) -> list[PublishResult]:
        return await mw.publish(events, call_next)

    return step


def _deliver_step(mw: Middleware, context: DeliveryContext, call_next: DeliverNext) -> DeliverNext:
    async def step(event: Event) -> None:
        await mw.deliver(event, context, call_next)

    return step

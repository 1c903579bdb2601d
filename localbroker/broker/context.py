"""The chain an event belongs to, carried through handlers with contextvars.

While a handler runs, :data:`current_event` holds the event being handled, so events it
publishes inherit its correlation id and take its id as their causation id.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator

__all__ = ["ChainScope", "chain_scope", "current_scope"]


@dataclasses.dataclass(frozen=True, slots=True)
class ChainScope:
    """Correlation and causation ids given to events published in this context."""

    correlation_id: str
    causation_id: str | None
    subscriber: str | None = None
    """The subscriber whose handler runs in this context (None outside handlers)."""


_scope: contextvars.ContextVar[ChainScope | None] = contextvars.ContextVar(
    "localbroker_chain", default=None
)


def current_scope() -> ChainScope | None:
    """The chain events published now belong to, if any."""
    return _scope.get()


@contextlib.contextmanager
def chain_scope(correlation_id: str, causation_id: str | None = None) -> Iterator[ChainScope]:
    """Publish events inside this block as part of an existing chain.

    For a command that is not itself published (an HTTP request id, say)::

        with chain_scope(request_id):
            await broker.publish(OrderPlaced(...))   # correlation_id == request_id
    """
    scope = ChainScope(correlation_id, causation_id)
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


def enter_handler(
    event_id: str, correlation_id: str | None, subscriber: str | None = None
) -> contextvars.Token[ChainScope | None]:
    """Make events published from now on children of ``event_id`` (used by delivery)."""
    return _scope.set(ChainScope(correlation_id or event_id, event_id, subscriber))


def leave_handler(token: contextvars.Token[ChainScope | None]) -> None:
    _scope.reset(token)

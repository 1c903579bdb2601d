"""Handler dependencies (``db = Depends(get_session)``), resolved per delivery by fast-depends.

A handler may declare parameters whose default is ``fast_depends.Depends(...)`` besides its
event and context. Each try of each delivery calls the dependencies afresh; a generator
dependency (``yield session``) is closed when the try ends, whether the handler returned,
raised or was cancelled by its ack timer. Only such handlers go through fast-depends (extra
``fastapi``); the others are called directly.
"""

from __future__ import annotations

import inspect
from typing import Any

from localbroker.errors import ConfigurationError
from localbroker.extras import require_extra

__all__ = ["dependency_parameters", "inject"]


def _is_marker(default: Any, package: str) -> bool:
    return type(default).__module__.partition(".")[0] == package


def dependency_parameters(fn: Any, params: list[inspect.Parameter]) -> list[str]:
    """The names of ``fn``'s parameters that are fast-depends dependencies.

    Raises :class:`ConfigurationError` for FastAPI's own ``Depends``, which only FastAPI's
    request handling resolves.
    """
    names = []
    for param in params:
        if _is_marker(param.default, "fastapi"):
            raise ConfigurationError(
                f"handler {getattr(fn, '__qualname__', fn)}: parameter {param.name!r} uses "
                f"fastapi.{type(param.default).__name__}, which only FastAPI's requests "
                "resolve; use "
                "fast_depends.Depends (or localbroker.integrations.fastapi.Depends)"
            )
        if _is_marker(param.default, "fast_depends"):
            names.append(param.name)
    return names


def inject(fn: Any) -> Any:
    """``fn`` with its dependencies resolved at each call (arguments passed as they are)."""
    require_extra("handler dependencies (Depends)", "fastapi", "fast_depends")
    from fast_depends import inject as fast_inject

    # cast=False: the event and context are passed as the broker made them, not revalidated.
    return fast_inject(fn, cast=False)

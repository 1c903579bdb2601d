"""Translation of redis-py errors into sync errors (at the adapter boundary)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis import exceptions as rex

from localbroker.errors import SyncError

from .errors import SyncConfigurationError, TargetUnavailableError

__all__ = ["redis_errors"]


@contextlib.contextmanager
def redis_errors(where: str) -> Iterator[None]:
    """Raise redis-py's errors as SyncConfigurationError / TargetUnavailableError / SyncError."""
    try:
        yield
    except rex.AuthenticationError as exc:  # before ConnectionError: it is a subclass
        raise SyncConfigurationError(
            f"{where}: authentication failed ({exc}); check the user and password in the URL"
        ) from exc
    except rex.ResponseError as exc:
        text = str(exc)
        if text.startswith(("WRONGTYPE", "NOPERM", "NOAUTH", "WRONGPASS")):
            hint = " (a key that is not a stream?)" if text.startswith("WRONGTYPE") else ""
            raise SyncConfigurationError(f"{where}: {text}{hint}") from exc
        raise SyncError(f"{where}: {text}") from exc
    except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
        raise TargetUnavailableError(f"{where}: {exc or type(exc).__name__}") from exc

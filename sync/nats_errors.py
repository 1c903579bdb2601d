"""Translation of nats-py errors into sync errors (at the adapter boundary)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import nats.errors
import nats.js.errors

from localbroker.errors import SyncError

from .errors import SyncConfigurationError, TargetUnavailableError

__all__ = ["nats_errors", "translate"]

#: JetStream API error codes retrying cannot fix (no permission, bad configuration).
_CONFIG_CODES = frozenset({400, 401, 403})


@contextlib.contextmanager
def nats_errors(where: str) -> Iterator[None]:
    """Raise nats-py's errors as SyncConfigurationError / TargetUnavailableError / SyncError."""
    try:
        yield
    except SyncError:
        raise
    except (nats.errors.Error, TimeoutError, OSError) as exc:
        raise translate(where, exc) from exc


def translate(where: str, exc: BaseException) -> SyncError:
    """The sync error of a nats-py error met at ``where``."""
    if isinstance(
        exc, nats.errors.AuthorizationError | nats.errors.InvalidUserCredentialsError
    ) or (
        # While connecting, nats-py raises the server's -ERR as a plain nats.errors.Error.
        "authorization violation" in str(exc).lower()
    ):
        return SyncConfigurationError(
            f"{where}: authorization failed ({exc}); check the user, password or token in the URL"
        )
    if isinstance(exc, nats.js.errors.ServiceUnavailableError):  # 503: JetStream not ready
        return TargetUnavailableError(f"{where}: {exc}")
    if isinstance(exc, nats.js.errors.APIError):
        if exc.code in _CONFIG_CODES:
            return SyncConfigurationError(f"{where}: {exc}")
        return SyncError(f"{where}: {exc}")
    if isinstance(exc, nats.js.errors.NoStreamResponseError):
        return SyncConfigurationError(
            f"{where}: no stream takes these subjects (or JetStream is not enabled on the server)"
        )
    if isinstance(exc, nats.errors.NoRespondersError):
        return SyncConfigurationError(
            f"{where}: JetStream does not answer (is the server started with -js?)"
        )
    return TargetUnavailableError(f"{where}: {str(exc) or type(exc).__name__}")

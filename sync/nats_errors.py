"""Translation of nats-py errors into sync errors (at the adapter boundary)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import nats.errors
import nats.js.errors

from localbroker.errors import SyncError

from .errors import SyncConfigurationError, TargetUnavailableError

__all__ = ["nats_errors"]

#: JetStream API error codes retrying cannot fix (no permission, bad configuration).
_CONFIG_CODES = frozenset({400, 401, 403})


@contextlib.contextmanager
def nats_errors(where: str) -> Iterator[None]:
    """Raise nats-py's errors as SyncConfigurationError / TargetUnavailableError / SyncError."""
    try:
        yield
    except SyncError:
        raise
    except (nats.errors.AuthorizationError, nats.errors.InvalidUserCredentialsError) as exc:
        raise SyncConfigurationError(
            f"{where}: authorization failed ({exc}); check the user, password or token in the URL"
        ) from exc
    except nats.js.errors.ServiceUnavailableError as exc:  # 503: JetStream not ready / down
        raise TargetUnavailableError(f"{where}: {exc}") from exc
    except nats.js.errors.APIError as exc:
        if exc.code in _CONFIG_CODES:
            raise SyncConfigurationError(f"{where}: {exc}") from exc
        raise SyncError(f"{where}: {exc}") from exc
    except nats.js.errors.NoStreamResponseError as exc:
        raise SyncConfigurationError(
            f"{where}: no stream takes these subjects (or JetStream is not enabled on the server)"
        ) from exc
    except nats.errors.NoRespondersError as exc:
        raise SyncConfigurationError(
            f"{where}: JetStream does not answer (is the server started with -js?)"
        ) from exc
    except (nats.errors.Error, TimeoutError, OSError) as exc:
        raise TargetUnavailableError(f"{where}: {str(exc) or type(exc).__name__}") from exc

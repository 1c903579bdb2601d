"""Errors of the sync targets, under :class:`~localbroker.errors.SyncError`::

    SyncError                       a sync target failed (retriable: it may pass)
    ├── TargetUnavailableError      the server cannot be reached now; retried with backoff
    └── SyncConfigurationError      bad URL, wrong credentials, a key that is not a stream, ...
                                    (also a ConfigurationError; not retriable)

Driver errors (redis-py, pymongo) are translated into these at the adapter boundary.
"""

from __future__ import annotations

from localbroker.errors import ConfigurationError, SyncError

__all__ = ["SyncConfigurationError", "TargetUnavailableError"]


class TargetUnavailableError(SyncError):
    """The server cannot be reached (refused, timed out, dropped): try again later."""

    retriable = True


class SyncConfigurationError(ConfigurationError, SyncError):
    """The target is configured wrongly; retrying cannot help until the configuration changes."""

    retriable = False

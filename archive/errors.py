"""Errors of the archive, all :class:`~localbroker.errors.ArchiveError`::

ArchiveError
├── ArchiveUnavailableError   the store cannot be reached or failed for now: S3 down, a full
│                             disk (retriable)
├── ArchiveAccessError        wrong credentials, no permission, no such bucket or directory
│                             (not retriable)
└── ArchiveChecksumError      an object's content does not match its recorded SHA-256
"""

from __future__ import annotations

from localbroker.errors import ArchiveError

__all__ = ["ArchiveAccessError", "ArchiveChecksumError", "ArchiveError", "ArchiveUnavailableError"]


class ArchiveUnavailableError(ArchiveError):
    """The store is unreachable or failed for now (S3 down, a full disk): segments stay local,
    try later."""

    retriable = True


class ArchiveAccessError(ArchiveError):
    """The credentials are wrong, lack permission, or the bucket or directory does not exist."""

    retriable = False


class ArchiveChecksumError(ArchiveError):
    """An object read from (or written to) the archive does not match its SHA-256.

    Retriable: the next download may be good, or an operator may repair the object; the bad
    bytes are never delivered.
    """

    retriable = True

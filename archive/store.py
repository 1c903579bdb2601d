"""Where the archive keeps its objects: the :class:`ObjectStore` interface, a local directory
(:class:`LocalStore`), and :func:`open_store`, the one place a store is built from configuration.

An object store holds immutable objects under keys (``shop/segments/00000000000000004711.log``).
What the archive needs of one is small: put a file and know the stored copy is intact, put and
get small objects (manifests), get an object into a file checking its SHA-256, list keys by
prefix, and clean up what an interrupted put left. :class:`~localbroker.archive.s3.S3Store`
implements it on S3 (extra ``s3``); :class:`LocalStore` on a directory, for an archive on a
mounted volume, and for tests that need no S3 server.

Example, an archive in a directory::

    from localbroker.archive import Archive, LocalStore

    broker = Broker("./data", extensions=[Archive(store=LocalStore("/mnt/archive"), prefix="shop")])
"""

from __future__ import annotations

import abc
import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from localbroker.errors import ConfigurationError
from localbroker.log.files import fsync_dir

from .errors import ArchiveAccessError, ArchiveChecksumError, ArchiveError, ArchiveUnavailableError

if TYPE_CHECKING:
    from .config import S3Location

__all__ = ["LocalStore", "ObjectStore", "open_store"]

_CHUNK = 1024 * 1024
#: Suffix of the temporary files of LocalStore (written, checked, then renamed).
_TMP_SUFFIX = ".tmp"


class ObjectStore(abc.ABC):
    """The objects of an archive: what an archive backend implements.

    Every method blocks (the archive calls them through ``asyncio.to_thread``) and raises
    :class:`~localbroker.archive.ArchiveError`: ``ArchiveAccessError`` for what retrying cannot
    fix (credentials, permissions, a missing bucket or directory), ``ArchiveUnavailableError``
    for what may pass (unreachable, a full disk), ``ArchiveChecksumError`` for content that
    does not match its SHA-256.
    """

    @abc.abstractmethod
    def describe(self, prefix: str = "") -> str:
        """Where ``prefix`` lives, for messages and status (no credentials)."""

    @abc.abstractmethod
    def check(self, prefix: str = "") -> None:
        """Check that the store exists and that ``prefix`` may be read and written."""

    @abc.abstractmethod
    def put_file(self, key: str, path: Path, sha256: str) -> None:
        """Store the file at ``path`` under ``key``; return only once the stored object is known
        to have the SHA-256 ``sha256`` (hex), else raise ``ArchiveChecksumError``.

        An interrupted put leaves nothing under ``key`` (at most a leftover that
        :meth:`abort_incomplete` removes).
        """

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store a small object (a manifest), all or nothing."""

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The content of a small object."""

    @abc.abstractmethod
    def get_file(self, key: str, dest: Path | None, sha256: str) -> None:
        """Read the object ``key``, checking its SHA-256 against ``sha256``; write it to
        ``dest`` if given. ``dest`` appears (by rename) only when the checksum matched;
        ``ArchiveChecksumError`` otherwise."""

    @abc.abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (a key prefix ending with ``/``), sorted."""

    def abort_incomplete(self, prefix: str) -> int:
        """Remove what interrupted puts under ``prefix`` left behind; how many."""
        return 0


def receive_checked(
    chunks: Iterable[bytes], dest: Path | None, sha256: str, key: str, where: str
) -> None:
    """Write the chunks of object ``key`` to ``dest`` (if given) through ``dest.tmp``, renamed
    only when their SHA-256 is ``sha256``; ArchiveChecksumError otherwise (and no file)."""
    tmp = dest.with_name(dest.name + _TMP_SUFFIX) if dest is not None else None
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") if tmp is not None else contextlib.nullcontext() as out:
            for chunk in chunks:
                digest.update(chunk)
                if out is not None:
                    out.write(chunk)
        if digest.hexdigest() != sha256:
            raise ArchiveChecksumError(
                f"{key} in {where} is corrupt: its SHA-256 is {digest.hexdigest()}, the "
                f"manifest says {sha256}; not delivered"
            )
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    if tmp is not None and dest is not None:
        os.replace(tmp, dest)


class LocalStore(ObjectStore):
    """An object store in a local directory (it must exist): object ``a/b/c`` is the file
    ``DIRECTORY/a/b/c``.

    Every object is written to a temporary file beside its place, fsynced, read back and
    checked against its SHA-256, then renamed into place (and the directory fsynced): a crash
    or a full disk leaves either the whole object or none, and a leftover temporary file that
    :meth:`abort_incomplete` removes.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def describe(self, prefix: str = "") -> str:
        return f"file://{self.directory.resolve()}/{prefix}"

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ConfigurationError(f"invalid archive key {key!r}")
        return self.directory.joinpath(*parts)

    @contextlib.contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        try:
            yield
        except ArchiveError:
            raise
        except FileNotFoundError as exc:
            raise ArchiveUnavailableError(f"{action} {self.describe()}: {exc}") from exc
        except PermissionError as exc:
            raise ArchiveAccessError(f"{action} {self.describe()}: {exc}") from exc
        except OSError as exc:
            hint = " (the disk is full)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
            raise ArchiveUnavailableError(
                f"{action} {self.describe()} failed{hint}: {exc}"
            ) from exc

    def check(self, prefix: str = "") -> None:
        if not self.directory.is_dir():
            raise ArchiveAccessError(
                f"cannot access {self.describe()}: the directory does not exist (the archive "
                "never creates it: create it, or mount the volume)"
            )
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise ArchiveAccessError(f"cannot access {self.describe()}: it is not writable")

    def _write(self, key: str, chunks: Iterator[bytes], sha256: str | None) -> str:
        """Write ``chunks`` under ``key`` through a checked temporary file; its SHA-256."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = file_sha256(tmp)  # what the disk gives back, not what was meant
            if sha256 is not None and digest != sha256:
                raise ArchiveChecksumError(
                    f"{key}: the copy written to {self.describe()} has the SHA-256 {digest}, "
                    f"the file {sha256}"
                )
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
        return digest

    def put_file(self, key: str, path: Path, sha256: str) -> None:
        with self._translate(f"cannot upload {path.name} to"), path.open("rb") as src:
            self._write(key, iter(lambda: src.read(_CHUNK), b""), sha256)

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._translate(f"cannot write {key} to"):
            self._write(key, iter([data]), None)

    def get_bytes(self, key: str) -> bytes:
        with self._translate(f"cannot read {key} from"):
            return self._path(key).read_bytes()

    def get_file(self, key: str, dest: Path | None, sha256: str) -> None:
        with self._translate(f"cannot download {key} from"), self._path(key).open("rb") as src:
            receive_checked(iter(lambda: src.read(_CHUNK), b""), dest, sha256, key, self.describe())

    def list_keys(self, prefix: str) -> list[str]:
        root = self._path(prefix.rstrip("/"))
        with self._translate(f"cannot list {prefix} in"):
            if not root.is_dir():
                return []
            return sorted(
                str(p.relative_to(self.directory).as_posix())
                for p in root.rglob("*")
                if p.is_file() and not p.name.endswith(_TMP_SUFFIX)
            )

    def abort_incomplete(self, prefix: str) -> int:
        root = self._path(prefix.rstrip("/"))
        removed = 0
        with self._translate(f"cannot clean {prefix} in"):
            if root.is_dir():
                for leftover in root.rglob(f".*{_TMP_SUFFIX}"):
                    leftover.unlink(missing_ok=True)
                    removed += 1
        return removed


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def open_store(location: S3Location) -> ObjectStore:
    """The store a configuration names: its ``directory`` (a :class:`LocalStore`), else its
    S3 ``bucket`` (an :class:`~localbroker.archive.s3.S3Store`, extra ``s3``)."""
    if location.directory is not None:
        return LocalStore(location.directory)
    if location.bucket is None:
        raise ConfigurationError(
            "the archive needs a bucket or a directory: pass bucket=... (--bucket, "
            "LOCALBROKER_ARCHIVE_BUCKET) or directory=... (--directory, "
            "LOCALBROKER_ARCHIVE_DIRECTORY)"
        )
    from localbroker.extras import require_extra

    require_extra("the S3 archive", "s3", "boto3")
    from .s3 import S3Store

    return S3Store(location)

"""Configuration of the archive: where it lives (S3 or a directory), how uploads run, what
retention keeps."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from localbroker.config import keywords
from localbroker.errors import ConfigurationError

__all__ = ["ENV_PREFIX", "ArchiveConfig", "RetentionPolicy", "S3Location", "load_archive_config"]

#: Environment variables are ``LOCALBROKER_ARCHIVE_<FIELD>`` (read only by load_archive_config).
ENV_PREFIX = "LOCALBROKER_ARCHIVE_"
MIB = 1024 * 1024


class S3Location(BaseModel):
    """Where the archive lives, an S3 bucket or a local directory: enough for the batch reader,
    which needs nothing else. The S3 options below apply to a bucket only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bucket: str | None = Field(default=None, min_length=3)
    """The S3 bucket (it must exist: the archive never creates buckets)."""
    directory: Path | None = None
    """A local directory instead of a bucket (a mounted volume; it must exist): objects are
    files under it, written through a checked temporary file and a rename (see
    :class:`~localbroker.archive.LocalStore`). Needs no ``s3`` extra."""
    prefix: str = "localbroker"
    """Key prefix of this broker's archive; keys are ``PREFIX/segments/...`` and ``PREFIX/manifests/...``."""
    endpoint_url: str | None = None
    """An S3-compatible endpoint (MinIO, moto, ...); None for AWS."""
    region: str | None = None
    """The region; None lets boto3 decide (environment, profile, ``us-east-1``)."""
    connect_timeout: float = Field(default=5.0, gt=0)
    """Seconds to wait for a connection before the store counts as unreachable."""
    read_timeout: float = Field(default=60.0, gt=0)
    """Seconds to wait for a response."""
    max_attempts: int = Field(default=3, ge=1)
    """Tries of one request by botocore (its standard retry mode) before an error surfaces."""
    multipart_threshold: int = Field(default=16 * MIB, ge=5 * MIB)
    """Segments at least this large are uploaded in parts."""
    part_size: int = Field(default=8 * MIB, ge=5 * MIB)
    """Size of one part of a multipart upload (S3's minimum is 5 MiB)."""
    max_concurrency: int = Field(default=4, ge=1)
    """Parts uploaded at once."""

    @field_validator("prefix")
    @classmethod
    def _strip_slashes(cls, value: str) -> str:
        return value.strip("/")

    @model_validator(mode="after")
    def _one_place(self) -> S3Location:
        if self.bucket is not None and self.directory is not None:
            raise ValueError("give a bucket or a directory, not both")
        return self


class RetentionPolicy(BaseModel):
    """Which local segments to delete once they are archived. Both limits apply; None = no limit.

    The active segment and any segment not yet archived are always kept.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_age: float | None = Field(default=None, gt=0)
    """Delete archived segments whose last record is older than this (seconds)."""
    max_bytes: int | None = Field(default=None, ge=0)
    """Delete the oldest archived segments while the local log is larger than this."""


class ArchiveConfig(S3Location):
    """Configuration of :class:`~localbroker.archive.Archive`.

    Example::

        Archive(bucket="events", prefix="shop", retention=RetentionPolicy(max_bytes=10 * 2**30))
        Archive(directory="/mnt/archive", prefix="shop")
    """

    retention: RetentionPolicy = RetentionPolicy()
    """What to delete locally once archived (default: keep everything)."""
    upload_interval: float = Field(default=5.0, gt=0)
    """Seconds between looks for newly sealed segments (and retries after a failure)."""
    cache_dir: Path | None = None
    """Where segments downloaded for replay are kept; None = ``DATA/archive-cache``."""
    cache_bytes: int = Field(default=512 * MIB, ge=0)
    """Upper bound of the download cache (least recently used segments are evicted first)."""


def load_archive_config(
    environ: Mapping[str, str] | None = None, *, need_location: bool = True, **options: Any
) -> ArchiveConfig:
    """Build an :class:`ArchiveConfig` from keywords and ``LOCALBROKER_ARCHIVE_*`` variables.

    Keywords win over the environment; a None is kept for the options that take it
    (``max_age=None``) and means "not given" for the others. Raises :class:`ConfigurationError`
    naming the bad option, or the missing bucket or directory (unless ``need_location`` is
    false: the caller brings its own store).
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name in ArchiveConfig.model_fields:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = _json(name, raw) if name == "retention" else raw
    values.update(keywords(ArchiveConfig, options))
    if need_location and "bucket" not in values and "directory" not in values:
        raise ConfigurationError(
            f"the archive needs a bucket or a directory: pass bucket=... (--bucket) or set "
            f"{ENV_PREFIX}BUCKET, or pass directory=... (--directory) or set "
            f"{ENV_PREFIX}DIRECTORY"
        )
    try:
        return ArchiveConfig.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigurationError(f"invalid archive configuration: {problems}") from None


def _json(name: str, raw: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigurationError(
            f"{ENV_PREFIX}{name.upper()} must be JSON, e.g. '{{\"max_bytes\": 1073741824}}': {exc}"
        ) from None

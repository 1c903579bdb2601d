"""The S3 object store: verified (multipart) uploads, verified downloads; boto3 errors translated.

Everything here is blocking (boto3 is synchronous): the archive calls it through
``asyncio.to_thread``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from s3transfer.utils import ChunksizeAdjuster

from .config import S3Location
from .errors import (
    ArchiveAccessError,
    ArchiveChecksumError,
    ArchiveError,
    ArchiveUnavailableError,
)
from .manifest import file_digests
from .objects import LIST_THREADS
from .store import ObjectStore, receive_checked

__all__ = ["S3Store"]

logger = logging.getLogger("localbroker.archive")

_ACCESS_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "NoSuchBucket",
        "InvalidBucketName",
        "AllAccessDisabled",
        "403",
        "404",
    }
)
_DOWNLOAD_CHUNK = 1024 * 1024


class S3Store(ObjectStore):
    """A bucket of S3 or of an S3-compatible store (MinIO, moto, ...).

    Uploads carry a SHA-256 checksum that S3 checks and keeps; a file of ``multipart_threshold``
    bytes or more goes up in parts (S3 then keeps a checksum of the parts' checksums, which is
    compared with the local file's). A store that keeps no checksums is read back instead.
    """

    def __init__(self, location: S3Location) -> None:
        if location.bucket is None:
            raise ArchiveAccessError("S3Store needs a bucket")
        self.location = location
        self.bucket = location.bucket
        self.transfer = TransferConfig(
            multipart_threshold=location.multipart_threshold,
            multipart_chunksize=location.part_size,
            max_concurrency=location.max_concurrency,
        )
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=location.endpoint_url,
            region_name=location.region,
            config=Config(
                connect_timeout=location.connect_timeout,
                read_timeout=location.read_timeout,
                retries={"max_attempts": location.max_attempts, "mode": "standard"},
                max_pool_connections=max(LIST_THREADS, location.max_concurrency) + 2,
            ),
        )
        """The boto3 client (exposed for instrumentation, e.g. botocore event hooks)."""

    def describe(self, prefix: str = "") -> str:
        where = f" at {self.location.endpoint_url}" if self.location.endpoint_url else ""
        return f"s3://{self.bucket}/{prefix}{where}"

    @contextlib.contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        """Turn boto3/botocore errors into archive errors naming the action and the location."""
        try:
            yield
        except ArchiveError:
            raise
        except botocore.exceptions.NoCredentialsError as exc:
            raise ArchiveAccessError(
                f"{action} {self.describe()}: no AWS credentials found "
                "(set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)"
            ) from exc
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _ACCESS_CODES:
                hint = (
                    "the bucket does not exist"
                    if code in {"NoSuchBucket", "404", "InvalidBucketName"}
                    else "check the credentials and their permissions"
                )
                raise ArchiveAccessError(f"{action} {self.describe()}: {code}: {hint}") from exc
            raise ArchiveUnavailableError(f"{action} {self.describe()} failed: {exc}") from exc
        except (botocore.exceptions.BotoCoreError, boto3.exceptions.Boto3Error, OSError) as exc:
            raise ArchiveUnavailableError(f"{action} {self.describe()} failed: {exc}") from exc

    # -- checks -----------------------------------------------------------------------------

    def check(self, prefix: str = "") -> None:
        """Check that the bucket exists and the credentials may use it (and ``prefix``).

        Raises :class:`ArchiveAccessError` (wrong credentials, missing bucket) or
        :class:`ArchiveUnavailableError` (unreachable).
        """
        with self._translate("cannot access"):
            self.client.head_bucket(Bucket=self.bucket)
            # head_bucket needs no object permission: list the prefix too.
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)

    def abort_incomplete(self, prefix: str) -> int:
        """Abort multipart uploads under ``prefix`` left over by an interrupted upload."""
        aborted = 0
        with self._translate("cannot list the multipart uploads of"):
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for upload in page.get("Uploads", []):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    logger.info("aborted an interrupted upload of %s", upload["Key"])
                    aborted += 1
        return aborted

    # -- objects ---------------------------------------------------------------------------

    def list_keys(self, prefix: str) -> list[str]:
        with self._translate(f"cannot list {prefix} in"):
            keys: list[str] = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(keys)

    def get_bytes(self, key: str) -> bytes:
        with self._translate(f"cannot read {key} from"):
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def put_bytes(self, key: str, data: bytes) -> None:
        content_type = "application/json" if key.endswith(".json") else "application/octet-stream"
        with self._translate(f"cannot write {key} to"):
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                ChecksumAlgorithm="SHA256",
            )

    def put_file(self, key: str, path: Path, sha256: str) -> None:
        size = path.stat().st_size
        multipart = size >= self.location.multipart_threshold
        parts: list[bytes] | None = None
        if multipart:
            part_size = ChunksizeAdjuster().adjust_chunksize(self.location.part_size, size)
            whole, parts = file_digests(path, max(part_size, 1))
            if whole != sha256:
                raise ArchiveChecksumError(
                    f"{path} changed while it was archived: its SHA-256 is {whole}, not {sha256}"
                )
        with self._translate(f"cannot upload {path.name} to"):
            self.client.upload_file(
                str(path),
                self.bucket,
                key,
                Config=self.transfer,
                ExtraArgs={"ChecksumAlgorithm": "SHA256", "Metadata": {"sha256": sha256}},
            )
            self._verify_upload(key, size, sha256, parts)

    def _verify_upload(self, key: str, size: int, sha256: str, parts: list[bytes] | None) -> None:
        """Compare what S3 stored with the local file (its checksum, else a download)."""
        head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        if head["ContentLength"] != size:
            raise ArchiveChecksumError(
                f"{key}: S3 holds {head['ContentLength']} bytes, the file has {size}"
            )
        stored = head.get("ChecksumSHA256")
        if stored is None:
            # A store that keeps no checksums: read the object back.
            self.get_file(key, None, sha256)
            return
        if parts is None:
            expected = base64.b64encode(bytes.fromhex(sha256)).decode()
        else:
            expected = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
        if stored.split("-")[0] != expected:
            raise ArchiveChecksumError(
                f"{key}: S3's SHA-256 {stored} does not match the file's {expected}"
            )

    # -- download ---------------------------------------------------------------------------

    def get_file(self, key: str, dest: Path | None, sha256: str) -> None:
        with self._translate(f"cannot download {key} from"):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            receive_checked(body.iter_chunks(_DOWNLOAD_CHUNK), dest, sha256, key, self.describe())

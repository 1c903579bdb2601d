"""The S3 adapter: verified uploads, verified downloads, manifests; boto3 errors translated.

Everything here is blocking (boto3 is synchronous): the archive calls it through
``asyncio.to_thread``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
from .manifest import Manifest, build_manifest, file_digests, manifest_key

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
#: Manifests read at once when listing the archive.
_LIST_THREADS = 8


class S3Store:
    """One archive location (bucket + prefix) in S3 or an S3-compatible store."""

    def __init__(self, location: S3Location) -> None:
        self.location = location
        self.bucket = location.bucket
        self.prefix = location.prefix
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
                max_pool_connections=max(_LIST_THREADS, location.max_concurrency) + 2,
            ),
        )
        """The boto3 client (exposed for instrumentation, e.g. botocore event hooks)."""

    def describe(self) -> str:
        where = f" at {self.location.endpoint_url}" if self.location.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"

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

    def check(self) -> None:
        """Check that the bucket exists and the credentials may use it.

        Raises :class:`ArchiveAccessError` (wrong credentials, missing bucket) or
        :class:`ArchiveUnavailableError` (unreachable).
        """
        with self._translate("cannot access"):
            self.client.head_bucket(Bucket=self.bucket)
            # head_bucket needs no object permission: list the prefix too.
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix + "/", MaxKeys=1)

    def abort_stale_uploads(self) -> int:
        """Abort multipart uploads of segments left over by an interrupted upload."""
        aborted = 0
        with self._translate("cannot list the multipart uploads of"):
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/segments/"):
                for upload in page.get("Uploads", []):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    logger.info("aborted an interrupted upload of %s", upload["Key"])
                    aborted += 1
        return aborted

    # -- manifests --------------------------------------------------------------------------

    def list_manifests(self) -> list[Manifest]:
        """Every manifest under the prefix, by base offset."""
        with self._translate("cannot list the manifests of"):
            keys: list[str] = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/manifests/"):
                keys.extend(
                    o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".json")
                )
        if not keys:
            return []
        with ThreadPoolExecutor(max_workers=min(_LIST_THREADS, len(keys))) as pool:
            manifests = list(pool.map(self.get_manifest, keys))
        return sorted(manifests, key=lambda m: m.base_offset)

    def get_manifest(self, key: str) -> Manifest:
        """Read one manifest."""
        with self._translate(f"cannot read {key} from"):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        try:
            return Manifest.model_validate_json(body)
        except ValueError as exc:
            raise ArchiveChecksumError(
                f"manifest {key} in {self.describe()} is invalid: {exc}"
            ) from exc

    # -- upload -----------------------------------------------------------------------------

    def upload_segment(self, path: Path) -> Manifest:
        """Upload a sealed segment file, verify it, then write its manifest; return the manifest.

        The segment counts as archived only once this returns. If it fails part way, S3 holds
        at most an unverified segment object with no manifest (a multipart upload that failed
        is aborted, or aborted later by :meth:`abort_stale_uploads`), which readers ignore and
        the next try overwrites.
        """
        size = path.stat().st_size
        multipart = size >= self.location.multipart_threshold
        part_size = (
            ChunksizeAdjuster().adjust_chunksize(self.location.part_size, size)
            if multipart
            else size
        )
        sha256, parts = file_digests(path, max(part_size, 1))
        manifest = build_manifest(path, self.prefix, sha256)
        with self._translate(f"cannot upload {path.name} to"):
            self.client.upload_file(
                str(path),
                self.bucket,
                manifest.key,
                Config=self.transfer,
                ExtraArgs={"ChecksumAlgorithm": "SHA256", "Metadata": {"sha256": sha256}},
            )
            self._verify_upload(manifest, parts if multipart else None)
            manifest = manifest.model_copy(update={"uploaded_at": time.time()})
            self.client.put_object(
                Bucket=self.bucket,
                Key=manifest_key(self.prefix, manifest.base_offset),
                Body=manifest.to_json(),
                ContentType="application/json",
                ChecksumAlgorithm="SHA256",
            )
        return manifest

    def _verify_upload(self, manifest: Manifest, parts: list[bytes] | None) -> None:
        """Compare what S3 stored with the local file (its checksum, else a download)."""
        head = self.client.head_object(Bucket=self.bucket, Key=manifest.key, ChecksumMode="ENABLED")
        if head["ContentLength"] != manifest.size_bytes:
            raise ArchiveChecksumError(
                f"{manifest.key}: S3 holds {head['ContentLength']} bytes, the segment has "
                f"{manifest.size_bytes}"
            )
        stored = head.get("ChecksumSHA256")
        if stored is None:
            # A store that keeps no checksums: read the object back.
            self.download(manifest, None)
            return
        if parts is None:
            expected = base64.b64encode(bytes.fromhex(manifest.sha256)).decode()
        else:
            expected = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
        if stored.split("-")[0] != expected:
            raise ArchiveChecksumError(
                f"{manifest.key}: S3's SHA-256 {stored} does not match the segment's {expected}"
            )

    # -- download ---------------------------------------------------------------------------

    def download(self, manifest: Manifest, dest: Path | None) -> None:
        """GET a segment object, checking its SHA-256; write it to ``dest`` (if given).

        The file appears under ``dest`` (by rename) only when the checksum matched; raises
        :class:`ArchiveChecksumError` otherwise.
        """
        tmp = dest.with_name(dest.name + ".tmp") if dest is not None else None
        digest = hashlib.sha256()
        with self._translate(f"cannot download {manifest.key} from"):
            body = self.client.get_object(Bucket=self.bucket, Key=manifest.key)["Body"]
            with open(tmp, "wb") if tmp is not None else contextlib.nullcontext() as out:
                for chunk in body.iter_chunks(_DOWNLOAD_CHUNK):
                    digest.update(chunk)
                    if out is not None:
                        out.write(chunk)
        if digest.hexdigest() != manifest.sha256:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise ArchiveChecksumError(
                f"{manifest.key} in {self.describe()} is corrupt: its SHA-256 is "
                f"{digest.hexdigest()}, the manifest says {manifest.sha256}; not delivered"
            )
        if tmp is not None and dest is not None:
            os.replace(tmp, dest)

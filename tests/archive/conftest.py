"""Fixtures of the archive tests: the archive in a local directory and in moto's S3 (server
mode, a fresh bucket per test).

``archive_config`` runs a test against both stores (the S3 one marked ``s3``); tests of what
only S3 does (multipart, checksums kept by S3, credentials, the server going away) take
``s3_config``. ``objects`` reads and tampers with what the archive holds through the store
itself, so one test body serves both.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from localbroker.archive import ArchiveConfig, ObjectStore, open_store
from tests.servers.s3 import DUMMY_CREDENTIALS, S3Server

_buckets = itertools.count()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in DUMMY_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def s3(s3_server: S3Server, _aws_credentials: None) -> Iterator[Any]:
    """A boto3 client of the test's own, to look at (and tamper with) the bucket."""
    yield boto3.client(
        "s3",
        endpoint_url=s3_server.url,
        aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    s3_server.start()  # a test that stopped the server leaves it running for the next


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"archive-test-{next(_buckets)}"
    s3.create_bucket(Bucket=name)
    return name


#: A long interval: tests call run_once.
_COMMON = {"prefix": "shop", "upload_interval": 3600}


@pytest.fixture
def s3_config(s3_server: S3Server, bucket: str, tmp_path: Path) -> ArchiveConfig:
    """The archive in moto's S3; fast failure (one try, short timeouts)."""
    return ArchiveConfig(
        bucket=bucket,
        endpoint_url=s3_server.url,
        connect_timeout=1,
        read_timeout=10,
        max_attempts=1,
        cache_dir=tmp_path / "cache",
        **_COMMON,
    )


@pytest.fixture
def local_config(tmp_path: Path) -> ArchiveConfig:
    """The archive in a local directory."""
    (tmp_path / "archive").mkdir()
    return ArchiveConfig(directory=tmp_path / "archive", cache_dir=tmp_path / "cache", **_COMMON)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def archive_config(request: pytest.FixtureRequest) -> ArchiveConfig:
    """The archive in each store."""
    config: ArchiveConfig = request.getfixturevalue(f"{request.param}_config")
    return config


@pytest.fixture
def objects(archive_config: ArchiveConfig) -> ObjectStore:
    """The store of ``archive_config``, to look at (and tamper with) what the archive holds."""
    return open_store(archive_config)

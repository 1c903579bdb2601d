"""Fixtures for the commit log tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from localbroker.log import CommitLog


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "log"


@pytest.fixture
def open_log(log_dir: Path) -> Iterator[Callable[..., CommitLog]]:
    """Open logs on ``log_dir`` and close them all at teardown."""
    opened: list[CommitLog] = []

    def factory(**kwargs: object) -> CommitLog:
        log = CommitLog(log_dir, **kwargs).open()  # type: ignore[arg-type]
        opened.append(log)
        return log

    yield factory
    for log in opened:
        log.close()

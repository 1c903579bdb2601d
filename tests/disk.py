"""A real full disk for tests: a small tmpfs mounted by the test itself (needs root)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI

__all__ = ["fill_until", "free_bytes", "small_tmpfs"]


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` on ``path`` (created if missing) and unmount it afterwards.

    Mounting needs root: where it is impossible the test is skipped, except in CI, where it
    fails (CI must run it).
    """
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        message = f"cannot mount a tmpfs on {path}: {mounted.stderr.strip()} (needs root)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield path
    finally:
        # Lazy: a descriptor a failed test left open must not keep the mount (and the test) alive.
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged write can still use on the filesystem holding ``path``."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def fill_until(path: Path, free: int) -> Path:
    """Write a filler file into directory ``path`` so that about ``free`` bytes stay free.

    Returns the filler; deleting it gives the space back.
    """
    filler = path / "filler"
    with filler.open("ab") as f:
        f.write(b"\0" * max(0, free_bytes(path) - free))
    return filler

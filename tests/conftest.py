"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_binary(path: str | None, what: str) -> str:
    """A server binary the test needs: missing is a failure in CI and a skip elsewhere."""
    if path and os.path.exists(path):
        return path
    message = f"{what} not found; run .ci/run or install it (see README)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)

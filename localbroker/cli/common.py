"""Pieces every CLI command module shares: the ``--data`` option, running async commands."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from localbroker.errors import LocalBrokerError

__all__ = ["data_option", "fmt_time", "given", "run"]

F = TypeVar("F", bound=Callable[..., Any])


def given(**options: Any) -> dict[str, Any]:
    """The options given on the command line (click passes None for the others), so that the
    environment still applies to those left out (a None keyword would mean the value None)."""
    return {k: v for k, v in options.items() if v is not None}


def data_option(fn: F) -> F:
    """``--data DIR``: the data directory (env LOCALBROKER_DATA_DIR)."""
    return click.option(
        "--data",
        "data",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="LOCALBROKER_DATA_DIR",
        required=True,
        help="Data directory of the broker (env LOCALBROKER_DATA_DIR).",
    )(fn)


def run(coro_fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async command; turn localbroker errors into a clean message and exit code 1."""

    @functools.wraps(coro_fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            asyncio.run(coro_fn(*args, **kwargs))
        except LocalBrokerError as exc:
            raise click.ClickException(str(exc)) from exc
        except KeyboardInterrupt:
            pass

    return wrapper


def fmt_time(seconds: float | None) -> str:
    """A Unix time as ``YYYY-MM-DD HH:MM:SS`` (UTC), or ``-``."""
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")

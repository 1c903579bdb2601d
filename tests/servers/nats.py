"""A private ``nats-server`` with JetStream on a free port, which a test can kill -9 and start
again on the same port and store directory.

JetStream's file store writes every message to its block file before acknowledging it, so a
kill -9 of the process (not of the machine) loses nothing acknowledged: the page cache keeps
the writes. nats-server 2.9 fsyncs its store only every two minutes (``sync_interval`` and
``sync: always`` come with 2.10), which matters for a power cut, not for these tests.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.servers.ports import free_port, wait_port

__all__ = ["NatsServer"]


class NatsServer:
    """``nats-server -js`` on 127.0.0.1:``port`` with its store in ``directory``."""

    def __init__(
        self, binary: str, directory: Path, port: int | None = None, *, args: tuple[str, ...] = ()
    ) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port or free_port()
        self.args = args
        """More ``nats-server`` options (e.g. ``--user``/``--pass``)."""
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def binary_path(cls) -> str | None:
        return shutil.which("nats-server") or (
            "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
        )

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.binary,
                "-a", "127.0.0.1",
                "-p", str(self.port),
                "-js",
                "-sd", str(self.directory),
                "-l", str(self.directory / "nats-server.log"),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(self.port, up=True)

    def stop(self) -> None:
        """Stop the server (SIGTERM: a clean shutdown)."""
        self._end(kill=False)

    def kill(self) -> None:
        """SIGKILL the server, as a crash or the OOM killer would; :meth:`start` then
        recovers the same store."""
        self._end(kill=True)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _end(self, *, kill: bool) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=30)
        self.process = None
        wait_port(self.port, up=False)

"""A private ``nats-server`` with JetStream on a free port (see
:class:`~tests.servers.process.ServerProcess`).

JetStream's file store writes every message to its block file before acknowledging it, so a
kill -9 of the process (not of the machine) loses nothing acknowledged: the page cache keeps
the writes. nats-server 2.9 fsyncs its store only every two minutes (``sync_interval`` and
``sync: always`` come with 2.10), which matters for a power cut, not for these tests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.servers.process import ServerProcess

__all__ = ["NatsServer"]


class NatsServer(ServerProcess):
    """``nats-server -js`` on 127.0.0.1:``port`` with its store in ``directory``."""

    @classmethod
    def binary_path(cls) -> str | None:
        # Debian installs it in /usr/sbin, which is not on every PATH.
        return shutil.which("nats-server") or (
            "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
        )

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            self.binary,
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "-js",
            "-sd", str(self.directory),
            *self.args,
        ]  # fmt: skip

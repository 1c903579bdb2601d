"""A private ``redis-server`` on a free port (see :class:`~tests.servers.process.ServerProcess`).

It keeps its data in an append-only file fsynced before every reply (``appendfsync always``),
so a restart, even after a SIGKILL, keeps every write Redis acknowledged, as a production
server with durability switched on would.
"""

from __future__ import annotations

import shutil

from tests.servers.process import ServerProcess

__all__ = ["NO_FSYNC", "RedisServer"]

#: Options of a server that fsyncs its append-only file only when the OS likes (benchmarks:
#: the figures in the README were measured so; later options win over earlier ones).
NO_FSYNC = ("--appendfsync", "no")


class RedisServer(ServerProcess):
    """``redis-server`` on 127.0.0.1:``port`` with its files in ``directory``."""

    @classmethod
    def binary_path(cls) -> str | None:
        return shutil.which("redis-server") or shutil.which("/usr/bin/redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--loglevel", "warning",
            *self.args,
        ]  # fmt: skip

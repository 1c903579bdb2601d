"""A private PostgreSQL server (Debian's ``postgresql-15`` binaries) on a free port (see
:class:`~tests.servers.process.ServerProcess`).

``initdb`` makes a cluster in ``directory/data`` once; ``postgres`` then runs in the foreground
with its socket in ``directory``, ``fsync`` and ``synchronous_commit`` at their defaults (on), so
a restart after a SIGKILL replays the WAL and keeps every committed transaction. PostgreSQL
refuses to run as root: as root, the server runs as the ``postgres`` user, and ``directory``
must be one that user can reach (not under pytest's 0700 ``/tmp/pytest-of-root``).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import time
from typing import ClassVar

from tests.servers.process import ServerProcess

__all__ = ["PostgresServer"]

_USER = "postgres"


class PostgresServer(ServerProcess):
    """``postgres`` on 127.0.0.1:``port`` with its cluster in ``directory/data``."""

    #: SIGTERM would wait for the clients to disconnect; SIGINT is the "fast" shutdown.
    stop_signal: ClassVar[int] = signal.SIGINT

    @classmethod
    def binary_path(cls) -> str | None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=_major)
        return found[-1] if found else shutil.which("postgres")

    @property
    def url(self) -> str:
        return f"postgresql://{_USER}@127.0.0.1:{self.port}/postgres"

    def _tool(self, name: str) -> str:
        return os.path.join(os.path.dirname(self.binary), name)

    def popen_options(self) -> dict[str, object]:
        return {"user": _USER, "group": _USER} if os.geteuid() == 0 else {}

    def prepare(self) -> None:
        super().prepare()
        data = self.directory / "data"
        if data.exists():
            return
        if os.geteuid() == 0:
            shutil.chown(self.directory, _USER, _USER)
        subprocess.run(
            [self._tool("initdb"), "-D", str(data), "-A", "trust", "-U", _USER,
             "-E", "UTF8", "--locale=C", "--no-sync"],
            check=True, capture_output=True, **self.popen_options(),  # type: ignore[call-overload]
        )  # fmt: skip

    def command(self) -> list[str]:
        return [
            self.binary,
            "-D", str(self.directory / "data"),
            "-p", str(self.port),
            "-k", str(self.directory),
            "-c", "listen_addresses=127.0.0.1",
            *self.args,
        ]  # fmt: skip

    def start(self) -> None:
        super().start()
        # The port opens before recovery (after a SIGKILL, the WAL replay) is done.
        deadline = time.monotonic() + self.start_timeout
        while True:
            ready = subprocess.run(
                [self._tool("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                check=False,
            )
            if ready.returncode == 0:
                return
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"postgres on port {self.port} not ready after recovery")
            time.sleep(0.05)


def _major(path: str) -> int:
    version = path.split("/")[-3]
    return int(version) if version.isdigit() else 0

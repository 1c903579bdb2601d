"""A server started as a child process for tests and benchmarks: one shape for every kind.

Each server listens on 127.0.0.1 on a free port with its data in a directory of its own, so a
test can stop it (an outage), SIGKILL it (a crash) and start it again on the same port and
data. Subclasses say how to find the binary, how to prepare the directory and the command line.
"""

from __future__ import annotations

import abc
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import ClassVar

from tests.servers.ports import free_port, wait_port

__all__ = ["ServerProcess"]


class ServerProcess(abc.ABC):
    """A server binary on 127.0.0.1:``port`` with its files in ``directory``.

    ``start()`` waits until the port accepts connections; ``stop()`` is a clean shutdown
    (SIGTERM); ``kill()`` is a crash (SIGKILL of the server and every process it started, as
    the OOM killer or a power cut would end them: no shutdown, no flush); ``restart()`` is a
    ``stop()`` then a ``start()`` on the same port and data.
    """

    #: Seconds ``start()`` waits for the port (mongod and postgres recover a journal first).
    start_timeout: ClassVar[float] = 30.0
    #: The signal of a clean shutdown (postgres: SIGINT, since SIGTERM waits for the clients).
    stop_signal: ClassVar[int] = signal.SIGTERM

    def __init__(
        self, binary: str, directory: Path, port: int | None = None, *, args: tuple[str, ...] = ()
    ) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port or free_port()
        self.args = args
        """More options for the server's command line."""
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    @abc.abstractmethod
    def binary_path(cls) -> str | None:
        """The server binary on this machine, or None."""

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """What a client connects to."""

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The command line of the server (in the foreground)."""

    def prepare(self) -> None:
        """Make the data directory (once; a restart keeps what is there)."""
        self.directory.mkdir(parents=True, exist_ok=True)

    def popen_options(self) -> dict[str, object]:
        """More keyword arguments for ``subprocess.Popen`` (e.g. another user)."""
        return {}

    @property
    def running(self) -> bool:
        return self.process is not None

    @property
    def output(self) -> Path:
        """The server's stdout and stderr (appended to across restarts)."""
        return self.directory / "server.out"

    def start(self) -> None:
        self.prepare()
        with self.output.open("ab") as out:
            # Its own session: kill() reaches the server's children too (postgres forks one
            # per connection), and a Ctrl-C of the test run does not reach the server first.
            self.process = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self.popen_options(),  # type: ignore[call-overload]  # Popen's own keywords
            )
        try:
            wait_port(self.port, up=True, timeout=self.start_timeout, process=self.process)
        except BaseException as exc:
            self.kill()
            tail = self.output.read_bytes()[-2000:].decode(errors="replace")
            raise RuntimeError(f"{self.command()[0]} did not start: {exc}\n{tail}") from exc

    def stop(self) -> None:
        """A clean shutdown, waiting until the server has exited and its port is closed."""
        if self.process is None:
            return
        self.process.send_signal(self.stop_signal)
        self._reap()

    def kill(self) -> None:
        """SIGKILL the server and its children: a crash; ``start()`` then recovers the data."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._reap()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _reap(self) -> None:
        assert self.process is not None
        self.process.wait(timeout=60)
        # Wait for the last process of the group too, so that a restart does not find one
        # still holding the port, a lock file or shared memory.
        group = self.process.pid
        self.process = None
        deadline = time.monotonic() + 30
        while True:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"processes of group {group} alive 30 s after the server")
            time.sleep(0.01)
        wait_port(self.port, up=False)

"""Free ports and waiting for a server to listen (or stop listening) on one."""

from __future__ import annotations

import socket
import subprocess
import time

__all__ = ["free_port", "wait_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(
    port: int,
    up: bool,
    timeout: float = 10.0,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Wait until ``port`` accepts connections (``up``) or refuses them; with ``process``, fail
    at once when it exits before the port is up (a server that cannot start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if up:
                    return
        except OSError:
            if not up:
                return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        time.sleep(0.02)
    raise TimeoutError(f"server on port {port} did not come {'up' if up else 'down'}")

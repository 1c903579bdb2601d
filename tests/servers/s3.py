"""moto's S3 in server mode: a real HTTP endpoint on a free port, private to the test run."""

from __future__ import annotations

import socket
import urllib.request

from moto.server import ThreadedMotoServer

__all__ = ["DUMMY_CREDENTIALS", "S3Server"]

#: moto accepts any credentials (until its auth check is switched on with require_auth).
DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class S3Server:
    """A ThreadedMotoServer on 127.0.0.1 that can be stopped and started again on its port.

    moto keeps its data in process-wide backends, so a restart on the same port finds the
    buckets and objects of before, as a real S3 does after an outage.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: ThreadedMotoServer | None = None

    def start(self) -> None:
        if self._server is None:
            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def require_auth(self, enabled: bool) -> None:
        """Switch moto's credential check on (every key is then unknown) or off."""
        request = urllib.request.Request(
            f"{self.url}/moto-api/reset-auth",
            data=b"0" if enabled else b"inf",
            headers={"Content-Type": "text/plain"},  # a form body would hide the number
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

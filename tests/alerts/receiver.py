"""A webhook receiver for the alert tests: a tiny HTTP server in a thread, on a free port.

It records every request and answers 200, or what the test told it to (``answer(500, 503)``
answers the next two requests so), or holds requests without answering (``hang()``) until
it is stopped.
"""

from __future__ import annotations

import collections
import dataclasses
import http.server
import json
import threading
from typing import Any

from tests.servers.ports import free_port

__all__ = ["Receiver", "Request"]


@dataclasses.dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int | None
    """What it was answered (None: held, never answered)."""


class Receiver:
    """Records POSTs to ``url``; answers 200 unless told otherwise."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/services/T000/B000/secret-token"
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._answers: collections.deque[int] = collections.deque()
        self._hang = False
        self._released = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver._lock:
                    hang = receiver._hang
                    status = None if hang else (receiver._answers or [200])[0]
                    if receiver._answers and not hang:
                        receiver._answers.popleft()
                    receiver._requests.append(Request(self.path, dict(self.headers), body, status))
                if status is None:
                    receiver._released.wait()
                    return
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"no")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # not on the test's stderr

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def answer(self, *statuses: int) -> None:
        """Answer the next requests with these statuses (then 200 again)."""
        with self._lock:
            self._answers.extend(statuses)

    def hang(self) -> None:
        """Hold every request from now on without answering (until stopped)."""
        with self._lock:
            self._hang = True

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def delivered(self) -> list[dict[str, Any]]:
        """Bodies of the requests answered with a 2xx, in order."""
        return [r.body for r in self.requests if r.status is not None and r.status < 300]

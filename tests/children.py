"""Child processes for the several-processes tests: output to a file, SIGKILL at will."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

ROOT = Path(__file__).parents[1]


class Child:
    """``python -m MODULE ARGS...`` run from the repository; its stdout goes to ``out``.

    It is named after the file (``out.stem``) in the tests' messages.
    """

    def __init__(self, out: Path, module: str, *args: str) -> None:
        self.name = out.stem
        self.out = out
        self._file: IO[bytes] = out.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args], cwd=ROOT, stdout=self._file
        )

    def lines(self) -> list[list[str]]:
        """Complete lines, split (a line cut by SIGKILL has no newline: it does not count)."""
        return [line.split() for line in self.out.read_bytes().decode().split("\n")[:-1]]

    def finish(self, timeout: float = 180.0) -> int:
        """Wait for the exit; its code."""
        code = self.process.wait(timeout)
        self._file.close()
        return code

    def kill(self) -> None:
        """SIGKILL, and wait for it to be gone."""
        self.process.send_signal(signal.SIGKILL)
        self.finish()

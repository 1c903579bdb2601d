"""The README's quick start runs as written (in a directory of its own, as a user would)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_quick_start_runs_and_delivers_each_topic_as_its_annotation_says(tmp_path: Path) -> None:
    section = README.read_text().split("## Quick start", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    script = tmp_path / "quick_start.py"
    script.write_text(code.group(1))
    child = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert child.returncode == 0, child.stderr
    lines = child.stdout.splitlines()
    assert sorted(lines[:2]) == ["audit user.created", "welcome Ann"]
    assert "user.created" in child.stdout  # the chain
    assert "email: done, tries 1" in child.stdout

"""The README's quick start and every code block of the guides in docs/ run as written (in a
directory of their own, as a user would)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"


def run_first_block(heading: str, tmp_path: Path) -> str:
    """Run the first python block after ``heading`` in a directory of its own; its stdout."""
    section = README.read_text().split(heading, 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    script = tmp_path / "example.py"
    script.write_text(code.group(1))
    child = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert child.returncode == 0, child.stderr
    return child.stdout


def test_quick_start_runs_and_delivers_each_topic_as_its_annotation_says(tmp_path: Path) -> None:
    out = run_first_block("## Quick start", tmp_path)
    assert sorted(out.splitlines()[:2]) == ["audit user.created", "welcome Ann"]
    assert "user.created" in out  # the chain
    assert "email: done, tries 1" in out


def test_readme_middleware_example_runs(tmp_path: Path) -> None:
    out = run_first_block("## Testing, FastAPI, middleware", tmp_path)
    assert out.splitlines() == ["-> notes note.added {'tenant': 'acme'}"]


DOCS = README.parent / "docs"
GUIDES = sorted(p for p in DOCS.glob("*.md") if "```python" in p.read_text())


def guide_files(text: str) -> dict[str, str]:
    """A guide's python blocks, in order, as one test module; a block whose first line is
    ``# name.py`` goes to that file instead (a ``conftest.py``)."""
    files: dict[str, str] = {}
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        named = re.fullmatch(r"# (\w+\.py)", block.splitlines()[0].strip())
        name = named.group(1) if named else "test_guide.py"
        files[name] = files.get(name, "") + block + "\n"
    return files


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_every_code_block_of_a_guide_runs(guide: Path, tmp_path: Path) -> None:
    text = guide.read_text()
    for name, code in guide_files(text).items():
        (tmp_path / name).write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_mode=auto",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            "-W",
            "error",
            "test_guide.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert child.returncode == 0, child.stdout[-5000:] + child.stderr[-3000:]
    tests = len(re.findall(r"^(?:async )?def test_", text, re.M))
    assert tests, f"{guide.name} has python blocks but no test_ functions to run them"
    assert f"{tests} passed" in child.stdout, child.stdout[-3000:]

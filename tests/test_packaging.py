"""Declared dependencies are complete, and a missing extra is reported the same way everywhere.

A module that the package imports but pyproject.toml does not declare works on every developer's
machine (something else installed it) and fails for every new user. These tests check it
mechanically: statically (every third-party import is declared), and by importing each part of
the package in a child process that sees only what its install would provide (tests/installs.py).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.installs import ROOT, declared, installable, module_owners, run_as_installed

#: Source directories and the package each installs as (see [tool.setuptools] package-dir).
SOURCES = {
    "localbroker": "localbroker",
    "sync": "localbroker.sync",
    "archive": "localbroker.archive",
}


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for directory, package in SOURCES.items():
        for path in sorted((ROOT / directory).rglob("*.py")):
            parts = path.relative_to(ROOT / directory).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


def extras_of(module: str) -> tuple[str, ...]:
    """The extras a module needs at import time (besides the base install)."""
    if module.startswith("localbroker.dashboard"):
        return ("dashboard",)
    if module == "localbroker.archive.s3":
        return ("s3",)
    if module.startswith("localbroker.sync.redis"):
        return ("redis",)
    if module.startswith("localbroker.sync.mongo"):
        return ("mongo",)
    if module.startswith("localbroker.sync.postgres"):
        return ("postgres",)
    if module.startswith("localbroker.sync.nats"):
        return ("nats",)
    if module == "localbroker.alerts.sender":
        return ("alerts",)
    if module == "localbroker.testing.pytest_plugin":
        return ("testing",)
    if module == "localbroker.integrations.fastapi":
        return ("fastapi",)
    return ()


def _third_party_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "localbroker"}


def test_every_third_party_import_is_declared() -> None:
    spec = declared()
    everything = set().union(*(names for extra, names in spec.items() if extra != "dev"))
    owners = module_owners()
    problems = []
    for path in _modules().values():
        for name in sorted(_third_party_imports(path)):
            dists = owners.get(name, set())
            if not dists:
                problems.append(
                    f"{path.relative_to(ROOT)}: imports {name!r}, which no installed distribution provides"
                )
            elif not dists & everything:
                problems.append(
                    f"{path.relative_to(ROOT)}: imports {name!r} from {sorted(dists)}, "
                    "declared neither in dependencies nor in an extra"
                )
    assert not problems, "\n".join(problems)


def test_extras_name_only_what_is_installed() -> None:
    """Every declared distribution is installed here, so the checks above saw all of them."""
    missing = sorted(
        name
        for extra, names in declared().items()
        for name in names
        if name not in installable(*(e for e in declared() if e))
    )
    assert not missing, f"declared but not installed in this environment: {missing}"


@pytest.mark.parametrize(
    "extras",
    [
        (),
        ("redis",),
        ("mongo",),
        ("postgres",),
        ("nats",),
        ("s3",),
        ("dashboard",),
        ("alerts",),
        ("testing",),
        ("fastapi",),
    ],
    ids=lambda e: e[0] if e else "base",
)
def test_each_install_imports_its_modules(extras: tuple[str, ...]) -> None:
    modules = [m for m in _modules() if extras_of(m) == extras]
    assert modules
    child = run_as_installed(
        extras,
        """
        import importlib, sys, traceback
        failed = []
        for name in sys.argv[1:]:
            try:
                importlib.import_module(name)
            except Exception:
                failed.append(name + ": " + traceback.format_exc(limit=-2))
        print("\\n".join(failed))
        sys.exit(1 if failed else 0)
        """,
        args=modules,
    )
    assert child.returncode == 0, (
        f"with localbroker[{','.join(extras)}]:\n{child.stdout}{child.stderr}"
    )


def test_readme_first_command_works_with_the_base_install(tmp_path: Path) -> None:
    """`pip install . && localbroker demo`: the demo needs nothing beyond the base install."""
    child = run_as_installed(
        (),
        """
        import sys
        from localbroker.cli.main import main
        sys.argv = ["localbroker", "demo", "--data", sys.argv[1]]
        main()
        """,
        args=[str(tmp_path / "demo")],
        timeout=180,
    )
    assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-3000:]
    assert "done" in child.stdout


@pytest.mark.parametrize(
    ("statement", "extra"),
    [
        ("from localbroker.archive import S3Store", "s3"),
        ("from localbroker.sync import RedisStreams", "redis"),
        ("from localbroker.sync import MongoStore", "mongo"),
        ("from localbroker.sync import PostgresStore", "postgres"),
        ("from localbroker.sync import NatsJetStream", "nats"),
        ("import localbroker.dashboard", "dashboard"),
        ("from localbroker.integrations.fastapi import lifespan", "fastapi"),
        ("from localbroker import Alerts; Alerts(url='https://hooks.example.com/x')", "alerts"),
        (
            "from localbroker.schemas import sample; from localbroker import Event; sample(Event)",
            "schema",
        ),
    ],
)
def test_a_missing_extra_raises_one_error_naming_it(statement: str, extra: str) -> None:
    child = run_as_installed(
        (),
        f"""
        from localbroker import LocalBrokerError, MissingExtraError
        try:
            {statement}
        except MissingExtraError as exc:
            assert isinstance(exc, ImportError) and isinstance(exc, LocalBrokerError)
            print(exc.extra)
            print(exc)
        else:
            raise SystemExit("imported without the extra")
        """,
    )
    assert child.returncode == 0, child.stderr
    name, message = child.stdout.splitlines()[:2]
    assert name == extra
    assert f"pip install 'localbroker[{extra}]'" in message


def test_parquet_export_without_pyarrow_names_the_extra(tmp_path: Path) -> None:
    child = run_as_installed(
        ("s3",),
        """
        import sys
        from localbroker import MissingExtraError
        from localbroker.archive.export import write_parquet
        try:
            write_parquet([], sys.argv[1])
        except MissingExtraError as exc:
            print(exc)
        """,
        args=[str(tmp_path / "out.parquet")],
    )
    assert "pip install 'localbroker[parquet]'" in child.stdout, child.stderr


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        (["archive", "run", "--bucket", "events"], "s3"),
        (["dashboard"], "dashboard"),
        (["schema", "sample", "user.created"], "schema"),
    ],
    ids=["archive", "dashboard", "schema"],
)
def test_cli_reports_a_missing_extra_in_one_line(
    tmp_path: Path, command: list[str], extra: str
) -> None:
    (tmp_path / "log").mkdir()
    child = run_as_installed(
        (),
        """
        import sys
        from localbroker.cli.main import main
        sys.argv = ["localbroker", *sys.argv[1:]]
        main()
        """,
        args=[*command, "--data", str(tmp_path)],
    )
    assert child.returncode == 1, child.stdout + child.stderr
    assert "Traceback" not in child.stderr
    lines = [line for line in child.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, child.stderr
    assert f"pip install 'localbroker[{extra}]'" in lines[0]

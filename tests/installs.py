"""What each install of localbroker provides, read from pyproject.toml and the installed metadata.

``run_as_installed(extras, code)`` runs Python code in a child process that can import only
what ``pip install 'localbroker[extras]'`` would have installed: the distributions declared for
the base install and those extras, and everything they require, transitively. Every other
installed distribution (the test tools, the other extras) is hidden by an import hook, so the
child behaves like a fresh virtualenv with just that install.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]

#: Installed by pip itself into every virtualenv; never imported by localbroker.
_ALWAYS = {"pip", "setuptools", "wheel", "localbroker"}


def declared() -> dict[str, set[str]]:
    """``{"": base distributions, extra: its distributions}`` as pyproject.toml declares them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {"": {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}}
    for extra, reqs in project["optional-dependencies"].items():
        names: set[str] = set()
        for req in map(Requirement, reqs):
            if canonicalize_name(req.name) == "localbroker":
                for inner in req.extras:  # dev = localbroker[redis,...] + tools
                    names |= out.get(inner, set())
            else:
                names.add(canonicalize_name(req.name))
        out[extra] = names
    return out


def asked_extras() -> dict[str, set[str]]:
    """The extras pyproject.toml asks of its dependencies: ``psycopg[binary]`` gives
    ``{"psycopg": {"binary"}}`` (what pip installs besides the package itself)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    reqs = [*project["dependencies"], *(req for reqs in extras for req in reqs)]
    out: dict[str, set[str]] = {}
    for req in map(Requirement, reqs):
        if req.extras and canonicalize_name(req.name) != "localbroker":
            out.setdefault(canonicalize_name(req.name), set()).update(req.extras)
    return out


def closure(names: set[str]) -> set[str]:
    """``names`` and every distribution they require (markers evaluated, with the extras
    asked of each: those of pyproject.toml for ``names``, then those of each requirement)."""
    asked = asked_extras()
    seen: set[tuple[str, str]] = set()
    todo = [(name, extra) for name in names for extra in ("", *asked.get(name, ()))]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue  # reported by the tests that need it
        for raw in requires:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                required = canonicalize_name(req.name)
                todo.extend((required, inner) for inner in ("", *req.extras))
    return {name for name, _ in seen}


def installable(*extras: str) -> set[str]:
    """Distributions a fresh ``pip install 'localbroker[extras]'`` would have."""
    spec = declared()
    wanted = set(spec[""])
    for extra in extras:
        wanted |= spec[extra]
    return closure(wanted) | _ALWAYS


def module_owners() -> dict[str, set[str]]:
    """Top-level module name -> the installed distributions that provide it (canonical names)."""
    return {
        module: {canonicalize_name(d) for d in dists}
        for module, dists in md.packages_distributions().items()
    }


_HOOK = textwrap.dedent(
    """
    import importlib.abc, importlib.metadata as md, os, sys
    from packaging.utils import canonicalize_name

    _allowed = set(os.environ["LOCALBROKER_TEST_ALLOWED"].split(","))
    _owners = {m: {canonicalize_name(d) for d in ds} for m, ds in md.packages_distributions().items()}

    class _NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            top = fullname.partition(".")[0]
            owners = _owners.get(top)
            if owners and not owners & _allowed:
                raise ModuleNotFoundError(f"No module named {top!r}", name=top)
            return None

    sys.meta_path.insert(0, _NotInstalled())
    # packaging was needed by the hook itself; a fresh install would not have it.
    for _name in [m for m in sys.modules if m.split(".")[0] == "packaging"]:
        if "packaging" not in _allowed:
            del sys.modules[_name]
    """
)


def run_as_installed(
    extras: tuple[str, ...], code: str, *, args: list[str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child that sees only what ``localbroker[extras]`` installs."""
    env = {
        **os.environ,
        "LOCALBROKER_TEST_ALLOWED": ",".join(sorted(installable(*extras))),
        "COLUMNS": "80",
    }
    return subprocess.run(
        [sys.executable, "-c", _HOOK + textwrap.dedent(code), *(args or [])],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
        check=False,
    )

"""``localbroker dashboard``: refuses unsafe or impossible settings before serving."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from localbroker.cli.main import cli
from localbroker.dashboard import load_dashboard_config
from localbroker.errors import ConfigurationError


def test_binding_beyond_localhost_needs_a_token(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("LOCALBROKER_DASHBOARD_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["dashboard", "--data", str(tmp_path), "--host", "0.0.0.0"])
    assert result.exit_code == 1
    assert "give --token (or LOCALBROKER_DASHBOARD_TOKEN)" in result.output


def test_token_from_the_environment_and_its_length(monkeypatch) -> None:
    monkeypatch.setenv("LOCALBROKER_DASHBOARD_TOKEN", "s" * 24)
    assert load_dashboard_config(host="0.0.0.0").token == "s" * 24
    assert load_dashboard_config(host=None).token == "s" * 24  # None host: not given
    assert load_dashboard_config(token=None).token is None  # None token: no token
    with pytest.raises(ConfigurationError, match="token: String should have at least 16"):
        load_dashboard_config(token="short")


def test_a_directory_without_a_log_is_named(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["dashboard", "--data", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "holds no localbroker log" in result.output


@contextlib.contextmanager
def dashboard_process(data: Path, *options: str) -> Iterator[str]:
    """``localbroker dashboard`` in a child process; yields the line it prints at start."""
    env = {k: v for k, v in os.environ.items() if k != "LOCALBROKER_DASHBOARD_TOKEN"}
    process = subprocess.Popen(
        [sys.executable, "-m", "localbroker.cli.main", "dashboard", "--data", str(data), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.kill()  # SIGKILL: nothing to clean up, the dashboard only reads
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.parametrize("host", ["127.0.0.2", "::1"])
async def test_served_on_the_loopback_address_it_binds(filled, host: str) -> None:
    data, _ = filled
    with dashboard_process(data, "--host", host, "--port", "0") as line:
        url = line.split(": ", 1)[1]
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{url}events")
            other_name = await client.get(f"{url}events", headers={"host": "evil.example"})
    shown = f"[{host}]" if ":" in host else host
    assert url.startswith(f"http://{shown}:")
    assert not url.endswith(":0/")
    assert response.status_code == 200
    assert "<h1>Events</h1>" in response.text
    assert other_name.status_code == 400
    assert "invalid Host header 'evil.example'" in other_name.text


async def test_the_token_is_not_printed_unless_asked(filled) -> None:
    data, _ = filled
    token = "printed-token-1234"
    with dashboard_process(data, "--port", "0", "--token", token) as hidden:
        pass
    with dashboard_process(data, "--port", "0", "--token", token, "--show-token") as shown:
        pass
    assert token not in hidden
    assert "--show-token prints it here" in hidden
    assert shown.endswith(f"/?token={token}")


def test_a_port_in_use_is_named(tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            cli, ["dashboard", "--data", str(tmp_path), "--port", str(port)]
        )
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1 port {port}: " in result.output

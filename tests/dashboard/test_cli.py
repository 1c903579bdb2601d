"""``localbroker dashboard``: refuses unsafe or impossible settings before serving."""

from __future__ import annotations

from pathlib import Path

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

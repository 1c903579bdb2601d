"""Options of the dashboard server (``localbroker dashboard``)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from localbroker.config import keywords, problems
from localbroker.errors import ConfigurationError

__all__ = ["DashboardConfig", "is_loopback", "load_dashboard_config"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class DashboardConfig(BaseSettings):
    """Where the dashboard listens and who may use it.

    Each option can be given on the command line or as ``LOCALBROKER_DASHBOARD_<NAME>``
    (for example ``LOCALBROKER_DASHBOARD_TOKEN``).
    """

    model_config = SettingsConfigDict(
        env_prefix="LOCALBROKER_DASHBOARD_", extra="forbid", frozen=True
    )

    host: str = "127.0.0.1"
    """Address to bind. Anything but a loopback address requires a ``token``."""
    port: Annotated[int, Field(ge=0, le=65535)] = 8765
    """TCP port (0: any free port)."""
    token: Annotated[str, Field(min_length=16)] | None = None
    """Shared secret checked on every request (header, or a cookie set by ``/?token=...``).
    At least 16 characters."""

    @model_validator(mode="after")
    def _token_off_localhost(self) -> DashboardConfig:
        if self.token is None and not is_loopback(self.host):
            raise ValueError(
                f"binding to {self.host} exposes the dashboard beyond this machine: "
                "give --token (or LOCALBROKER_DASHBOARD_TOKEN)"
            )
        return self


def load_dashboard_config(**overrides: Any) -> DashboardConfig:
    """A :class:`DashboardConfig` from the environment and ``overrides``.

    A None is kept for the options that take it (``token=None``: no token, whatever the
    environment says) and means "not given" for the others. Raises
    :class:`~localbroker.errors.ConfigurationError` naming every bad option.
    """
    try:
        return DashboardConfig(**keywords(DashboardConfig, overrides))
    except ValidationError as exc:
        raise ConfigurationError(f"invalid dashboard configuration: {problems(exc)}") from exc

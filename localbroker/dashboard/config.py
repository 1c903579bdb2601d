"""Options of the dashboard server (``localbroker dashboard``)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from localbroker.config import keywords, problems
from localbroker.errors import ConfigurationError

__all__ = ["LOCAL_NAMES", "DashboardConfig", "is_loopback", "load_dashboard_config"]

LOCAL_NAMES = ("127.0.0.1", "localhost", "::1")
"""Host names a dashboard bound to a loopback address always answers to."""


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
    stale_after: Annotated[float, Field(gt=0)] = 10.0
    """Seconds after which a sync target's status that was not refreshed is shown as stale
    (a running target rewrites it every ``status_interval``, 1 s by default)."""

    @model_validator(mode="after")
    def _token_off_localhost(self) -> DashboardConfig:
        if self.token is None and not is_loopback(self.host):
            raise ValueError(
                f"binding to {self.host} exposes the dashboard beyond this machine: "
                "give --token (or LOCALBROKER_DASHBOARD_TOKEN)"
            )
        return self

    def allowed_hosts(self) -> list[str] | None:
        """``Host`` header values to accept: without a token, this machine's own names and the
        bound address (against DNS rebinding); with one, any (the token guards)."""
        if self.token is not None:
            return None
        return list(dict.fromkeys([*LOCAL_NAMES, self.host.strip("[]")]))

    def url(self, *, show_token: bool = False) -> str:
        """The address to open, ``[...]`` around an IPv6 address; the token only if asked."""
        host = f"[{self.host.strip('[]')}]" if ":" in self.host else self.host
        query = f"?token={self.token}" if self.token and show_token else ""
        return f"http://{host}:{self.port}/{query}"


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

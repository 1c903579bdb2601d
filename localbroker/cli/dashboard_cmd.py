"""``localbroker dashboard``: serve the web UI of a data directory."""

from __future__ import annotations

import socket
from pathlib import Path

import click

from localbroker.cli.common import given
from localbroker.errors import LocalBrokerError
from localbroker.extras import require_extra

__all__ = ["dashboard"]


@click.command()
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="LOCALBROKER_DATA_DIR",
    required=True,
    help="Data directory of the broker (env LOCALBROKER_DATA_DIR).",
)
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8765; 0: any free port).")
@click.option(
    "--token",
    default=None,
    help="Require this token on every request; needed to bind beyond localhost "
    "(env LOCALBROKER_DASHBOARD_TOKEN).",
)
@click.option(
    "--show-token",
    is_flag=True,
    help="Print the address with ?token=... (by default the token is not printed, so it "
    "stays out of terminal logs).",
)
def dashboard(
    data: Path, host: str | None, port: int | None, token: str | None, show_token: bool
) -> None:
    """Serve the dashboard: events, chains, errors, the DLQ, subscribers, analytics.

    It reads the directory beside a running broker and sends DLQ actions to it.

    Example: localbroker dashboard --data ./data --port 8765
    """
    try:
        require_extra("localbroker dashboard", "dashboard", "uvicorn")
        from localbroker.dashboard import create_app, load_dashboard_config

        config = load_dashboard_config(**given(host=host, port=port, token=token))
    except LocalBrokerError as exc:  # a missing extra or a bad option
        raise click.ClickException(str(exc)) from exc
    import uvicorn

    if not (data / "log").is_dir():
        raise click.ClickException(f"{data} holds no localbroker log (no {data / 'log'})")
    app = create_app(
        data,
        token=config.token,
        allowed_hosts=config.allowed_hosts(),
        stale_after=config.stale_after,
    )
    host = config.host.strip("[]")
    try:
        # Bound here, before anything is printed: a port in use or an address this machine
        # does not have is a clear error, and with --port 0 the line names the real port.
        sock = socket.create_server((host, config.port), family=_family(host))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host} port {config.port}: {exc}") from exc
    bound = config.model_copy(update={"port": sock.getsockname()[1]})
    line = f"localbroker dashboard of {data}: {bound.url(show_token=show_token)}"
    if config.token and not show_token:
        line += " (open it once with ?token=<your token>; --show-token prints it here)"
    click.echo(line)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET

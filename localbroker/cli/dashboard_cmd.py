"""``localbroker dashboard``: serve the web UI of a data directory."""

from __future__ import annotations

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
def dashboard(data: Path, host: str | None, port: int | None, token: str | None) -> None:
    """Serve the dashboard: events, chains, errors, the DLQ, subscribers, analytics.

    It reads the directory beside a running broker and sends DLQ actions to it.

    Example: localbroker dashboard --data ./data --port 8765
    """
    try:
        require_extra("localbroker dashboard", "dashboard", "uvicorn")
        from localbroker.dashboard import create_app, load_dashboard_config
        from localbroker.dashboard.config import is_loopback

        config = load_dashboard_config(**given(host=host, port=port, token=token))
    except LocalBrokerError as exc:  # a missing extra or a bad option
        raise click.ClickException(str(exc)) from exc
    import uvicorn

    if not (data / "log").is_dir():
        raise click.ClickException(f"{data} holds no localbroker log (no {data / 'log'})")
    local = is_loopback(config.host)
    app = create_app(
        data,
        token=config.token,
        # Without a token, only accept this machine's own names: no DNS rebinding.
        allowed_hosts=["127.0.0.1", "localhost", "::1"] if local and config.token is None else None,
    )
    query = f"/?token={config.token}" if config.token else "/"
    click.echo(f"localbroker dashboard of {data}: http://{config.host}:{config.port}{query}")
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")

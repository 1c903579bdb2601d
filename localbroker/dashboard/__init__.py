"""The localbroker dashboard: a web UI over a broker's data directory.

It reads the log, ``state.db`` and ``index.db`` (the broker may run in another process),
follows changes live, and sends DLQ actions to the running broker. Needs the ``dashboard``
extra: ``pip install 'localbroker[dashboard]'`` (without it, importing this package raises
:class:`~localbroker.MissingExtraError`).

Example::

    from localbroker.dashboard import create_app
    app = create_app("./data")          # a Starlette app: serve it with uvicorn, or mount it
"""

from localbroker.extras import require_extra

# Checked before anything imports them, so a missing one is reported by the extra's name.
require_extra(
    "localbroker.dashboard",
    "dashboard",
    "starlette",
    "jinja2",
    "sse_starlette",
    "markupsafe",
    "itsdangerous",
    "python_multipart",  # starlette parses the action forms with it
)

from localbroker.dashboard.app import create_app
from localbroker.dashboard.config import DashboardConfig, load_dashboard_config

__all__ = ["DashboardConfig", "create_app", "load_dashboard_config"]

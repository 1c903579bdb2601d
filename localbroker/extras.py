"""One way for optional parts to say which extra to install.

Example, at the top of an optional package::

    from localbroker.extras import require_extra
    require_extra("localbroker.archive", "s3", "boto3")
"""

from __future__ import annotations

import importlib

from localbroker.errors import MissingExtraError

__all__ = ["require_extra"]


def require_extra(feature: str, extra: str, *modules: str) -> None:
    """Import ``modules``; raise :class:`MissingExtraError` naming ``extra`` if one is missing.

    Only a missing module counts: a module that is installed but fails while importing raises
    its own error, which says more than "install the extra" would.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module.split(".")[0] != exc.name.split(".")[0]:
                raise  # the module is there; something it needs is broken
            raise MissingExtraError(feature, extra, module) from exc

"""Integrations with web frameworks: :mod:`localbroker.integrations.fastapi` (extra ``fastapi``)."""

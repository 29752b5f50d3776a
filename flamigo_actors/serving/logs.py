"""Logging of the server commands: the format from ``FLAMIGO_LOG_FORMAT``, secrets registered.

:func:`setup` runs first (the command's ``main``, gunicorn's arbiter, each
worker after the fork): level, format, redaction (see
:mod:`flamigo_actors.core.logs`); it imports nothing but the standard
library and ``core``, so the unpatched arbiter may call it. :func:`watch_app`
runs once the app is loaded: its ``SECRET_KEY``, admin token and Redis
password are never written, and JSON lines get the connection's fields.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ..core.logs import TEXT_FORMAT, configure, register_secret, set_context_provider

__all__ = ["log_format", "setup", "watch_app"]


def log_format(environ: Mapping[str, str] | None = None) -> str:
    """``FLAMIGO_LOG_FORMAT`` from the environment (``text`` when unset).

    Raises:
        ValueError: it is neither ``text`` nor ``json``.
    """
    value = (os.environ if environ is None else environ).get("FLAMIGO_LOG_FORMAT", "text").strip().lower()
    if value not in ("text", "json"):
        raise ValueError(f"FLAMIGO_LOG_FORMAT must be 'text' or 'json', got {value!r}")
    return value


def _url_password(url: str | None) -> str | None:
    try:
        return urlsplit(url).password if url else None
    except ValueError:
        return None


def setup(level: str | int = "INFO") -> None:
    """Configure the root logger for a server process (see the module docstring).

    Raises:
        ValueError: ``FLAMIGO_LOG_FORMAT`` is invalid.
    """
    chosen = log_format()
    if isinstance(level, str):
        level = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=level, format=TEXT_FORMAT)
    for name in ("FLAMIGO_ADMIN_TOKEN",):
        register_secret(os.environ.get(name))
    register_secret(_url_password(os.environ.get("FLAMIGO_REDIS_URL")))
    configure(chosen, level)


def watch_app(app: Any) -> None:
    """Register ``app``'s secrets and give JSON lines the connection's fields."""
    from ..websocket.log_context import connection_fields

    register_secret(app.config.get("SECRET_KEY") if isinstance(app.config.get("SECRET_KEY"), str) else None)
    flamigo = getattr(app, "extensions", {}).get("flamigo")
    if flamigo is not None:
        register_secret(flamigo.settings.admin_token)
        register_secret(_url_password(flamigo.settings.redis_url))
    set_context_provider(connection_fields)

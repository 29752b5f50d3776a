"""Readiness: ``GET /readyz``, the probe a load balancer asks before sending new connections.

``/readyz`` answers 200 ``{"status": "ready"}`` while the application takes
connections, and 503 ``{"status": "not ready", "reason": ...}``:

* from the moment the server is told to stop (SIGTERM; :func:`announce_shutdown`)
  and through the drain that follows (``flamigo.shutdown()``);
* while ``FLAMIGO_REDIS_URL`` is set with ``FLAMIGO_REDIS_REQUIRED`` and the
  backplane's link to Redis is down (it reconnects on its own; 200 again then).

``/healthz`` (the application's own) stays the liveness probe. After SIGTERM
the servers keep serving for :func:`grace_period` seconds with ``/readyz`` at
503, so a load balancer polling it stops routing here *before* new
connections are refused; then the drain begins. The grace is taken out of
``FLAMIGO_DRAIN_TIMEOUT`` so the whole shutdown still fits within it.

The probe is open to every client (a load balancer is rarely on loopback);
it reveals only the status and a short reason. It costs nothing per message.
"""

from __future__ import annotations

import time
import weakref
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, jsonify

if TYPE_CHECKING:
    from ..core.settings import Settings
    from .host import Host

__all__ = ["READYZ_PATH", "announce_shutdown", "grace_period", "not_ready_reason", "register_readiness"]

READYZ_PATH = "/readyz"

_stopping: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


def announce_shutdown(flamigo: Host) -> None:
    """Mark ``flamigo`` as stopping: ``/readyz`` answers 503 from now on (connections still served)."""
    _stopping.setdefault(flamigo, time.monotonic())


def grace_period(settings: Settings) -> float:
    """Seconds to keep serving after SIGTERM before draining: ``FLAMIGO_READINESS_GRACE``,
    at most half of ``FLAMIGO_DRAIN_TIMEOUT`` (the drain keeps the rest)."""
    return max(0.0, min(settings.readiness_grace, settings.drain_timeout / 2))


def not_ready_reason(flamigo: Host) -> str | None:
    """Why ``flamigo`` should not get new connections now, or ``None`` when it should."""
    if flamigo in _stopping or flamigo.hub.draining:
        return "shutting down"
    settings = flamigo.settings
    if settings.redis_url and settings.redis_required:
        backplane = flamigo.bus.backplane
        if backplane is None or not getattr(backplane, "connected", False):
            return "Redis is required and unreachable"
    return None


def register_readiness(flamigo: Host, app: Flask) -> None:
    """Mount ``GET /readyz`` on ``app`` (``init_app`` calls this)."""

    def readyz() -> Response:
        reason = not_ready_reason(flamigo)
        if reason is None:
            response = jsonify({"status": "ready"})
        else:
            response = jsonify({"status": "not ready", "reason": reason})
            response.status_code = 503
        response.headers["Cache-Control"] = "no-store"
        return response

    app.add_url_rule(READYZ_PATH, "flamigo_readyz", readyz, methods=["GET"])

"""The read-only inspection endpoint and the live dashboard (off by default).

With ``FLAMIGO_INSPECT_ENABLED`` set, the extension mounts:

* ``GET /_flamigo/inspect``: JSON with ``stats``, ``connections``,
  ``actors``, ``actor_kinds`` and ``subscriptions`` (the rows of
  :mod:`flamigo_actors.ops.inspect`). Connections and actors come deepest
  mailbox first, at most ``?limit=N`` of each (default 200);
  ``connections_total`` / ``actors_total`` give the full counts.
* ``GET /_flamigo/dashboard``: a page (plain HTML, CSS and JS shipped in the
  package, no build step, nothing from the network) polling that JSON every
  second: counts, message and event rates, the connections with their
  mailbox depths, actor kinds, subscriptions.

Who may look: a client on a loopback address talking to a loopback host
name (``127.0.0.1``, ``localhost``; not through a proxy that adds
``Forwarded`` / ``X-Forwarded-For``), or anyone presenting
``Authorization: Bearer <FLAMIGO_ADMIN_TOKEN>``. A wrong token is refused
even from loopback. Refusals answer 403 with a JSON ``error``.
"""

from __future__ import annotations

import hmac
import os
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, jsonify, request

from . import inspect
from .history import history_of

if TYPE_CHECKING:
    from .host import Host

__all__ = ["DASHBOARD_PATH", "INSPECT_PATH", "access_refusal", "register", "register_inspection", "snapshot"]

INSPECT_PATH = "/_flamigo/inspect"
DASHBOARD_PATH = "/_flamigo/dashboard"

DEFAULT_LIMIT = 200
MAX_LIMIT = 100_000

_FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")

_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}

_ASSETS = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}


def access_refusal(flamigo: Host, environ: dict[str, Any], headers: Any) -> str | None:
    """Why this request may not inspect the app, or ``None`` when it may.

    Args:
        environ: the WSGI environ (``REMOTE_ADDR``).
        headers: the request headers (``Authorization``, ``Host``, forwarding headers).
    """
    token = flamigo.settings.admin_token
    authorization = headers.get("Authorization")
    if authorization is not None:
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return "malformed Authorization header: send 'Authorization: Bearer <FLAMIGO_ADMIN_TOKEN>'"
        if not token:
            return "no FLAMIGO_ADMIN_TOKEN is configured: set one to inspect with a token"
        if not hmac.compare_digest(presented.strip().encode(), token.encode()):
            return "invalid admin token"
        return None
    local = (
        inspect.is_loopback(environ.get("REMOTE_ADDR"))
        and not any(headers.get(name) for name in _FORWARDING_HEADERS)
        # A loopback Host too: a web page that rebinds its own DNS name to
        # 127.0.0.1 must not read this through a local browser.
        and inspect.is_loopback(headers.get("Host", ""))
    )
    if local:
        return None
    return (
        "inspection is served only to loopback clients or with 'Authorization: Bearer "
        "<FLAMIGO_ADMIN_TOKEN>'"
        + ("" if token else " (and no FLAMIGO_ADMIN_TOKEN is configured)")
    )


def snapshot(flamigo: Host, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """The inspection document: counts, rates and the deepest-first rows (plain data)."""
    connections = inspect.connections(flamigo)
    connections.sort(key=lambda r: (-r["mailbox"], -r["outbound"], r["connected_at"]))
    actors = inspect.actors()
    kinds: dict[str, dict[str, Any]] = {}
    for row in actors:
        kind = kinds.setdefault(row["kind"], {"kind": row["kind"], "count": 0, "mailbox": 0, "max_mailbox": 0})
        kind["count"] += 1
        kind["mailbox"] += row["mailbox"]
        kind["max_mailbox"] = max(kind["max_mailbox"], row["mailbox"])
    for row in inspect.domain_kinds(flamigo):  # the domain actors' kinds, in the same table
        row["kind"] = f"domain:{row['kind']}"
        kinds[row["kind"]] = row
    actors.sort(key=lambda r: (-r["mailbox"], r["kind"]))
    subscriptions = inspect.subscriptions(flamigo)
    app = flamigo.app
    history = history_of(flamigo)
    return {
        "app": app.import_name if app is not None else None,
        "pid": os.getpid(),
        "time": time.time(),
        "stats": dict(inspect.stats(flamigo)),
        "connections": list(connections[:limit]),
        "connections_total": len(connections),
        "actors": list(actors[:limit]),
        "actors_total": len(actors),
        "actor_kinds": sorted(kinds.values(), key=lambda k: k["kind"]),
        "domain_busiest": flamigo.actors.busiest(limit),
        "subscriptions": list(subscriptions[:limit]),
        "subscriptions_total": len(subscriptions),
        "limit": limit,
        "history": history.rows() if history is not None else [],
    }


def register_inspection(flamigo: Host, app: Flask) -> None:
    """Mount the JSON endpoint and the dashboard when ``FLAMIGO_INSPECT_ENABLED`` is set (``init_app`` calls this)."""
    if flamigo.settings.inspect_enabled:
        register(flamigo, app)


def register(flamigo: Host, app: Flask) -> None:
    """Mount the inspection endpoint and the dashboard on ``app`` (done by ``init_app``)."""

    def guarded(view: Any) -> Any:
        def wrapper(**kwargs: Any) -> Any:
            refusal = access_refusal(flamigo, request.environ, request.headers)
            if refusal is not None:
                response = jsonify({"error": refusal})
                response.status_code = 403
            else:
                response = view(**kwargs)
            response.headers.update(_HEADERS)
            return response

        wrapper.__name__ = view.__name__
        wrapper.__doc__ = view.__doc__
        return wrapper

    def inspection() -> Response:
        """The inspection document as JSON (``?limit=N`` rows of each table)."""
        raw = request.args.get("limit", str(DEFAULT_LIMIT))
        try:
            limit = int(raw)
            if not 0 <= limit <= MAX_LIMIT:
                raise ValueError
        except ValueError:
            response = jsonify({"error": f"limit must be an integer from 0 to {MAX_LIMIT}, got {raw!r}"})
            response.status_code = 400
            return response
        return jsonify(snapshot(flamigo, limit))

    def page() -> Response:
        """The live dashboard."""
        return _asset("dashboard.html", "text/html")

    def asset(name: str) -> Response:
        """The dashboard's script and style sheet."""
        return _asset(name, _ASSETS[name])

    app.add_url_rule(INSPECT_PATH, "flamigo_inspect", guarded(inspection), methods=["GET"])
    app.add_url_rule(DASHBOARD_PATH, "flamigo_dashboard", guarded(page), methods=["GET"])
    for name in _ASSETS:
        app.add_url_rule(
            f"/_flamigo/{name}", f"flamigo_{name.replace('.', '_')}", guarded(asset),
            defaults={"name": name}, methods=["GET"],
        )


def _asset(name: str, mimetype: str) -> Response:
    body = resources.files("flamigo_actors").joinpath(f"static/{name}").read_bytes()
    return Response(body, mimetype=mimetype)

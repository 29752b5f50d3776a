"""The demo app's factory: settings, the Flamigo extension, hooks and HTTP views."""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Flask, jsonify, request

from flamigo_actors import Flamigo, FlamigoError, WebsocketClient

from .auth import InvalidUsername, TokenService
from .chat import MAX_TEXT, ROOM, rooms, strategies
from .room import Room
from .ui import register_ui

_log = logging.getLogger("app")

OFF = ("0", "false", "no", "off")


def _switch(name: str) -> bool:
    """An on/off switch from the environment: on unless set to 0, false, no or off."""
    return os.environ.get(name, "1").strip().lower() not in OFF


DEFAULTS: dict[str, Any] = {
    # Every process serving the same users must share this key: set SECRET_KEY.
    "SECRET_KEY": os.environ.get("SECRET_KEY", "flamigo-demo-dev-key-change-me"),
    "TOKEN_MAX_AGE": int(os.environ.get("TOKEN_MAX_AGE", "86400")),
    # The rooms' connection-state recovery and presence (on by default; the benchmark
    # turns both off to compare): DEMO_RECOVERY=0 / DEMO_PRESENCE=0.
    "DEMO_RECOVERY": _switch("DEMO_RECOVERY"),
    "DEMO_PRESENCE": _switch("DEMO_PRESENCE"),
}


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the demo chat app."""
    app = Flask(__name__, static_folder=None)
    app.config.update(DEFAULTS)
    app.config.update(config or {})
    tokens = TokenService(app.config["SECRET_KEY"], app.config["TOKEN_MAX_AGE"])
    flamigo = Flamigo(app, strategies=strategies, auth=tokens.verify)
    app.extensions["tokens"] = tokens
    for switch in ("DEMO_RECOVERY", "DEMO_PRESENCE"):
        if not isinstance(app.config[switch], bool):
            raise TypeError(f"{switch} must be True or False, got {app.config[switch]!r}")
    if app.config["DEMO_RECOVERY"]:
        # Rooms are recoverable: a client that opted in gets what it missed after a reconnect.
        flamigo.recoverable("rooms/*")

    @flamigo.on_authenticated
    def subscribe_own_topic(client: WebsocketClient) -> None:
        # Every user hears what is addressed to them personally.
        assert client.user is not None
        client.subscribe(f"user/{client.user.id}")

    @flamigo.on_disconnect
    def log_disconnect(client: WebsocketClient) -> None:
        _log.info(
            "disconnected %s user=%s code=%s reason=%s",
            client.conn_id,
            client.user.id if client.user else "-",
            client.close_code,
            client.close_reason,
        )

    register_views(app, tokens)
    register_ui(app)
    return app


def _error(status: int, message: str) -> Any:
    return jsonify({"error": message}), status


def register_views(app: Flask, tokens: TokenService) -> None:
    """The HTTP side of the demo."""
    import re

    room_pattern = re.compile(ROOM)
    actors = app.extensions["flamigo"].actors

    @app.get("/healthz")
    def healthz() -> Any:
        flamigo = app.extensions["flamigo"]
        return jsonify({"status": "ok", "connections": len(flamigo.connections)})

    @app.post("/api/login")
    def login() -> Any:
        body = request.get_json(silent=True)
        username = body.get("username") if isinstance(body, dict) else None
        try:
            token, user = tokens.issue(username)
        except InvalidUsername as err:
            return _error(400, str(err))
        return jsonify({"token": token, "user": user.public()})

    @app.get("/api/rooms")
    def list_rooms() -> Any:
        return jsonify({"rooms": rooms.names()})

    @app.post("/api/rooms/<room>/messages")
    def post_message(room: str) -> Any:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        user = tokens.verify(token) if token else None
        if user is None:
            return _error(401, "missing or invalid bearer token")
        if not room_pattern.match(room):
            return _error(400, "room must be 1-64 letters, digits, '_' or '-'")
        body = request.get_json(silent=True)
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
            return _error(400, f"text must be a non-empty string of at most {MAX_TEXT} characters")
        # The same path as app::rooms:send: the room stores the message, then publishes it.
        try:
            actors.get(Room, room).ask("post", user.username, text).get()
        except FlamigoError as err:  # the room is down, unreachable or too slow: not acknowledged
            return _error(err.status or 503, err.public or "the room is unavailable: retry")
        return jsonify({"room": room, "accepted": True}), 202

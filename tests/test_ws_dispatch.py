"""How an upgrade reaches its connection: directly (the default) or through Flask's dispatch."""

from __future__ import annotations

from typing import Any

from flask import request


def _count_ws_requests(app: Any) -> list[str]:
    seen: list[str] = []

    @app.before_request
    def record() -> None:
        seen.append(request.path)

    return seen


def test_direct_dispatch_serves_the_websocket_without_flask_request_hooks(demo_app, live_server) -> None:
    app = demo_app()
    seen = _count_ws_requests(app)
    server = live_server(app)
    client = server.client("alice")
    assert client.request("app::echo", {"x": 1}) == {"x": 1}
    client.ws.close()
    assert "/ws" not in seen  # FLAMIGO_WS_DIRECT (default): no Flask request for the upgrade
    assert "/api/login" in seen  # ordinary views still go through Flask


def test_flask_dispatch_runs_request_hooks_and_serves_the_same_protocol(demo_app, live_server) -> None:
    app = demo_app(FLAMIGO_WS_DIRECT=False)
    seen = _count_ws_requests(app)
    server = live_server(app)
    client = server.client("bob")
    assert client.request("app::echo", [1, "two"]) == [1, "two"]
    other = server.client("carol")
    client.request("app::rooms:join", {"room": "lobby"})
    other.request("app::rooms:join", {"room": "lobby"})
    other.request("app::rooms:send", {"room": "lobby", "text": "hi"})
    [push] = client.pushes("chat:message")
    assert push["payload"]["text"] == "hi"
    client.ws.close()
    other.ws.close()
    assert seen.count("/ws") == 2  # each upgrade went through Flask's dispatch and its hooks

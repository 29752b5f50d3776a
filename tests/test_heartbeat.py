"""The public heartbeat strategy ``app::websocket:ping`` the browser client relies on.

Browsers answer the server's WebSocket pings without telling page scripts, so
flamigo.js proves its connection alive with this application-level ping.
"""

from __future__ import annotations

from flask import Flask

from tests.support import LiveServer

PING = '{"topic":"app::websocket:ping"}'
PONG = {"topic": "app::websocket:ping", "payload": {"pong": True}}


def test_ping_is_answered_before_authentication(demo_server: LiveServer) -> None:
    client = demo_server.client()  # not authenticated
    try:
        client.send_raw(PING)
        assert client.recv_json() == PONG
        # Any other form goes through the strategy (public, so no 401 either).
        client.send_json({"topic": "app::websocket:ping", "ackId": "h1"})
        assert client.recv_json() == {**PONG, "ackId": "h1"}
        # Everything else still needs authentication.
        client.send_json({"topic": "app::echo", "payload": 1, "ackId": 2})
        assert client.recv_json()["payload"]["status"] == 401
    finally:
        client.close()


def test_canonical_ping_is_answered_ahead_of_a_busy_mailbox(demo_server: LiveServer) -> None:
    client = demo_server.client("alice")
    try:
        client.send_json({"topic": "app::demo:slow", "payload": {"seconds": 1.0}, "ackId": 1})
        client.send_raw(PING)
        # The slow strategy holds the mailbox; the reader answers the ping first.
        assert client.recv_json() == PONG
        assert client.recv_json() == {"topic": "app::demo:slow", "payload": {"slept": 1.0}, "ackId": 1}
        assert client.request("app::echo", "still in order") == "still in order"
    finally:
        client.close()


def test_ping_works_through_the_test_client(demo_app: Flask) -> None:
    app = demo_app()
    with app.extensions["flamigo"].test_client() as client:
        assert client.request("app::websocket:ping") == {"pong": True}


def test_an_app_may_replace_the_heartbeat_strategy(demo_app: Flask) -> None:
    from flamigo_actors import Flamigo, Registry

    strategies = Registry("app")

    @strategies.strategy("app::websocket:ping", public=True)
    def ping(ctx: object) -> str:
        return "custom"

    app = Flask(__name__)
    flamigo = Flamigo(app, strategies=strategies)
    assert flamigo.call("app::websocket:ping") == "custom"
    # The reader's shortcut is off too: the canonical frame reaches the app's strategy.
    assert flamigo.heartbeat_frames is None

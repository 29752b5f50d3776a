"""The WebSocket interface over real sockets: the wire protocol, auth, pushes, lifecycle."""

from __future__ import annotations

import gc
import socket
from collections.abc import Callable
from typing import Any

import gevent
import pykka
import pytest
import requests
import websocket
from flask import Flask

from flamigo_actors import Disconnected
from tests.rawws import RawWs
from tests.support import LiveServer, WsClient, eventually, join_room, nothing_arrives


# -- the protocol over a socket (the pure cases: tests/test_protocol.py) ----------


def test_authenticated_event_and_user_topic(demo_server: LiveServer) -> None:
    seen: list[Any] = []
    demo_server.flamigo.bus.subscribe(lambda ctx, e: seen.append(e), "auth/authenticated/*")
    client = demo_server.client("carol")
    eventually(lambda: seen)
    assert seen[0].user_id == "carol" and seen[0].topics == ("auth/authenticated/carol",)
    conn = next(iter(demo_server.flamigo.connections.values()))
    assert "user/carol" in conn.client.subscriptions  # the demo's on_authenticated hook
    client.close()


# -- pushes ------------------------------------------------------------------------


def test_pushes_reach_room_members_only(demo_server: LiveServer) -> None:
    alice, bob, eve = (demo_server.client(name) for name in ("alice", "bob", "eve"))
    join_room(alice, "tea", "alice")
    join_room(bob, "tea", "bob")
    join_room(eve, "coffee", "eve")
    assert alice.request("app::rooms:send", {"room": "tea", "text": "hello"}) == {"room": "tea", "sent": True}
    for member in (alice, bob):
        (push,) = member.pushes("chat:message")
        assert push["payload"]["room"] == "tea" and push["payload"]["user"] == "alice"
        assert push["payload"]["text"] == "hello" and isinstance(push["payload"]["ts"], float)
        assert set(push) == {"topic", "payload"}
    assert nothing_arrives(eve)
    bob.request("app::rooms:leave", {"room": "tea"})
    alice.request("app::rooms:send", {"room": "tea", "text": "again"})
    assert len(alice.pushes("chat:message")) == 1
    assert nothing_arrives(bob)


def test_flask_view_sends_the_same_push(demo_server: LiveServer) -> None:
    alice = demo_server.client("alice")
    join_room(alice, "tea", "alice")
    token = demo_server.login("dave")
    url = f"{demo_server.url}/api/rooms/tea/messages"
    response = requests.post(url, json={"text": "from http"}, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 202
    (push,) = alice.pushes("chat:message")
    assert push["payload"]["user"] == "dave" and push["payload"]["text"] == "from http"
    assert requests.post(url, json={"text": "x"}).status_code == 401
    assert requests.post(url, json={"text": "x"}, headers={"Authorization": "Bearer forged"}).status_code == 401
    assert requests.post(url, json={"text": ""}, headers={"Authorization": f"Bearer {token}"}).status_code == 400
    assert nothing_arrives(alice)


def test_login_validates_the_username(demo_server: LiveServer) -> None:
    for body in [{}, {"username": ""}, {"username": "   "}, {"username": 5}, None]:
        response = requests.post(f"{demo_server.url}/api/login", json=body)
        assert response.status_code == 400, body
    assert requests.get(f"{demo_server.url}/healthz").json()["status"] == "ok"


# -- how connections end -----------------------------------------------------------


def settle(server: LiveServer, conn_id: str, *, released_check: bool = True) -> None:
    """Wait until the server has nothing left to do for ``conn_id``.

    The connection is gone from the hub, its lifecycle is CLOSED and its actor
    has finished running (its cleanup, which publishes Disconnected, is done),
    nothing (no timer, greenlet or callback) still holds the connection object
    (unless ``released_check`` is off: a logged traceback keeps it), and the
    bus has routed and the listeners handled every event published before a
    marker: a late duplicate would already be recorded.
    """
    from flamigo_actors.websocket.connection import Connection
    from flamigo_actors.websocket.lifecycle import State

    flamigo = server.flamigo

    def alive() -> list[Any]:
        gc.collect()
        return [o for o in gc.get_objects() if isinstance(o, Connection) and o.client.conn_id == conn_id]

    def finished() -> bool:
        return all(
            c.lifecycle.state is State.CLOSED and (c.actor is None or c.actor.idle()) for c in alive()
        )

    eventually(lambda: conn_id not in flamigo.connections)
    eventually(finished, timeout=10, interval=0.1)
    if released_check:
        eventually(lambda: not alive(), timeout=10, interval=0.1)
    flamigo.publish_sync(Disconnected("settled-marker", None, 1000, "marker"), timeout=10)


def ended_once(
    server: LiveServer, seen: list[Disconnected], conn_id: str, *, released_check: bool = True
) -> Disconnected:
    eventually(lambda: any(e.conn_id == conn_id for e in seen))
    settle(server, conn_id, released_check=released_check)
    assert any(e.conn_id == "settled-marker" for e in seen)  # the recorder is flushed
    matching = [e for e in seen if e.conn_id == conn_id]
    assert len(matching) == 1, matching
    return matching[0]


def only_conn_id(server: LiveServer) -> str:
    eventually(lambda: len(server.flamigo.connections) == 1)
    return next(iter(server.flamigo.connections))


def test_client_close_fires_disconnected_once(demo_server: LiveServer) -> None:
    seen = demo_server.disconnections()
    user_seen: list[Any] = []
    demo_server.flamigo.bus.subscribe(lambda ctx, e: user_seen.append(e), "user/disconnected/alice")
    client = demo_server.client("alice")
    conn_id = only_conn_id(demo_server)
    client.ws.close(status=1000)
    event = ended_once(demo_server, seen, conn_id)
    assert (event.code, event.reason, event.user_id) == (1000, "client closed", "alice")
    eventually(lambda: user_seen)
    assert event.topics == (f"connection/disconnected/{conn_id}", "user/disconnected/alice")


def test_network_drop_fires_disconnected_once(demo_server: LiveServer) -> None:
    seen = demo_server.disconnections()
    client = demo_server.client("alice")
    conn_id = only_conn_id(demo_server)
    client.ws.sock.shutdown(socket.SHUT_RDWR)
    client.ws.sock.close()
    event = ended_once(demo_server, seen, conn_id)
    assert event.code == 1006 and event.reason.startswith("connection lost")


def test_ping_timeout_fires_disconnected_once(demo_app: Callable[..., Flask], live_server: Callable[[Flask], LiveServer]) -> None:
    server = live_server(demo_app(FLAMIGO_PING_INTERVAL=0.1, FLAMIGO_PONG_TIMEOUT=0.4))
    seen = server.disconnections()
    alive = server.client("bob")  # answers pings because it keeps reading
    client = server.client("alice")  # never reads again: never answers pings
    conn_id = [c for c, conn in server.flamigo.connections.items() if conn.client.user.id == "alice"][0]
    for _ in range(10):
        assert alive.request("app::echo", 1) == 1
        gevent.sleep(0.1)
    event = ended_once(server, seen, conn_id)
    assert (event.code, event.reason) == (1001, "ping timeout")
    assert alive.request("app::echo", 2) == 2
    assert len(server.flamigo.connections) == 1
    client.close()


def test_kick_fires_disconnected_once(demo_server: LiveServer) -> None:
    seen = demo_server.disconnections()
    client = demo_server.client("alice")
    conn_id = only_conn_id(demo_server)
    assert demo_server.flamigo.kick(conn_id, "bye now")
    assert client.wait_closed() == (4000, "bye now")
    event = ended_once(demo_server, seen, conn_id)
    assert (event.code, event.reason) == (4000, "bye now")
    assert not demo_server.flamigo.kick("no-such-connection")


def test_oversize_message_closes_with_1009(demo_app: Callable[..., Flask], live_server: Callable[[Flask], LiveServer]) -> None:
    server = live_server(demo_app(FLAMIGO_MAX_MESSAGE_SIZE=1024))
    seen = server.disconnections()
    other = server.client("bob")
    client = server.client("alice")
    conn_id = [c for c, conn in server.flamigo.connections.items() if conn.client.user.id == "alice"][0]
    assert client.request("app::echo", "x" * 900) == "x" * 900
    client.send_json({"topic": "app::echo", "payload": "x" * 2000})
    assert client.wait_closed()[0] == 1009
    event = ended_once(server, seen, conn_id)
    assert event.code == 1009
    assert other.request("app::echo", "fine") == "fine"


def test_a_failing_on_connect_hook_publishes_neither_connected_nor_disconnected(
    demo_app: Callable[..., Flask], live_server: Callable[[Flask], LiveServer]
) -> None:
    app = demo_app()
    flamigo = app.extensions["flamigo"]
    hooked: list[str] = []

    @flamigo.on_connect
    def fails(client: Any) -> None:
        raise RuntimeError("on_connect bug")

    @flamigo.on_disconnect
    def record(client: Any) -> None:
        hooked.append(client.conn_id)  # disconnect hooks still run, to release what hooks took

    server = live_server(app)
    seen = server.disconnections()
    connected: list[Any] = []
    flamigo.bus.subscribe(lambda ctx, e: connected.append(e), "connection/connected/*")
    ws = RawWs(server.port)
    assert ws.read_until_close(timeout=10).code == 1011
    (conn_id,) = eventually(lambda: hooked)
    # The logged traceback of the hook keeps the connection's frames alive.
    settle(server, conn_id, released_check=False)
    assert [e for e in seen if e.conn_id == conn_id] == []  # no Connected, so no Disconnected
    assert [e for e in connected if e.conn_id == conn_id] == []
    assert len(server.flamigo.connections) == 0


def test_crash_in_the_connection_actor_closes_with_1011(
    demo_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flamigo_actors import connection as connection_module

    seen = demo_server.disconnections()
    other = demo_server.client("bob")
    client = demo_server.client("alice")
    conn_id = [c for c, conn in demo_server.flamigo.connections.items() if conn.client.user.id == "alice"][0]
    real = connection_module.protocol.encode_reply

    def broken(topic: str, result: Any, ack_id: Any) -> bytes:
        if result == "crash":
            raise RuntimeError("machinery bug")  # not a TypeError: escapes the reply path
        return real(topic, result, ack_id)

    monkeypatch.setattr(connection_module.protocol, "encode_reply", broken)
    client.send_json({"topic": "app::echo", "payload": "crash", "ackId": 1})
    assert client.wait_closed()[0] == 1011
    # The logged traceback of the crash keeps the connection's frames alive.
    event = ended_once(demo_server, seen, conn_id, released_check=False)
    assert event.code == 1011
    assert other.request("app::echo", "unaffected") == "unaffected"
    eventually(lambda: len(demo_server.flamigo.connections) == 1)


def test_connected_event_fires_once(demo_server: LiveServer) -> None:
    seen: list[Any] = []
    demo_server.flamigo.bus.subscribe(lambda ctx, e: seen.append(e), "connection/connected/*")
    client = demo_server.client()
    eventually(lambda: seen)
    gevent.sleep(0.05)
    assert len(seen) == 1 and seen[0].conn_id in demo_server.flamigo.connections
    client.close()


def test_registry_returns_to_baseline_after_500_connections(demo_server: LiveServer) -> None:
    demo_server.flamigo.bus.start()
    baseline = len(pykka.ActorRegistry.get_all())
    token = demo_server.login("alice")

    def session(n: int) -> None:
        client = WsClient(demo_server.ws_url)
        client.request("app::websocket:auth", {"token": token})
        client.request("app::rooms:join", {"room": f"r{n % 7}"})
        if n % 2:
            client.ws.close()
        else:
            client.ws.sock.close()  # abrupt

    for batch in range(10):
        gevent.joinall([gevent.spawn(session, batch * 50 + i) for i in range(50)], raise_error=True)
    eventually(lambda: len(demo_server.flamigo.connections) == 0, timeout=10)
    eventually(lambda: len(pykka.ActorRegistry.get_all()) == baseline, timeout=10)
    assert demo_server.flamigo.bus.index_size() == (0, 0)
    stats = demo_server.flamigo.stats
    assert stats.connections_opened == stats.connections_closed == 500


# -- before the upgrade ------------------------------------------------------------


def test_origins_are_checked_before_the_upgrade(demo_app: Callable[..., Flask], live_server: Callable[[Flask], LiveServer]) -> None:
    server = live_server(demo_app(FLAMIGO_ALLOWED_ORIGINS=["https://chat.example"]))
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        WsClient(server.ws_url, origin="https://evil.example")
    assert info.value.status_code == 403
    assert server.flamigo.stats.connections_refused == 1
    WsClient(server.ws_url, origin="https://chat.example").close()
    WsClient(server.ws_url, origin=f"http://127.0.0.1:{server.port}").close()  # same origin
    WsClient(server.ws_url).close()  # no Origin header: not a browser
    assert server.flamigo.stats.connections_refused == 1


def test_plain_get_on_the_websocket_path_is_400(demo_server: LiveServer) -> None:
    assert requests.get(f"{demo_server.url}/ws").status_code == 400


def test_counts_per_client(demo_server: LiveServer) -> None:
    client = demo_server.client("alice")
    for n in range(5):
        client.request("app::echo", n)
    conn = next(iter(demo_server.flamigo.connections.values()))
    info = conn.client.info()
    assert (info["messages_in"], info["messages_out"]) == (6, 6)
    assert info["user"] == {"id": "alice", "username": "alice"}
    assert info["subscriptions"] == ["user/alice"] and info["state"] == "connected"

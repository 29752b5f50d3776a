"""The demo's rooms are ``Room`` domain actors: history over a real server (WebSocket and HTTP).

One server in this process on a real loopback socket; the two-process and
kill -9 cases are in tests/test_scale_out.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

import pytest

from tests.support import ErrorReply, LiveServer, WsClient, post_message


def send(client: WsClient, room: str, text: str) -> None:
    assert client.request("app::rooms:send", {"room": room, "text": text}) == {"room": room, "sent": True}


def history(client: WsClient, room: str) -> dict[str, Any]:
    reply = client.request("app::rooms:history", {"room": room})
    assert set(reply) == {"room", "messages", "owner"} and reply["room"] == room
    return reply  # type: ignore[no-any-return]


def texts(reply: dict[str, Any]) -> list[str]:
    return [message["text"] for message in reply["messages"]]


def stored(server: LiveServer, room: str) -> list[str]:
    """The texts of the room's stored snapshot (what survives the actor)."""
    snapshot = server.flamigo.actors.store.load("room", room)
    assert snapshot is not None
    return [message["text"] for message in snapshot[0]["messages"]]


def test_history_holds_what_both_paths_sent_in_order_with_the_pushes_values(demo_server: LiveServer) -> None:
    ann = demo_server.client("ann")
    try:
        ann.request("app::rooms:join", {"room": "h1"})
        assert history(ann, "h1")["messages"] == []
        send(ann, "h1", "one")
        assert stored(demo_server, "h1") == ["one"]  # stored before the reply
        post_message(demo_server, "bob", "h1", "two")
        assert stored(demo_server, "h1") == ["one", "two"]  # stored before the 202
        send(ann, "h1", "three")

        reply = history(ann, "h1")
        assert texts(reply) == ["one", "two", "three"]
        assert [m["user"] for m in reply["messages"]] == ["ann", "bob", "ann"]
        assert reply["owner"] == f"{socket.gethostname()}:{os.getpid()}"  # this process holds the room
        stamps = [m["ts"] for m in reply["messages"]]
        assert stamps == sorted(stamps)
        # The pushes carry exactly what the history keeps (plus the room), unchanged in format.
        pushes = [p["payload"] for p in ann.pushes("chat:message", count=3)]
        assert pushes == [{"room": "h1", **m} for m in reply["messages"]]
        # Another room's history is its own.
        assert history(ann, "h2")["messages"] == []
    finally:
        ann.close()


def test_history_keeps_the_last_fifty_messages_oldest_first(demo_server: LiveServer) -> None:
    ann = demo_server.client("ann")
    try:
        for n in range(1, 61):
            if n % 10 == 0:
                post_message(demo_server, "bob", "cap", f"m{n}")
            else:
                send(ann, "cap", f"m{n}")
        assert texts(history(ann, "cap")) == [f"m{n}" for n in range(11, 61)]
        snapshot = demo_server.flamigo.actors.store.load("room", "cap")
        assert snapshot is not None and snapshot[0]["count"] == 60
        assert len(snapshot[0]["messages"]) == 50
    finally:
        ann.close()


def test_concurrent_senders_each_appear_once_in_the_order_the_room_received_them(
    demo_server: LiveServer,
) -> None:
    watcher = demo_server.client("watcher")
    clients = [demo_server.client(f"user{n}") for n in range(4)]
    try:
        watcher.request("app::rooms:join", {"room": "race"})
        # Pipelined: every client sends 10 without waiting, then reads its acks.
        for n, client in enumerate(clients):
            for i in range(10):
                payload = {"room": "race", "text": f"{n}-{i}"}
                client.send_json({"topic": "app::rooms:send", "payload": payload, "ackId": i})
        for client in clients:
            acks = [client.recv_json() for _ in range(10)]
            assert [a["payload"] for a in acks] == [{"room": "race", "sent": True}] * 10
        pushed = [p["payload"]["text"] for p in watcher.pushes("chat:message", count=40, timeout=10)]
        kept = texts(history(watcher, "race"))
        assert sorted(kept) == sorted(f"{n}-{i}" for n in range(4) for i in range(10))  # each once
        assert kept == pushed  # the pushes go out in the room's order
        for n in range(4):  # per sender, in the order sent
            assert [t for t in kept if t.startswith(f"{n}-")] == [f"{n}-{i}" for i in range(10)]
    finally:
        for client in (watcher, *clients):
            client.close()


def test_history_refuses_a_bad_room_name_and_unauthenticated_callers(demo_server: LiveServer) -> None:
    ann = demo_server.client("ann")
    guest = demo_server.client()
    try:
        with pytest.raises(ErrorReply) as raised:
            ann.request("app::rooms:history", {"room": "no spaces"})
        assert raised.value.status == 422
        with pytest.raises(ErrorReply) as raised:
            guest.request("app::rooms:history", {"room": "lobby"})
        assert raised.value.status == 401
    finally:
        ann.close()
        guest.close()


def test_the_demo_can_run_its_rooms_without_recovery_and_presence(demo_app: Any, live_server: Any) -> None:
    # The benchmark's "plain" server: DEMO_RECOVERY=0 DEMO_PRESENCE=0 in the environment.
    probe = "from app.factory import DEFAULTS as d; print(d['DEMO_RECOVERY'], d['DEMO_PRESENCE'])"
    for env, seen in (({"DEMO_RECOVERY": "0", "DEMO_PRESENCE": "off"}, "False False"),
                      ({"DEMO_PRESENCE": "no"}, "True False"), ({}, "True True")):
        environ = {k: v for k, v in os.environ.items() if not k.startswith("DEMO_")}
        out = subprocess.run([sys.executable, "-c", probe], env={**environ, **env}, capture_output=True,
                             text=True, timeout=60, check=True).stdout
        assert out.split() == seen.split(), (env, out)
    with pytest.raises(TypeError, match="DEMO_PRESENCE must be True or False"):
        demo_app(DEMO_PRESENCE="0")

    server = live_server(demo_app(DEMO_RECOVERY=False, DEMO_PRESENCE=False))
    assert server.flamigo.bus.recovery is None  # the bus does not even look
    ann, bob = WsClient(server.ws_url), server.client("bob")
    try:
        auth = ann.request("app::websocket:auth", {"token": server.login("ann"), "recover": True})
        assert "session" not in auth  # nothing is recoverable
        assert ann.request("app::rooms:join", {"room": "quiet"}) == {"room": "quiet", "joined": True}
        assert bob.request("app::rooms:join", {"room": "quiet"}) == {"room": "quiet", "joined": True}
        assert bob.request("app::rooms:members", {"room": "quiet"}) == {"room": "quiet", "members": {}}
        assert server.flamigo.presence.topics() == []
        send(bob, "quiet", "hello")
        push = ann.pushes("chat:message")[0]
        assert push["payload"]["text"] == "hello" and "pos" not in push
        assert ann.pushes("presence:diff", timeout=0.5) == []  # nobody tracked: no diff
        assert bob.request("app::rooms:leave", {"room": "quiet"}) == {"room": "quiet", "joined": False}
    finally:
        ann.close()
        bob.close()


def test_the_demo_tracks_and_recovers_its_rooms_by_default(demo_server: LiveServer) -> None:
    ann = WsClient(demo_server.ws_url)
    try:
        auth = ann.request("app::websocket:auth", {"token": demo_server.login("ann"), "recover": True})
        assert auth["session"]
        reply = ann.request("app::rooms:join", {"room": "busy"})
        assert set(reply["members"]) == {"ann"} and reply["pos"]["offset"] == 0
    finally:
        ann.close()

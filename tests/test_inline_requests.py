"""A request handled in the reader's own greenlet (``FlamigoActor.run_here``), over real sockets.

With one request in flight and the connection's actor idle, the reader runs
the request itself instead of handing it to a runner greenlet. These tests
check that nothing of the mailbox's guarantees is lost: the run really
happens in the reader (checked, so the tests cannot pass on the mailbox
path), a strategy that blocks there hands reading to another greenlet
(heartbeats answered, later requests and pushes queued behind it and
answered in order), a connection never keeps more than one reading greenlet,
the client's close during such a run still gets the reply first, and frames
of every size parsed in place by the transport come out whole and in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import pytest
from flask import Flask

from app.chat import say
from flamigo_actors.runtime.engine import live_greenlets
from tests.rawws import OP_CLOSE, RawWs, close_payload, frame, text
from tests.reliability_app import create_app
from tests.support import LiveServer, eventually

PING = b'{"topic":"app::websocket:ping"}'
PONG = {"topic": "app::websocket:ping", "payload": {"pong": True}}


@pytest.fixture
def server(live_server: Callable[[Flask], LiveServer]) -> LiveServer:
    return live_server(create_app({"TESTING": True, "FLAMIGO_AUTH_REQUIRED": False}))


def connect(server: LiveServer, room: str | None = None) -> tuple[RawWs, Any]:
    known = set(server.flamigo.connections)
    ws = RawWs(server.port)
    if room is not None:
        assert ws.request("app::rooms:join", {"room": room}, ack="join")["payload"]["joined"]
    else:
        assert ws.request("app::echo", "hello", ack=0)["payload"] == "hello"
    (conn_id,) = set(server.flamigo.connections) - known
    return ws, server.flamigo.connections[conn_id]


def run_in_reader(conn: Any) -> bool:
    # A pooled runner is a bare greenlet; the reader is the server's handler
    # greenlet (a gevent.Greenlet): the actor's runner tells which one runs it.
    return isinstance(conn.actor._runner, gevent.Greenlet)


def held_in_reader(server: LiveServer, gate: str, room: str | None = None) -> tuple[RawWs, Any]:
    """A connection whose request "held" waits at ``gate``, run in the reader's greenlet."""
    gates = server.app.extensions["gates"]
    ws, conn = connect(server, room)
    eventually(conn.actor.idle)
    ws.send_json({"topic": "app::test:hold", "payload": {"gate": gate}, "ackId": "held"})
    eventually(lambda: gates.waiting.get(gate) == 1)
    assert run_in_reader(conn), "the request should run in the reader's greenlet"
    return ws, conn


def test_a_blocking_request_run_by_the_reader_hands_reading_over(server: LiveServer) -> None:
    flamigo = server.flamigo
    gates = server.app.extensions["gates"]
    ws, conn = held_in_reader(server, "g", room="tea")
    assert not conn.actor.idle()
    # Reading goes on meanwhile: the heartbeat is answered at once ...
    ws.send(frame(0x1, PING))  # the canonical bytes: the reader answers it itself
    assert ws.recv_json() == PONG
    # ... and a request and a push wait behind the held one, in order.
    ws.send_json({"topic": "app::echo", "payload": "behind", "ackId": "echo"})
    eventually(lambda: conn.mailbox_depth() == 1)
    delivered = flamigo.bus.stats.delivered
    flamigo.publish(say("tea", "bot", "during"))
    eventually(lambda: flamigo.bus.stats.delivered == delivered + 1)
    gates.open("g")
    first, second, third = ws.recv_json(), ws.recv_json(), ws.recv_json()
    assert (first.get("ackId"), first["payload"]) == ("held", {"released": "g"})
    assert (second.get("ackId"), second["payload"]) == ("echo", "behind")
    assert (third["topic"], third["payload"]["text"]) == ("chat:message", "during")
    # Idle again: the next request runs in the (new) reader too, and is answered.
    eventually(conn.actor.idle)
    assert ws.request("app::echo", "after", ack="after")["payload"] == "after"
    ws.close()
    eventually(lambda: not flamigo.connections)


def test_a_connection_keeps_one_reading_greenlet_however_often_it_hands_over(server: LiveServer) -> None:
    ws, conn = connect(server)
    # Warm up: the first hand-over starts the one reader that replaces the handler's.
    reply = ws.request("app::test:sleep", {"seconds": 0.001}, ack="warm")
    assert reply["ackId"] == "warm"
    before = len(live_greenlets())
    for n in range(40):  # each one yields in the reader: each hands reading over
        reply = ws.request("app::test:sleep", {"seconds": 0.001}, ack=n)
        assert (reply["ackId"], reply["payload"]) == (n, {"slept": 0.001})
    after = len(live_greenlets())
    assert after <= before + 2, f"reading greenlets pile up: {before} -> {after} after 40 hand-overs"
    assert ws.request("app::echo", "still here", ack="end")["payload"] == "still here"
    ws.close()
    eventually(lambda: not server.flamigo.connections)
    eventually(lambda: len(live_greenlets()) <= before)


def test_the_clients_close_during_a_blocking_request_comes_after_its_reply(server: LiveServer) -> None:
    gates = server.app.extensions["gates"]
    ws, conn = held_in_reader(server, "c")
    ws.send(frame(OP_CLOSE, close_payload(1000)))
    gevent.sleep(0.1)
    gates.open("c")
    ending = ws.read_until_close(timeout=10)
    assert [m.get("ackId") for m in ending.messages] == ["held"]
    assert ending.code == 1000 and ending.eof
    ws.drop()
    eventually(lambda: not server.flamigo.connections)


def test_frames_of_every_size_parsed_in_place_arrive_whole_and_in_order(server: LiveServer) -> None:
    ws, _ = connect(server)
    sizes = [0, 1, 100, 125, 126, 200, 4000, 65535 - 60, 60000, 3]
    frames = [
        text({"topic": "app::echo", "payload": "x" * size, "ackId": n}) for n, size in enumerate(sizes)
    ]
    burst = b"".join(frames)
    # In one write (parsed from one buffer), then byte runs cut across frame headers.
    ws.send(burst)
    for n, size in enumerate(sizes):
        reply = ws.recv_json()
        assert (reply["ackId"], len(reply["payload"])) == (n, size)
    for cut in (1, 3, 7, 333):
        for start in range(0, len(burst), cut * 997):
            ws.send(burst[start:start + cut * 997])
            gevent.sleep(0)
        for n, size in enumerate(sizes):
            reply = ws.recv_json()
            assert (reply["ackId"], len(reply["payload"])) == (n, size)
    # A binary frame taken in place is still refused by the envelope (text only), in order.
    ws.send(frame(0x2, b"\x00\x01") + frames[1])
    error, echo = ws.recv_json(), ws.recv_json()
    assert error["topic"] == "error" and echo["ackId"] == 1
    ws.close()


def test_a_client_gone_during_a_blocking_request_ends_the_connection_at_once(server: LiveServer) -> None:
    gates = server.app.extensions["gates"]
    ws, conn = held_in_reader(server, "d")
    ws.drop()  # a network drop: the reader that took over sees it, not the held strategy
    eventually(lambda: not conn.lifecycle.accepting)  # closing while the strategy still holds
    assert gates.waiting.get("d") == 1 and not gates.get("d").is_set()
    gates.open("d")
    eventually(lambda: not server.flamigo.connections)
    assert conn.client.close_code == 1006

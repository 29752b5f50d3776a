"""Ordering under the bus's idle fast path, over real sockets.

The bus writes a push straight to a connection's outbound queue when the
connection actor is idle (``FlamigoActor.idle()``), instead of queuing it in
the mailbox. That is only correct because (1) an actor inside a strategy,
even one that yields, is not idle, and (2) ``Outbound.push`` never yields, so
the bus's write cannot be overtaken. These tests fail if either changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import greenlet
import pytest
from flask import Flask

from app.chat import say
from tests.rawws import RawWs, text
from tests.reliability_app import create_app
from tests.support import LiveServer, eventually


@pytest.fixture
def server(live_server: Callable[[Flask], LiveServer]) -> LiveServer:
    return live_server(create_app({"TESTING": True, "FLAMIGO_AUTH_REQUIRED": False}))


def in_room(server: LiveServer, room: str) -> tuple[RawWs, Any]:
    known = set(server.flamigo.connections)
    ws = RawWs(server.port)
    assert ws.request("app::rooms:join", {"room": room}, ack="join")["payload"]["joined"]
    (conn_id,) = set(server.flamigo.connections) - known
    return ws, server.flamigo.connections[conn_id]


def test_a_push_published_during_a_yielding_strategy_arrives_after_its_reply(server: LiveServer) -> None:
    flamigo = server.flamigo
    gates = server.app.extensions["gates"]
    ws, conn = in_room(server, "tea")
    ws.send_json({"topic": "app::test:hold", "payload": {"gate": "g"}, "ackId": "held"})
    eventually(lambda: gates.waiting.get("g") == 1)  # the strategy is running, parked in a wait
    assert not conn.actor.idle()
    delivered = flamigo.bus.stats.delivered
    flamigo.publish(say("tea", "bot", "during"))
    eventually(lambda: flamigo.bus.stats.delivered == delivered + 1)  # routed to this connection
    gates.open("g")
    first, second = ws.recv_json(), ws.recv_json()
    assert (first.get("ackId"), first["payload"]) == ("held", {"released": "g"})
    assert (second["topic"], second["payload"]["text"]) == ("chat:message", "during")
    # Idle again: the next push takes the fast path and still arrives whole.
    eventually(conn.actor.idle)
    flamigo.publish(say("tea", "bot", "after"))
    assert ws.recv_json()["payload"]["text"] == "after"
    ws.close()


def test_1000_pushes_interleaved_with_1000_requests_keep_both_orders(server: LiveServer) -> None:
    flamigo = server.flamigo
    ws, conn = in_room(server, "tea")
    count = 1000
    received: list[dict[str, Any]] = []

    def read() -> None:
        while len(received) < 2 * count:
            received.append(ws.recv_json(timeout=30))

    def send_requests() -> None:
        for n in range(count):
            # Alternate a strategy that yields (the actor is busy across a switch)
            # with one that does not (the actor goes idle between requests).
            if n % 2:
                ws.send_json({"topic": "app::test:sleep", "payload": {"seconds": 0}, "ackId": n})
            else:
                ws.send(text({"topic": "app::echo", "payload": n, "ackId": n}))
            if n % 7 == 0:
                gevent.sleep(0)

    def publish() -> None:
        for n in range(count):
            flamigo.publish(say("tea", "bot", str(n)))
            if n % 5 == 0:
                gevent.sleep(0)

    reader = gevent.spawn(read)
    gevent.joinall([gevent.spawn(send_requests), gevent.spawn(publish)], raise_error=True)
    reader.get(timeout=60)
    replies = [m["ackId"] for m in received if "ackId" in m]
    pushes = [m["payload"]["text"] for m in received if m.get("topic") == "chat:message"]
    assert replies == list(range(count))
    assert pushes == [str(n) for n in range(count)]
    assert conn.client.messages_out >= 2 * count
    ws.close()


def test_outbound_push_never_yields_even_when_the_socket_is_full(
    live_server: Callable[[Flask], LiveServer],
) -> None:
    server = live_server(create_app({
        "TESTING": True, "FLAMIGO_AUTH_REQUIRED": False,
        "FLAMIGO_OUTBOUND_MAX_BYTES": 64 * 2**20, "FLAMIGO_OUTBOUND_MAX_MESSAGES": 100_000,
    }))
    ws, conn = in_room(server, "tea")  # then it stops reading: the socket buffers fill
    frame = b"\x81\x7e\x10\x00" + b"x" * 4096
    switches: list[Any] = []
    previous = greenlet.settrace(lambda event, args: switches.append(event))
    try:
        for _ in range(2000):  # 8 MiB: far more than loopback buffers hold
            conn.push(frame)
    finally:
        greenlet.settrace(previous)
    assert switches == []
    assert conn.outbound.depth > 0  # the queue path was taken, not only direct writes
    ws.drop()

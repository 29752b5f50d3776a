"""Slow consumers and backpressure over real sockets, counted rather than timed.

* A client that stops reading while pushes keep coming fills its outbound
  queue: it is closed with 1013, its disconnected event fires, the
  slow-consumer counter records it, every push it did not get is counted,
  and the other members of the room receive every single push.
* Pushes waiting in a busy connection's mailbox have the same kind of bound.
* Requests are read ahead only up to ``FLAMIGO_MAX_PENDING_REQUESTS``; beyond,
  the reader stops and TCP pushes back on the client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import pytest
from flask import Flask

from app.chat import say
from tests.census import back_to_baseline, quiet_census
from tests.rawws import RawWs, text
from tests.reliability_app import create_app
from tests.support import LiveServer, eventually




class RoomReader:
    """A client in a room reading every push as fast as it comes, in a greenlet."""

    def __init__(self, server: LiveServer, room: str) -> None:
        self.ws = RawWs(server.port)
        assert self.ws.request("app::rooms:join", {"room": room})["payload"]["joined"]
        self.texts: list[str] = []
        self._greenlet = gevent.spawn(self._read)

    def _read(self) -> None:
        while True:
            message = self.ws.recv_json(timeout=30)
            self.texts.append(message["payload"]["text"])

    def stop(self) -> None:
        self._greenlet.kill()
        self.ws.close()


@pytest.fixture
def reliability_server(live_server: Callable[[Flask], LiveServer]) -> Callable[..., LiveServer]:
    def start(**config: Any) -> LiveServer:
        return live_server(create_app({"TESTING": True, "FLAMIGO_AUTH_REQUIRED": False, **config}))

    return start


def only_new_connection(server: LiveServer, known: set[str]) -> Any:
    (conn_id,) = set(server.flamigo.connections) - known
    return server.flamigo.connections[conn_id]


def test_a_client_that_stops_reading_is_closed_with_1013_and_nothing_is_lost_silently(
    reliability_server: Callable[..., LiveServer],
) -> None:
    server = reliability_server(
        FLAMIGO_OUTBOUND_MAX_MESSAGES=20,
        FLAMIGO_OUTBOUND_MAX_BYTES=64 * 1024,
        FLAMIGO_CLOSE_TIMEOUT=60,  # the test resumes reading whenever it likes
    )
    flamigo = server.flamigo
    seen = server.disconnections()
    readers = [RoomReader(server, "tea") for _ in range(2)]
    baseline = quiet_census(flamigo, connections=2)
    known = set(flamigo.connections)
    slow = RawWs(server.port, rcvbuf=4096)  # then it never reads until the end
    assert slow.request("app::rooms:join", {"room": "tea"})["payload"]["joined"]
    slow_conn = only_new_connection(server, known)
    refused_before = flamigo.bus.stats.refused

    # Batches of 100 (the bus routes each batch before any connection runs)
    # until the slow client's outbound queue overflows.
    published = 0
    while flamigo.stats.slow_consumers == 0:
        for _ in range(100):
            flamigo.publish(say("tea", "bot", f"{published:06d} " + "x" * 300))
            published += 1
        gevent.sleep(0.001)
        assert published < 1_000_000, "the slow client was never disconnected"

    # The slow client reads at last: a prefix of the pushes, in order, then 1013.
    ending = slow.read_until_close(timeout=10)
    assert (ending.code, ending.reason) == (1013, "too slow: outbound queue full")
    assert ending.eof
    received = [m["payload"]["text"][:6] for m in ending.messages]
    assert received == [f"{n:06d}" for n in range(len(received))]
    assert 0 < len(received) < published

    event = eventually(lambda: next((e for e in seen if e.conn_id == slow_conn.client.conn_id), None))
    assert (event.code, event.reason) == (1013, "too slow: outbound queue full")
    assert flamigo.stats.slow_consumers == 1
    # Every push is accounted for: received, or counted as refused or dropped.
    lost = (flamigo.bus.stats.refused - refused_before) + slow_conn.outbound.refused + slow_conn.outbound.dropped
    assert len(received) + lost == published
    assert flamigo.stats.frames_dropped >= slow_conn.outbound.refused + slow_conn.outbound.dropped > 0

    # The other members received everything, in order.
    for reader in readers:
        eventually(lambda reader=reader: len(reader.texts) == published, timeout=30)
        assert [t[:6] for t in reader.texts] == [f"{n:06d}" for n in range(published)]
    back_to_baseline(flamigo, baseline)
    for reader in readers:
        reader.stop()


def test_deliveries_piling_up_in_a_busy_mailbox_close_with_1013(
    reliability_server: Callable[..., LiveServer],
) -> None:
    server = reliability_server(FLAMIGO_MAILBOX_MAX_DELIVERIES=10)
    flamigo = server.flamigo
    gates = server.app.extensions["gates"]
    seen = server.disconnections()
    reader = RoomReader(server, "tea")
    baseline = quiet_census(flamigo, connections=1)
    known = set(flamigo.connections)
    busy = RawWs(server.port)
    assert busy.request("app::rooms:join", {"room": "tea"})["payload"]["joined"]
    busy_conn = only_new_connection(server, known)
    busy.send_json({"topic": "app::test:hold", "payload": {"gate": "mailbox"}, "ackId": "held"})
    eventually(lambda: gates.waiting.get("mailbox") == 1)
    refused_before = flamigo.bus.stats.refused

    published = 15
    for n in range(published):
        flamigo.publish(say("tea", "bot", f"{n:06d}"))
    eventually(lambda: flamigo.stats.slow_consumers == 1)
    ending = busy.read_until_close(timeout=10)
    assert (ending.code, ending.reason) == (1013, "too slow: mailbox full")
    assert ending.messages == []

    gates.open("mailbox")  # the strategy finishes; its reply and the pushes have nowhere to go
    event = eventually(lambda: next((e for e in seen if e.conn_id == busy_conn.client.conn_id), None))
    assert (event.code, event.reason) == (1013, "too slow: mailbox full")
    # 10 pushes waited in the mailbox (refused once the connection was closed), the
    # rest were refused at the bus; plus the held request's reply.
    assert busy_conn.outbound.refused == 10 + 1
    assert flamigo.bus.stats.refused - refused_before == published - 10
    eventually(lambda: len(reader.texts) == published)
    assert reader.texts == [f"{n:06d}" for n in range(published)]
    back_to_baseline(flamigo, baseline)
    reader.stop()


def test_a_burst_from_one_greenlet_does_not_make_healthy_members_slow(
    reliability_server: Callable[..., LiveServer],
) -> None:
    """100 publishes without yielding, against a mailbox bound of 10: the bus routes
    them in one go, yet members that read are never taken for slow consumers."""
    server = reliability_server(FLAMIGO_MAILBOX_MAX_DELIVERIES=10)
    flamigo = server.flamigo
    readers = [RoomReader(server, "tea") for _ in range(3)]
    published = 100
    for n in range(published):
        flamigo.publish(say("tea", "bot", f"{n:06d}"))
    for reader in readers:
        eventually(lambda reader=reader: len(reader.texts) == published)
        assert reader.texts == [f"{n:06d}" for n in range(published)]
    assert flamigo.stats.slow_consumers == 0
    for reader in readers:
        reader.stop()


def test_requests_are_read_ahead_only_up_to_the_bound(reliability_server: Callable[..., LiveServer]) -> None:
    """Past FLAMIGO_MAX_PENDING_REQUESTS the reader stops: TCP, not memory, absorbs the rest."""
    server = reliability_server(FLAMIGO_MAX_PENDING_REQUESTS=8, FLAMIGO_PING_INTERVAL=0.1, FLAMIGO_PONG_TIMEOUT=0.3)
    flamigo = server.flamigo
    gates = server.app.extensions["gates"]
    ws = RawWs(server.port)
    ws.send_json({"topic": "app::test:hold", "payload": {"gate": "read-ahead"}, "ackId": "held"})
    eventually(lambda: gates.waiting.get("read-ahead") == 1)
    conn = next(iter(flamigo.connections.values()))
    count = 2000
    sender = gevent.spawn(
        ws.send, b"".join(text({"topic": "app::echo", "payload": n, "ackId": n}) for n in range(count))
    )
    eventually(lambda: conn.reader_paused)
    gevent.sleep(1.0)  # past the pong timeout: a paused reader is busy on our side, not silent
    assert conn.reader_paused and conn.client.state == "connected"
    assert conn.client.messages_in <= 1 + 8 + 1  # the held one, 8 read ahead, 1 waiting for a slot
    assert conn.mailbox_depth() <= 8
    gates.open("read-ahead")
    assert ws.recv_json(timeout=10)["ackId"] == "held"
    replies = [ws.recv_json(timeout=10) for _ in range(count)]
    assert [r["ackId"] for r in replies] == list(range(count))
    sender.get()
    ws.close()

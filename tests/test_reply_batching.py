"""Replies written together: a connection's actor corks its outbound queue while more messages wait.

Over real sockets: pipelined requests get every reply, in request order, and
the replies a drain wrote together never wait behind a strategy that blocks
(the cork's hub callback sends them when the actor yields). On a real socket
pair: corked frames go out in one send, count toward the queue's bounds, are
written before a close frame, and are counted as dropped when the peer is gone.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from flask import Flask

from flamigo_actors.websocket.outbound import Outbound
from tests.rawws import RawWs, text
from tests.reliability_app import create_app
from tests.support import LiveServer, eventually


@pytest.fixture
def server(live_server: Callable[[Flask], LiveServer]) -> LiveServer:
    return live_server(create_app({"TESTING": True, "FLAMIGO_AUTH_REQUIRED": False}))


def test_pipelined_requests_get_every_reply_in_order(server: LiveServer) -> None:
    ws = RawWs(server.port)
    for burst in range(5):  # each burst in one write: the actor finds them queued together
        ws.send(b"".join(text({"topic": "app::echo", "payload": [burst, n], "ackId": n}) for n in range(8)))
        for n in range(8):
            assert ws.recv_json() == {"topic": "app::echo", "payload": [burst, n], "ackId": n}
    ws.close()


def test_replies_written_before_a_blocking_strategy_are_not_held_behind_it(server: LiveServer) -> None:
    gates = server.app.extensions["gates"]
    ws = RawWs(server.port)
    ws.send(
        text({"topic": "app::echo", "payload": "before", "ackId": 1})
        + text({"topic": "app::test:hold", "payload": {"gate": "g"}, "ackId": 2})
        + text({"topic": "app::echo", "payload": "after", "ackId": 3})
    )
    # The gate opens only once the first reply arrived: held behind it, it never would.
    assert ws.recv_json() == {"topic": "app::echo", "payload": "before", "ackId": 1}
    eventually(lambda: gates.waiting.get("g") == 1)
    gates.open("g")
    assert ws.recv_json() == {"topic": "app::test:hold", "payload": {"released": "g"}, "ackId": 2}
    assert ws.recv_json() == {"topic": "app::echo", "payload": "after", "ackId": 3}
    ws.close()


class CountingTransport:
    """A real connected socket; counts the sends the queue makes."""

    remote_addr = "socketpair"

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sends = 0

    def receive(self) -> tuple[bool, bytes]:
        raise NotImplementedError  # the queue only writes

    def try_send(self, data: bytes | memoryview) -> int:
        self.sends += 1
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0

    def send_all(self, data: bytes | memoryview) -> None:
        self.sends += 1
        self.sock.sendall(data)

    def abort(self) -> None:
        self.sock.close()


@pytest.fixture
def pair() -> Iterator[tuple[CountingTransport, socket.socket]]:
    mine, peer = socket.socketpair()
    mine.setblocking(False)
    peer.settimeout(10)
    yield CountingTransport(mine), peer
    mine.close()
    peer.close()


def outbound(transport: CountingTransport, **bounds: Any) -> tuple[Outbound, list[str]]:
    events: list[str] = []
    queue = Outbound(
        transport,  # type: ignore[arg-type]
        max_messages=bounds.get("max_messages", 100),
        max_bytes=bounds.get("max_bytes", 1 << 20),
        on_overflow=lambda: events.append("overflow"),
        on_failure=lambda: events.append("failure"),
    )
    return queue, events


def read_exactly(peer: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = peer.recv(size - len(data))
        assert chunk, "the peer closed early"
        data += chunk
    return data


def test_corked_frames_go_out_in_one_send_in_order(pair: tuple[CountingTransport, socket.socket]) -> None:
    transport, peer = pair
    queue, events = outbound(transport)
    queue.cork()
    for n in range(5):
        assert queue.push(b"frame%d;" % n)
    assert transport.sends == 0 and queue.depth == 5 and queue.pending_bytes == 35
    queue.uncork()
    assert transport.sends == 1 and queue.depth == 0 and queue.pending_bytes == 0
    assert read_exactly(peer, 35) == b"frame0;frame1;frame2;frame3;frame4;"
    assert queue.sent == 5 and not events


def test_a_cork_is_never_held_past_a_yield(pair: tuple[CountingTransport, socket.socket]) -> None:
    transport, peer = pair
    queue, _ = outbound(transport)
    queue.cork()
    queue.push(b"held;")
    gevent.sleep(0)  # the hub runs the cork's callback
    assert transport.sends == 1 and read_exactly(peer, 5) == b"held;"
    assert queue.push(b"direct;") and transport.sends == 2  # uncorked: written at once


def test_corked_frames_count_toward_the_bounds(pair: tuple[CountingTransport, socket.socket]) -> None:
    transport, _ = pair
    queue, events = outbound(transport, max_messages=3)
    queue.cork()
    assert all(queue.push(b"x") for _ in range(3))
    assert not queue.push(b"x")
    assert events == ["overflow"] and queue.refused == 1 and queue.closed


def test_corked_frames_go_before_the_close_frame(pair: tuple[CountingTransport, socket.socket]) -> None:
    transport, peer = pair
    queue, _ = outbound(transport)
    queue.cork()
    queue.push(b"reply;")
    assert queue.finish(b"CLOSE", flush=True) is False  # all written: the socket is torn down
    assert read_exactly(peer, 11) == b"reply;CLOSE"


def test_corked_frames_are_counted_as_dropped_when_the_peer_is_gone(
    pair: tuple[CountingTransport, socket.socket],
) -> None:
    transport, _ = pair
    queue, _ = outbound(transport)
    queue.cork()
    queue.push(b"a")
    queue.push(b"bb")
    queue.stop()
    assert queue.dropped == 2 and queue.depth == 0 and queue.pending_bytes == 0
    queue.uncork()
    assert transport.sends == 0
    queue.cork()  # closed: nothing is held any more
    assert not queue.push(b"c") and queue.refused == 1


def test_a_cork_holds_at_most_cork_frames(pair: tuple[CountingTransport, socket.socket]) -> None:
    from flamigo_actors.websocket.outbound import CORK_FRAMES

    transport, peer = pair
    queue, _ = outbound(transport)
    queue.cork()
    for _ in range(CORK_FRAMES - 1):
        queue.push(b"f")
    assert transport.sends == 0
    queue.push(b"f")  # the last one a cork holds: all go out together
    assert transport.sends == 1 and queue.depth == 0
    assert read_exactly(peer, CORK_FRAMES) == b"f" * CORK_FRAMES
    queue.push(b"g")  # no longer corked
    assert transport.sends == 2

"""The reader waits for readable bytes before it reads (``SocketTransport._fill``).

The change must lose nothing: bytes that arrived with the upgrade request
(already in the handler's buffer when the reader starts), requests pipelined
in one write, and a request arriving long after the last one, are all read
and answered in order.
"""

from __future__ import annotations

import base64
import json
import os
import socket

import gevent

from tests.rawws import RawWs, text
from tests.support import LiveServer


def echo(n: int) -> bytes:
    return text({"topic": "app::echo", "payload": {"n": n, "text": "hi"}, "ackId": n})


def test_frames_sent_with_the_upgrade_request_are_answered_in_order(demo_server: LiveServer) -> None:
    port = int(demo_server.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    auth = text({"topic": "app::websocket:auth", "payload": {"token": demo_server.login("early")}, "ackId": 0})
    # One write: the frames arrive with the upgrade request.
    sock.sendall(upgrade + auth + echo(1) + echo(2) + echo(3))
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, "closed during the handshake"
        received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    replies = []
    while len(replies) < 4:
        while len(rest) < 2 or len(rest) < 2 + (rest[1] & 0x7F):
            chunk = sock.recv(65536)
            assert chunk, "closed before every reply"
            rest += chunk
        length = rest[1] & 0x7F
        assert length < 126
        replies.append(json.loads(rest[2:2 + length]))
        rest = rest[2 + length:]
    assert [r["ackId"] for r in replies] == [0, 1, 2, 3]
    assert [r["payload"] for r in replies[1:]] == [{"n": n, "text": "hi"} for n in (1, 2, 3)]
    sock.close()


def test_pipelined_and_late_requests_are_answered_in_order(demo_server: LiveServer) -> None:
    port = int(demo_server.url.rsplit(":", 1)[1])
    client = RawWs(port)
    try:
        assert client.request("app::websocket:auth", {"token": demo_server.login("late")}, ack=0)["ackId"] == 0
        client.send(b"".join(echo(n) for n in range(1, 51)))  # 50 requests in one write
        assert [client.recv_json()["payload"]["n"] for _ in range(50)] == list(range(1, 51))
        gevent.sleep(0.5)  # the reader is waiting on a quiet socket
        client.send(echo(51))
        assert client.recv_json()["payload"] == {"n": 51, "text": "hi"}
    finally:
        client.close()

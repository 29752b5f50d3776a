"""One machine, all its cores: the scaled-down ``conns75000`` (scripts/bench.py) as a test.

Two workers on one port share a real redis-server; 2,000 authenticated
connections come from two source addresses (127.0.0.1 and 127.0.0.2, as the
benchmark spreads 75,000 over four) and join one room; one broadcast to that
room reaches every one of them exactly once, whichever worker holds it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import gevent
import psutil
import pytest
from gevent.pool import Pool

from tests.rawws import RawWs
from tests.support import RedisServer, ServerProcess, eventually, free_port, post_message

CONNECTIONS = 2000
SOURCES = ("127.0.0.1", "127.0.0.2")
USERS = 20
ROOM = "everyone"


@pytest.fixture
def workers(redis_server: RedisServer) -> Iterator[ServerProcess]:
    # The rooms' presence off (DEMO_PRESENCE=0): this is about connections and one broadcast; with
    # it on, each join would also list the room and push a diff to every member (what presence costs
    # with thousands of joins is measured by scripts/bench_presence.py and tests/test_presence.py).
    server = ServerProcess.demo(free_port(), "--workers", "2", "--redis", redis_server.url,
                                env={"DEMO_PRESENCE": "0"})
    try:
        server.wait_ready(timeout=30)
        yield server
    finally:
        server.stop()


def connect(server: ServerProcess, n: int, token: str) -> RawWs:
    """Connection ``n``: from SOURCES[n % 2], authenticated, in the room."""
    client = RawWs(server.port, source=SOURCES[n % len(SOURCES)], timeout=60)
    reply = client.request("app::websocket:auth", {"token": token}, ack=1)
    assert reply.get("ackId") == 1 and reply["topic"] != "error", reply
    reply = client.request("app::rooms:join", {"room": ROOM}, ack=2)
    assert reply["payload"] == {"room": ROOM, "joined": True}, reply
    return client


def next_chat_text(client: RawWs) -> str:
    message = client.recv_json(timeout=60)
    assert message["topic"] == "chat:message", message
    return str(message["payload"]["text"])


def nothing_more(client: RawWs) -> bool:
    """Nothing buffered and nothing readable on the socket (checked without waiting)."""
    if client._buffer:
        return False
    client.sock.setblocking(False)
    try:
        return not client.sock.recv(1)  # b"": closed, so no message either
    except BlockingIOError:
        return True
    finally:
        client.sock.setblocking(True)


def test_two_workers_hold_two_thousand_connections_from_two_addresses_and_reach_each_once(
    workers: ServerProcess,
) -> None:
    tokens = [workers.login(f"crowd{i}") for i in range(USERS)]
    pool = Pool(100)
    clients: list[RawWs] = []
    try:
        clients.extend(pool.imap(lambda n: connect(workers, n, tokens[n % USERS]), range(CONNECTIONS)))
        assert Counter(c.sock.getsockname()[0] for c in clients) == {a: CONNECTIONS // 2 for a in SOURCES}

        # The kernel spread the accepts over both workers; together they hold all.
        arbiter = psutil.Process(workers.process.pid)
        eventually(lambda: len(arbiter.children()) == 2, timeout=20)
        # (address, port) pairs: a port number alone may also be Redis's.
        ends = {c.sock.getsockname()[:2] for c in clients}
        held = {
            w.pid: sum(1 for c in w.net_connections("tcp") if c.raddr and (c.raddr.ip, c.raddr.port) in ends)
            for w in arbiter.children()
        }
        assert sum(held.values()) == CONNECTIONS and all(held.values()), held

        post_message(workers, "crowd0", ROOM, "to everyone")
        assert Counter(pool.imap(next_chat_text, clients)) == {"to everyone": CONNECTIONS}
        # Exactly once: a duplicate of the first would come before this second one.
        post_message(workers, "crowd1", ROOM, "and again")
        assert Counter(pool.imap(next_chat_text, clients)) == {"and again": CONNECTIONS}
        gevent.sleep(1)  # and no late copy of either
        assert all(nothing_more(c) for c in clients)
    finally:
        for client in clients:
            client.drop()
        gevent.sleep(0)

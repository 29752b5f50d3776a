"""Scale out, with real processes: servers sharing a real redis-server, Redis faults, workers.

Every server here is ``python -m app`` in a child process on its own free
port; Redis is a real redis-server started by the ``redis_server`` fixture.
"""

from __future__ import annotations

import itertools
import signal
import socket
from collections.abc import Iterable
from typing import Any

import psutil
import pytest
import requests

from tests.support import (
    join_room,
    post_message,
    ErrorReply,
    RedisServer,
    ServerProcess,
    WsClient,
    eventually,
    free_port,
    nothing_arrives,
    worker_holding,
)

_texts = itertools.count(1)


def start_servers(*servers: ServerProcess) -> None:
    for server in servers:  # they boot concurrently; wait for each in turn
        server.wait_ready()


def joined(server: ServerProcess, username: str, room: str = "lobby") -> WsClient:
    client = server.client(username)
    client.request("app::rooms:join", {"room": room})
    return client


def say(client: WsClient, text: str, room: str = "lobby") -> None:
    assert client.request("app::rooms:send", {"room": room, "text": text}) == {"room": room, "sent": True}


def post(server: ServerProcess, username: str, text: str, room: str = "lobby") -> None:
    post_message(server, username, room, text)


def next_text(client: WsClient, timeout: float = 10.0) -> str:
    pushes = client.pushes("chat:message", count=1, timeout=timeout)
    assert pushes, "no chat message arrived"
    client.backlog[:0] = pushes[1:]  # pushes() hands over all it had kept aside: one at a time
    return str(pushes[0]["payload"]["text"])


def everyone_receives(clients: Iterable[WsClient], text: str, timeout: float = 10.0) -> None:
    for client in clients:
        assert next_text(client, timeout) == text


def nothing_else_before(clients: Iterable[WsClient], sender: WsClient) -> None:
    """Exactly once: a last message, sent after everything else crossed, is the next one everywhere.

    The stream is one ordered log, so a duplicate of any earlier message would
    reach a client before this one.
    """
    marker = f"end-{next(_texts)}"
    say(sender, marker)
    for client in clients:
        assert next_text(client) == marker


def connections(server: ServerProcess) -> int:
    return int(requests.get(f"{server.url}/healthz", timeout=5).json()["connections"])


def redis_links(pid: int, redis_port: int) -> int:
    """Established TCP connections from process ``pid`` to Redis."""
    return sum(
        1
        for c in psutil.Process(pid).net_connections("tcp")
        if c.raddr and c.raddr.port == redis_port and c.status == psutil.CONN_ESTABLISHED
    )


def two_servers_with_a_room(
    redis_server: RedisServer, processes: list[ServerProcess]
) -> tuple[ServerProcess, ServerProcess, tuple[WsClient, WsClient, WsClient]]:
    """Servers A and B on one Redis; alice and carol joined on A, bob on B."""
    a = ServerProcess.demo(free_port(), "--redis", redis_server.url)
    b = ServerProcess.demo(free_port(), "--redis", redis_server.url)
    processes += [a, b]
    start_servers(a, b)
    return a, b, (joined(a, "alice"), joined(a, "carol"), joined(b, "bob"))


def test_two_servers_deliver_each_others_messages_exactly_once(
    redis_server: RedisServer, processes: list[ServerProcess]
) -> None:
    a, b, (alice, carol, bob) = two_servers_with_a_room(redis_server, processes)
    members = [alice, carol, bob]

    post(b, "dave", "via HTTP on B")  # the Flask view on B
    everyone_receives(members, "via HTTP on B")
    say(bob, "via app::rooms:send on B")  # a strategy on B
    everyone_receives(members, "via app::rooms:send on B")
    say(alice, "via app::rooms:send on A")  # A's own clients get it locally, once
    everyone_receives(members, "via app::rooms:send on A")
    nothing_else_before(members, bob)
    nothing_else_before(members, alice)

    for client in members:
        client.close()
    eventually(lambda: connections(a) == 0 and connections(b) == 0)


def test_a_server_whose_app_uses_no_domain_actor_opens_no_actor_redis_connection(
    redis_server: RedisServer, processes: list[ServerProcess]
) -> None:
    a = ServerProcess.demo(free_port(), "--redis", redis_server.url)
    b = ServerProcess.demo(free_port(), "--redis", redis_server.url)
    processes += [a, b]
    start_servers(a, b)
    clients = [joined(a, "alice"), joined(b, "bob")]  # joining a room uses no room actor
    assert all(client.request("app::echo", {"n": 1}) == {"n": 1} for client in clients)
    for server in (a, b):
        # The backplane's (at most 3) and, as the demo tracks room members, presence's (2 pooled
        # and its diff subscription); the domain actors' Redis parts connect on first use (the
        # next test's servers, whose rooms are used, hold at most 8).
        assert redis_links(server.process.pid, redis_server.port) <= 6
    say(clients[0], "the room actor starts here")
    everyone_receives(clients, "the room actor starts here")


def test_redis_killed_and_restarted_while_both_servers_run(
    redis_server: RedisServer, processes: list[ServerProcess]
) -> None:
    a, b, (alice, carol, bob) = two_servers_with_a_room(redis_server, processes)
    say(bob, "before")
    everyone_receives([alice, carol, bob], "before")

    redis_server.kill()
    # A room stores each message in Redis before anyone hears it: while Redis is down,
    # a message is refused at once (503) on either server, and nobody receives it.
    for client in (alice, bob):
        with pytest.raises(ErrorReply) as raised:
            say(client, "during the outage")
        assert raised.value.status == 503
    # The servers keep their connections and serve new ones.
    assert connections(a) == 2 and connections(b) == 1
    late_joiner = a.client("erin")
    join_room(late_joiner, "lobby", "erin")
    # Presence needs no Redis on one server: erin's members there hear of her join, once (after
    # the diffs of the earlier joins, which may have been overtaken by the chat message).
    for client in (alice, carol):
        joins: dict[str, int] = {}
        while "erin" not in joins:
            pushes = client.pushes("presence:diff", timeout=10)
            assert pushes, "no presence diff announced erin"
            for push in pushes:
                assert not push["payload"]["leaves"], push
                for key, metas in push["payload"]["joins"].items():
                    joins[key] = joins.get(key, 0) + len(metas)
        assert joins["erin"] == 1, joins
    assert all(nothing_arrives(client) for client in (alice, carol, bob, late_joiner))

    redis_server.start()  # same port, empty: a restart without persistence
    # Once Redis is back (and each server's link to it), the room takes messages again
    # from both servers (503 until then: never run, so retrying cannot duplicate), once.
    eventually(lambda: said(alice, "A again"), timeout=20, interval=0.2)
    everyone_receives([alice, carol, late_joiner, bob], "A again")
    eventually(lambda: said(bob, "B again"), timeout=20, interval=0.2)
    everyone_receives([alice, carol, late_joiner, bob], "B again")
    nothing_else_before([alice, carol, late_joiner, bob], alice)
    nothing_else_before([alice, carol, late_joiner, bob], bob)

    # Neither server crashed or leaked: same processes, connections and Redis links back to normal.
    assert a.process.poll() is None and b.process.poll() is None
    for client in (alice, carol, late_joiner, bob):
        client.close()
    eventually(lambda: connections(a) == 0 and connections(b) == 0)
    for server in (a, b):
        # The backplane's (at most 3), the domain actors' (inbox reader, and its sender once used)
        # and presence's (at most 2, and its diff subscription; none until something is tracked
        # or listed, see tests/test_presence_redis.py).
        assert redis_links(server.process.pid, redis_server.port) <= 8
        server.signal(signal.SIGTERM)
        assert server.wait(15) == 0
        assert "lost Redis at" in server.log and "is back after" in server.log


def said(client: WsClient, text: str) -> bool:
    """Say ``text``; False when the room refused it at once (503: not run, so safe to retry)."""
    try:
        say(client, text)
    except ErrorReply as err:
        assert err.status == 503, err.payload
        return False
    return True


def test_two_workers_on_one_port_share_every_message(
    redis_server: RedisServer, processes: list[ServerProcess]
) -> None:
    server = ServerProcess.demo(free_port(), "--workers", "2", "--redis", redis_server.url)
    processes.append(server)
    server.wait_ready()
    arbiter = psutil.Process(server.process.pid)
    eventually(lambda: len(arbiter.children()) == 2, timeout=20)
    workers = arbiter.children()

    def worker_of(client: WsClient) -> int:
        return worker_holding(workers, client.ws.sock)

    # Open clients until both workers serve some (the kernel spreads the accepts).
    members: list[WsClient] = []
    served_by: dict[int, int] = {}
    for n in range(60):
        client = joined(server, f"user{n}")
        members.append(client)
        pid = worker_of(client)
        served_by[pid] = served_by.get(pid, 0) + 1
        if len(served_by) == 2 and len(members) >= 4:
            break
    assert set(served_by) == {w.pid for w in workers}, served_by

    texts = []
    for n, client in enumerate(members[:6]):
        texts.append(f"from member {n}")
        say(client, texts[-1])
    texts.append("via HTTP")
    post(server, "zoe", "via HTTP")
    for client in members:
        got = [next_text(client) for _ in texts]
        assert sorted(got) == sorted(texts)  # every message, once (order across senders may vary)
    nothing_else_before(members, members[-1])

    server.signal(signal.SIGTERM)  # the arbiter forwards it; each worker drains
    for client in members:
        assert client.wait_closed()[0] == 1001
    assert server.wait(20) == 0
    assert server.log.count("Worker exiting") == 2


def test_unreachable_redis_refuses_to_start(processes: list[ServerProcess]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    single = ServerProcess.demo(free_port(), "--redis", url)
    workers = ServerProcess.demo(free_port(), "--redis", url, "--workers", "2")
    no_redis = ServerProcess.demo(free_port(), "--workers", "2")
    processes += [single, workers, no_redis]
    assert single.wait(30) == 1
    assert f"error: cannot reach Redis at {url}" in single.log
    assert "FLAMIGO_REDIS_REQUIRED=false" in single.log
    assert workers.wait(30) != 0
    assert f"cannot reach Redis at {url}" in workers.log
    assert no_redis.wait(30) != 0
    assert "--workers 2 needs the Redis backplane" in no_redis.log


# -- rooms are domain actors: one Room per name across the servers ------------------------


def history(client: WsClient, room: str = "lobby") -> dict[str, Any]:
    reply = client.request("app::rooms:history", {"room": room})
    assert reply["room"] == room
    return reply  # type: ignore[no-any-return]


def node_of(server: ServerProcess) -> str:
    return f"{socket.gethostname()}:{server.process.pid}"


def test_two_servers_share_one_history_per_room(redis_server: RedisServer, processes: list[ServerProcess]) -> None:
    a, b, (alice, carol, bob) = two_servers_with_a_room(redis_server, processes)
    sent: list[str] = []
    for n in range(6):  # alternating servers and paths; each acknowledged before the next
        text = f"message {n}"
        if n % 3 == 0:
            say(alice, text)
        elif n % 3 == 1:
            say(bob, text)
        else:
            post(a if n % 2 else b, "dave", text)
        sent.append(text)

    on_a, on_b = history(carol), history(bob)
    assert on_a == on_b  # the same room whichever server is asked
    assert [m["text"] for m in on_a["messages"]] == sent  # each once, in the order received
    assert on_a["owner"] in {node_of(a), node_of(b)}
    for client in (alice, carol, bob):  # the pushes: each once, in the history's order
        assert [next_text(client) for _ in sent] == sent
    nothing_else_before([alice, carol, bob], bob)


def test_killing_the_rooms_owner_loses_no_acknowledged_message(
    redis_server: RedisServer, processes: list[ServerProcess]
) -> None:
    a, b, (alice, _, bob) = two_servers_with_a_room(redis_server, processes)
    say(alice, "first")
    owner_node = history(bob)["owner"]
    owner, survivor = (a, b) if owner_node == node_of(a) else (b, a)
    assert owner_node == node_of(owner)
    client_on_survivor = bob if survivor is b else alice
    acknowledged = ["first"]
    for n in range(20):  # acknowledged through both servers right up to the kill
        say(alice if n % 2 else bob, f"before the kill {n}")
        acknowledged.append(f"before the kill {n}")

    owner.process.kill()  # SIGKILL: no snapshot on the way out, no lease released
    owner.process.wait()

    def said_again() -> bool:  # until the lease expires, the room is unavailable (503/504), never wrong
        try:  # a call forwarded to the dead owner fails after the call timeout (10 s): wait longer
            reply = client_on_survivor.request("app::rooms:send", {"room": "lobby", "text": "after the kill"}, timeout=30)
        except ErrorReply as err:
            assert err.status in (503, 504), err.payload
            return False
        assert reply == {"room": "lobby", "sent": True}
        return True

    eventually(said_again, timeout=30, interval=0.2)
    reply = history(client_on_survivor)
    assert reply["owner"] == node_of(survivor)  # re-activated on the survivor ...
    assert [m["text"] for m in reply["messages"]] == [*acknowledged, "after the kill"]  # ... with all of it

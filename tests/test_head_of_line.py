"""Head-of-line blocking over real sockets: deferred replies and strategy time limits.

A strategy that blocks holds its connection's mailbox (that is the ordering
guarantee); one that hands its reply off with ``ctx.defer`` leaves the mailbox
free: later requests and pushes go through, and the reply comes later,
matched by its ackId. A time limit answers 504 instead of blocking forever,
for blocking and deferred strategies alike, and the connection is usable
afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from app.chat import say
from tests.census import back_to_baseline, quiet_census
from tests.rawws import RawWs
from tests.reliability_app import create_app
from tests.support import LiveServer, eventually, nothing_arrives


@pytest.fixture
def server(live_server: Callable[[Flask], LiveServer]) -> LiveServer:
    return live_server(create_app({"TESTING": True, "FLAMIGO_AUTH_REQUIRED": False}))


def echo(ws: RawWs, value: Any, ack: Any) -> None:
    ws.send_json({"topic": "app::echo", "payload": value, "ackId": ack})


def test_a_deferred_reply_leaves_the_mailbox_free(server: LiveServer) -> None:
    gates = server.app.extensions["gates"]
    ws = RawWs(server.port)
    assert ws.request("app::rooms:join", {"room": "tea"}, ack="join")["payload"]["joined"]
    for gate in ("first", "second"):
        ws.send_json({"topic": "app::test:defer", "payload": {"gate": gate}, "ackId": gate})
    eventually(lambda: gates.waiting.get("second") == 1)
    # meanwhile: requests are answered and pushes delivered
    for n in range(3):
        echo(ws, n, n)
        assert ws.recv_json() == {"topic": "app::echo", "payload": n, "ackId": n}
    server.flamigo.publish(say("tea", "bot", "while deferred"))
    assert ws.recv_json()["payload"]["text"] == "while deferred"
    # released in the other order: each reply carries its own request's ackId
    gates.open("second")
    assert ws.recv_json() == {"topic": "app::test:defer", "payload": {"released": "second"}, "ackId": "second"}
    gates.open("first")
    assert ws.recv_json() == {"topic": "app::test:defer", "payload": {"released": "first"}, "ackId": "first"}
    ws.close()


def test_a_blocking_strategy_holds_the_mailbox_in_order(server: LiveServer) -> None:
    """The contrast: without defer, later requests wait (replies stay in request order)."""
    gates = server.app.extensions["gates"]
    ws = RawWs(server.port)
    ws.send_json({"topic": "app::test:hold", "payload": {"gate": "held"}, "ackId": "held"})
    eventually(lambda: gates.waiting.get("held") == 1)
    echo(ws, "behind", 1)
    assert nothing_arrives(ws)
    gates.open("held")
    assert ws.recv_json()["ackId"] == "held"
    assert ws.recv_json() == {"topic": "app::echo", "payload": "behind", "ackId": 1}
    ws.close()


def test_a_deferred_failure_answers_500_without_internals(server: LiveServer) -> None:
    gates = server.app.extensions["gates"]
    ws = RawWs(server.port)
    ws.send_json({"topic": "app::test:defer-fail", "payload": {"gate": "fail"}, "ackId": "f"})
    eventually(lambda: "fail" in gates._gates)
    gates.open("fail")
    reply = ws.recv_json()
    assert reply == {"topic": "error", "payload": {"message": "internal error", "status": 500}, "ackId": "f"}
    echo(ws, "after", 2)
    assert ws.recv_json()["payload"] == "after"
    ws.close()


@pytest.mark.parametrize("topic", ["app::test:block", "app::test:defer-forever"])
def test_a_time_limit_answers_504_and_the_connection_carries_on(server: LiveServer, topic: str) -> None:
    baseline = quiet_census(server.flamigo, connections=0)
    ws = RawWs(server.port)
    ws.send_json({"topic": topic, "ackId": "stuck"})
    echo(ws, "queued", 1)
    replies = [ws.recv_json(timeout=10), ws.recv_json(timeout=10)]
    timed_out = {"topic": "error", "payload": {"message": "timed out", "status": 504}, "ackId": "stuck"}
    if topic == "app::test:block":
        # the blocked mailbox answered the queued request after the 504, in order
        assert replies == [timed_out, {"topic": "app::echo", "payload": "queued", "ackId": 1}]
    else:
        # the deferred one left the mailbox free: the queued request went first
        assert replies == [{"topic": "app::echo", "payload": "queued", "ackId": 1}, timed_out]
    for n in range(3):
        echo(ws, n, n)
        assert ws.recv_json()["payload"] == n
    ws.close()
    # the abandoned work (a sleeping greenlet) is gone too
    back_to_baseline(server.flamigo, baseline)


def test_the_default_time_limit_is_configurable(live_server: Callable[[Flask], LiveServer]) -> None:
    server = live_server(create_app({"FLAMIGO_AUTH_REQUIRED": False, "FLAMIGO_STRATEGY_TIMEOUT": 0.3}))
    ws = RawWs(server.port)
    ws.send_json({"topic": "app::test:sleep", "payload": {"seconds": 3600}, "ackId": 1})
    assert ws.recv_json(timeout=10)["payload"] == {"message": "timed out", "status": 504}
    assert ws.request("app::test:sleep", {"seconds": 0}, ack=2)["payload"] == {"slept": 0}
    ws.close()


def test_a_client_leaving_with_deferred_work_leaves_nothing_behind(server: LiveServer) -> None:
    """The deferred work and its 30 s time limit end with the connection, not 30 s later."""
    gates = server.app.extensions["gates"]
    baseline = quiet_census(server.flamigo, connections=0)
    clients = [RawWs(server.port) for _ in range(20)]
    for n, ws in enumerate(clients):
        ws.send_json({"topic": "app::test:defer", "payload": {"gate": "never"}, "ackId": n})
    eventually(lambda: gates.waiting.get("never") == 20)
    for ws in clients:
        ws.drop()
    back_to_baseline(server.flamigo, baseline, timeout=5)

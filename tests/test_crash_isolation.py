"""Crash isolation and supervision over real sockets.

A strategy's failure is a reply; a failure of a connection's own machinery
closes that connection only (1011); a failing listener or hook is logged and
the rest carries on; the bus actor is restarted with its subscriptions, so
clients in a room keep receiving pushes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pykka
import pytest
from flask import Flask

from app.chat import say
from flamigo_actors import Context
from tests.census import back_to_baseline, quiet_census
from tests.rawws import RawWs
from tests.reliability_app import create_app
from tests.support import LiveServer, eventually


@pytest.fixture
def server(live_server: Callable[[Flask], LiveServer]) -> LiveServer:
    return live_server(create_app({"TESTING": True, "FLAMIGO_AUTH_REQUIRED": False}))




def in_room(server: LiveServer, room: str) -> RawWs:
    ws = RawWs(server.port)
    assert ws.request("app::rooms:join", {"room": room}, ack="join")["payload"]["joined"]
    return ws


def test_a_strategy_calling_sys_exit_is_a_500_and_nothing_else_stops(server: LiveServer) -> None:
    """Pykka stops every actor on a BaseException: a strategy's SystemExit must not reach it."""
    actors = len(pykka.ActorRegistry.get_all())
    bystander = in_room(server, "tea")
    ws = RawWs(server.port)
    reply = ws.request("app::test:exit", ack="bye")
    assert reply == {"topic": "error", "payload": {"message": "internal error", "status": 500}, "ackId": "bye"}
    assert ws.request("app::echo", "still here")["payload"] == "still here"
    assert len(pykka.ActorRegistry.get_all()) == actors + 2
    server.flamigo.publish(say("tea", "bot", "bus alive"))
    assert bystander.recv_json()["payload"]["text"] == "bus alive"
    assert server.flamigo.bus.stats.restarts == 0


@pytest.mark.parametrize("failure", [RuntimeError("machinery bug"), SystemExit("machinery exit")])
def test_a_machinery_failure_closes_that_connection_only_with_1011(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    from flamigo_actors import connection as connection_module

    seen = server.disconnections()
    bystander = in_room(server, "tea")
    baseline = quiet_census(server.flamigo, connections=1)
    known = set(server.flamigo.connections)
    victim = in_room(server, "tea")
    (victim_id,) = set(server.flamigo.connections) - known
    real = connection_module.protocol.encode_reply

    def broken(topic: str, result: Any, ack_id: Any) -> bytes:
        if result == "crash":
            raise failure  # outside any strategy: the actor's own machinery fails
        return real(topic, result, ack_id)

    monkeypatch.setattr(connection_module.protocol, "encode_reply", broken)
    victim.send_json({"topic": "app::echo", "payload": "crash", "ackId": 1})
    ending = victim.read_until_close(timeout=10)
    assert (ending.code, ending.reason) == (1011, "internal error")
    assert "machinery" not in ending.reason
    event = eventually(lambda: next((e for e in seen if e.conn_id == victim_id), None))
    assert event.code == 1011
    # the actor left the registry, its subscription the bus; the rest carries on
    back_to_baseline(server.flamigo, baseline)
    assert bystander.request("app::echo", "unaffected", ack=2)["payload"] == "unaffected"
    server.flamigo.publish(say("tea", "bot", "after the crash"))
    assert bystander.recv_json()["payload"]["text"] == "after the crash"
    bystander.close()


def test_failing_hooks_and_listeners_are_isolated(
    live_server: Callable[[Flask], LiveServer], caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app({"TESTING": True, "FLAMIGO_AUTH_REQUIRED": False})
    flamigo = app.extensions["flamigo"]
    connects = {"n": 0}

    @flamigo.on_connect
    def second_one_fails(client: Any) -> None:
        connects["n"] += 1
        if connects["n"] == 2:
            raise RuntimeError("on_connect bug")

    @flamigo.on_disconnect
    def always_fails(client: Any) -> None:
        raise SystemExit("on_disconnect bug")

    heard: list[str] = []

    @flamigo.listen("rooms/*")
    def exits_on_boom(ctx: Context, event: Any) -> None:
        if event.text == "boom":
            raise SystemExit("listener bug")
        heard.append(event.text)

    server = live_server(app)
    seen = server.disconnections()
    first = in_room(server, "tea")
    second = RawWs(server.port)  # its on_connect hook fails: closed with 1011
    assert second.read_until_close(timeout=10).code == 1011
    # Its Connected was never published, so no Disconnected either (events come in pairs).
    eventually(lambda: len(server.flamigo.connections) == 1)
    third = in_room(server, "tea")
    with caplog.at_level(logging.ERROR):
        for text in ("one", "boom", "two"):
            server.flamigo.publish(say("tea", "bot", text))
        for ws in (first, third):
            assert [ws.recv_json()["payload"]["text"] for _ in range(3)] == ["one", "boom", "two"]
        eventually(lambda: heard == ["one", "two"])
    assert server.flamigo.bus.stats.listener_errors == 1
    assert "listener" in caplog.text and "on_connect" in caplog.text
    assert seen == []
    first.close()
    eventually(lambda: [e.code for e in seen] == [1000])  # on_disconnect failed, the event still fired


@pytest.mark.parametrize("how", ["stopped", "crashed"])
def test_the_bus_actor_is_restarted_and_rooms_keep_receiving(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    flamigo = server.flamigo
    alice, bob = in_room(server, "tea"), in_room(server, "tea")
    flamigo.publish(say("tea", "bot", "before"))
    for ws in (alice, bob):
        assert ws.recv_json()["payload"]["text"] == "before"
    first = flamigo.bus.actor_urn()
    with caplog.at_level(logging.ERROR, logger="flamigo_actors.bus"):
        if how == "stopped":
            pykka.ActorRegistry.get_by_urn(first).stop()
        else:
            real_route = flamigo.bus._route

            def route_crashing_once(message: Any) -> None:
                monkeypatch.setattr(flamigo.bus, "_route", real_route)
                raise RuntimeError("router bug")

            monkeypatch.setattr(flamigo.bus, "_route", route_crashing_once)
            flamigo.publish(say("tea", "bot", "routed again"))  # the one being routed when it crashed
        eventually(lambda: flamigo.bus.stats.restarts == 1)
        if how == "crashed":  # not lost: routed again by the restarted actor
            for ws in (alice, bob):
                assert ws.recv_json()["payload"]["text"] == "routed again"
    assert flamigo.bus.actor_urn() != first
    assert "restarting it with its subscriptions" in caplog.text
    for n in range(3):
        flamigo.publish(say("tea", "bot", f"after {n}"))
    for ws in (alice, bob):
        assert [ws.recv_json()["payload"]["text"] for _ in range(3)] == ["after 0", "after 1", "after 2"]
    # the restarted bus serves new subscriptions and the lifecycle events too
    carol = in_room(server, "tea")
    seen = server.disconnections()
    flamigo.publish(say("tea", "bot", "to three"))
    for ws in (alice, bob, carol):
        assert ws.recv_json()["payload"]["text"] == "to three"
    carol.close()
    eventually(lambda: len(seen) == 1)
    assert flamigo.bus.stats.restarts == 1


def test_a_delivery_crashing_the_bus_loses_nothing_for_the_rest_of_the_room(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: the event in flight was lost and publish_sync waited out its whole timeout."""
    flamigo = server.flamigo
    alice = in_room(server, "tea")
    known = set(flamigo.connections)
    victim = in_room(server, "tea")
    (victim_id,) = set(flamigo.connections) - known
    carol = in_room(server, "tea")
    subscriber = next(
        s.subscriber for s in flamigo.bus.subscriptions() if victim_id in s.subscriber.describe()
    )

    def deliver_crashing(*args: Any) -> bool:
        raise RuntimeError("delivery bug")

    monkeypatch.setattr(subscriber, "deliver", deliver_crashing)
    refused = flamigo.bus.stats.refused
    with caplog.at_level(logging.ERROR, logger="flamigo_actors.bus"):
        flamigo.publish_sync(say("tea", "bot", "in flight"), timeout=10)  # returns, no 504
    assert flamigo.bus.stats.restarts == 1
    assert flamigo.bus.stats.refused == refused + 1
    assert f"connection:{victim_id}" in caplog.text and "counted refused" in caplog.text
    monkeypatch.undo()
    flamigo.publish(say("tea", "bot", "next"))
    # the others got the event in flight exactly once, then the next one; the victim only the next
    for ws in (alice, carol):
        assert [ws.recv_json()["payload"]["text"] for _ in range(2)] == ["in flight", "next"]
    assert victim.recv_json()["payload"]["text"] == "next"
    for ws in (alice, victim, carol):
        ws.close()

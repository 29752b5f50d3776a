"""Domain actors inside an application: strategies returning futures over a real
WebSocket, ``ctx.actors``, the inspection endpoint, the shell helpers, shutdown,
settings, and a soak of activate/passivate cycles that leaves nothing behind."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
import requests
from flask import Flask, request
from gevent.event import Event

from flamigo_actors import ClientMessageEvent, Context, DomainActor, Flamigo, Registry, StrategyContext
from flamigo_actors.runtime.engine import live_greenlets
from tests.support import ErrorReply, LiveServer, eventually

gate = Event()


class Ledger(DomainActor):
    kind = "test-ledger"

    def on_activate(self, key, state):
        self.entries = list(state or [])

    def snapshot(self):
        return self.entries

    def append(self, entry):
        self.entries.append(entry)
        self.persist()
        return len(self.entries)

    def slow(self):
        gate.wait(30)
        return "slow done"

    def never(self):
        gate.wait(30)


strategies = Registry()


@strategies.strategy("app::ledger:append")
def append(ctx: StrategyContext) -> Any:
    return ctx.actors.get(Ledger, ctx.payload["ledger"]).ask("append", ctx.payload["entry"])


@strategies.strategy("app::ledger:slow")
def slow(ctx: StrategyContext) -> Any:
    return ctx.actors.get(Ledger, "slow").ask("slow")


@strategies.strategy("app::ledger:never", timeout=0.5)
def never(ctx: StrategyContext) -> Any:
    return ctx.actors.get(Ledger, "never").ask("never")


@strategies.strategy("app::ledger:fail")
def fail(ctx: StrategyContext) -> Any:
    return ctx.actors.get(Ledger, "fail").ask("append", {1, 2})  # not JSON-able: persist raises


@strategies.strategy("app::echo")
def echo(ctx: StrategyContext) -> Any:
    return ctx.payload


def make_app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(config)
    flamigo = Flamigo(app, strategies=strategies)

    @app.post("/ledger/<key>")
    def post_entry(key: str) -> Any:  # a plain Flask view calls an actor the same way
        return {"count": flamigo.actors.get(Ledger, key).ask("append", request.get_json()).get()}

    @flamigo.listen("ledger/*")
    def on_entry(ctx: Context, event: ClientMessageEvent) -> None:  # so does a listener, via ctx.actors
        ctx.actors.get(Ledger, "from-listener").ask("append", event.payload).get()

    return app


@pytest.fixture
def server(live_server: Callable[[Flask], LiveServer]) -> Iterator[LiveServer]:
    gate.clear()
    yield live_server(make_app(FLAMIGO_INSPECT_ENABLED=True))
    gate.set()  # nothing left waiting


def test_a_strategy_returning_a_future_replies_when_it_resolves(server: LiveServer) -> None:
    client = server.client()
    try:
        assert client.request("app::ledger:append", {"ledger": "l1", "entry": "a"}) == 1
        assert client.request("app::ledger:append", {"ledger": "l1", "entry": "b"}) == 2
        with pytest.raises(ErrorReply) as raised:
            client.request("app::ledger:fail")
        assert raised.value.status == 500
        assert server.flamigo.call("app::ledger:append", {"ledger": "l1", "entry": "c"}) == 3
    finally:
        client.close()


def test_views_and_listeners_call_actors_too(server: LiveServer) -> None:
    for n in (1, 2):
        response = requests.post(f"{server.url}/ledger/http", json={"n": n}, timeout=5)
        assert response.status_code == 200 and response.json() == {"count": n}
    server.flamigo.publish(ClientMessageEvent(("ledger/a",), "ledger:entry", "via the bus"))
    ref = server.flamigo.actors.get(Ledger, "from-listener")
    eventually(lambda: ref.ask("snapshot").get() == ["via the bus"])


def test_a_slow_actor_call_does_not_hold_the_connection(server: LiveServer) -> None:
    client = server.client()
    try:
        client.send_json({"topic": "app::ledger:slow", "payload": None, "ackId": "slow"})
        # The connection's mailbox is free: the next request is answered first.
        assert client.request("app::echo", "meanwhile") == "meanwhile"
        gate.set()
        reply = client.recv_json()
        assert reply["ackId"] == "slow" and reply["payload"] == "slow done"
    finally:
        client.close()


def test_the_strategy_time_limit_applies_to_a_future(server: LiveServer) -> None:
    client = server.client()
    try:
        with pytest.raises(ErrorReply) as raised:
            client.request("app::ledger:never")
        assert raised.value.status == 504
        assert client.request("app::echo", "alive") == "alive"
    finally:
        client.close()


def test_inspection_and_shell_helpers_show_domain_actors(server: LiveServer) -> None:
    from flamigo_actors.ops.shell import namespace

    flamigo = server.flamigo
    for key in ("x", "y"):
        flamigo.actors.get(Ledger, key).ask("append", key).get()
    client = server.client()
    try:
        client.send_json({"topic": "app::ledger:slow", "payload": None, "ackId": 1})
        eventually(lambda: "slow" in {row["key"] for row in flamigo.actors.describe()})
        for n in range(3):  # queued behind the slow call
            flamigo.actors.get(Ledger, "slow").tell("append", n)
        doc = requests.get(f"{server.url}/_flamigo/inspect", timeout=5).json()
        domain = doc["stats"]["domain_actors"]
        assert domain["per_kind"] == {"test-ledger": 3} and domain["active"] == 3
        assert domain["busiest"][0] == {"kind": "test-ledger", "key": "slow", "mailbox": 3}
        assert domain["activations"] == 3 and domain["asks"] >= 3
        kinds = {k["kind"]: k for k in doc["actor_kinds"]}  # the dashboard's table
        assert kinds["domain:test-ledger"] == {"kind": "domain:test-ledger", "count": 3, "mailbox": 3, "max_mailbox": 3}
        assert doc["domain_busiest"] == [{"kind": "test-ledger", "key": "slow", "mailbox": 3}]
        names = namespace(flamigo, live=True)
        rows = {row["key"]: row for row in names["actors"]() if row["kind"] == "test-ledger"}
        assert set(rows) == {"x", "y", "slow"}
        assert rows["slow"]["mailbox"] == 3 and rows["x"]["owner"] == flamigo.actors.node_id
        assert rows["x"]["restarts"] == 0 and rows["x"]["activated_at"] and rows["x"]["last_message_at"]
        assert names["call"](names["actor"]("test-ledger", "x"), "append", "by shell") == 2
        assert names["call"](flamigo.actors.get(Ledger, "x"), "snapshot") == ["x", "by shell"]
        assert "test-ledger" in repr(names["actors"]())
        gate.set()
        assert client.recv_json()["payload"] == "slow done"
    finally:
        client.close()


def test_shutdown_stores_every_snapshot(live_server: Callable[[Flask], LiveServer]) -> None:
    app = make_app()
    server = live_server(app)
    flamigo = server.flamigo
    ref = flamigo.actors.get(Ledger, "kept")
    ref.ask("append", "one").get()
    flamigo.shutdown(timeout=2)
    assert flamigo.actors.store.load("test-ledger", "kept") == (["one"], 1)
    assert len(flamigo.actors) == 0 and flamigo.actors.stats.passivations == 1


def test_actor_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="FLAMIGO_ACTOR_CALL_TIMEOUT must be positive"):
        make_app(FLAMIGO_ACTOR_CALL_TIMEOUT=0)
    with pytest.raises(ValueError, match="FLAMIGO_ACTOR_MAILBOX_MAX must be an integer"):
        make_app(FLAMIGO_ACTOR_MAILBOX_MAX="lots")
    flamigo = make_app(FLAMIGO_ACTOR_CALL_TIMEOUT=2.5, FLAMIGO_ACTOR_MAILBOX_MAX=7).extensions["flamigo"]
    assert (flamigo.actors.call_timeout, flamigo.actors.mailbox_max) == (2.5, 7)
    defaults = make_app().extensions["flamigo"].actors
    assert (defaults.call_timeout, defaults.mailbox_max) == (10.0, 10_000)


class Blip(DomainActor):
    kind = "test-blip"
    idle_timeout = 0.05

    def on_activate(self, key, state):
        self.n = state or 0

    def snapshot(self):
        return self.n

    def bump(self):
        self.n += 1
        return self.n


def test_ten_thousand_activate_passivate_cycles_leave_nothing_behind() -> None:
    from flamigo_actors.runtime.actor_space import ActorSpace

    space = ActorSpace()
    gevent.sleep(0.1)
    before = len(live_greenlets())
    rounds, width = 10, 1000
    for round_ in range(rounds):
        futures = [space.get(Blip, f"k{i}").ask("bump") for i in range(width)]
        assert [f.get(timeout=30) for f in futures] == [round_ + 1] * width  # from the snapshot
        eventually(lambda: len(space) == 0, timeout=30, interval=0.05)
    assert space.stats.passivations == rounds * width
    assert space.stats.activations == rounds * width
    assert space.leases() == [] and space.activations() == []
    assert not space._idle or all(not order for order in space._idle.values())
    eventually(lambda: space._sweeper is None, timeout=5)
    eventually(lambda: len(live_greenlets()) <= before, timeout=5)

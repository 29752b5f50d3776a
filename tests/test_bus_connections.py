"""The bus and connections together: publish_sync to clients, deadlocks from strategies."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask

from flamigo_actors import ClientMessageEvent, DeadlockError, Registry, StrategyContext
from tests.support import LiveServer, nothing_arrives

strategies = Registry()


@strategies.strategy("app::join")
def join(ctx: StrategyContext) -> str:
    ctx.identity.subscribe(ctx.payload)
    return "ok"


@strategies.strategy("app::shout-sync")
def shout_sync(ctx: StrategyContext) -> str:
    try:
        ctx.publish_sync(ClientMessageEvent((ctx.payload,), "shout", "hi"), timeout=5)
    except DeadlockError as err:
        return f"refused: {err}"
    return "delivered"


def make_app() -> Flask:
    from flamigo_actors import Flamigo

    app = Flask("bus-connections")
    Flamigo(app, strategies=strategies)
    return app


def test_publish_sync_returns_once_clients_have_their_push(live_server: Callable[[Flask], LiveServer]) -> None:
    server = live_server(make_app())
    listeners = [server.client() for _ in range(3)]
    for client in listeners:
        client.request("app::join", "news")
    server.flamigo.publish_sync(ClientMessageEvent(("news",), "headline", {"n": 1}))
    assert server.flamigo.bus.stats.delivered == 3
    for client in listeners:
        assert client.pushes("headline") == [{"topic": "headline", "payload": {"n": 1}}]


def test_publish_sync_from_a_strategy_to_its_own_topic_is_refused(live_server: Callable[[Flask], LiveServer]) -> None:
    server = live_server(make_app())
    client = server.client()
    other = server.client()
    client.request("app::join", "room")
    other.request("app::join", "room")
    answer = client.request("app::shout-sync", "room")
    assert answer.startswith("refused: publish_sync: deadlock") and "itself a subscriber" in answer
    # the refused publish went nowhere; a publish to a topic the caller is not on works
    assert nothing_arrives(other)
    client.request("app::join", "elsewhere-not")
    assert other.request("app::shout-sync", "elsewhere-not") == "delivered"
    assert client.pushes("shout") == [{"topic": "shout", "payload": "hi"}]


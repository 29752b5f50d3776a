"""The contract in-process: declarations, output checks (replies and pushes), the documents, the endpoint."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
import requests
from flask import Flask
from pydantic import BaseModel

from flamigo_actors import (
    ClientMessageEvent,
    ContractViolation,
    DomainActor,
    Flamigo,
    FlamigoError,
    Registry,
    StrategyContext,
    TestClientError,
    asyncapi_document,
    json_schema_document,
    status_of,
)

from .support import LiveServer, WsClient


class Point(BaseModel):
    x: int
    y: int


class Label(BaseModel):
    """A labelled point, pushed as shape:label."""

    text: str
    at: Point


class Echo(DomainActor):
    kind = "echo"

    def say(self, value: Any) -> Any:
        return value


def contract_registry() -> Registry:
    strategies = Registry("app")

    @strategies.strategy("app::shapes:point", reply=Point, errors={404: "no such shape"})
    def point(ctx: StrategyContext) -> Any:
        """Answer the payload as the reply: the test picks right and wrong shapes."""
        return ctx.payload

    @strategies.strategy("app::shapes:later", reply=Point)
    def later(ctx: StrategyContext) -> None:
        value = ctx.payload
        ctx.defer(lambda: value)

    @strategies.strategy("app::shapes:actor", reply=Point)
    def actor(ctx: StrategyContext) -> Any:
        return ctx.actors.get(Echo, "one").ask("say", ctx.payload)

    @strategies.strategy("app::shapes:label", payload=Label)
    def label(ctx: StrategyContext) -> dict[str, bool]:
        """Push a label to the shapes topic, as given (right or wrong)."""
        ctx.publish(ClientMessageEvent(("shapes",), "shape:label", ctx.payload))
        return {"pushed": True}

    @strategies.strategy("app::shapes:other")
    def other(ctx: StrategyContext) -> dict[str, bool]:
        ctx.publish(ClientMessageEvent(("shapes",), "shape:other", {"any": "thing"}))
        return {"pushed": True}

    @strategies.strategy("app::shapes:subscribe")
    def subscribe(ctx: StrategyContext) -> None:
        ctx.identity.subscribe("shapes")  # type: ignore[attr-defined]

    strategies.client_event("shape:label", Label, topics=("shapes",))
    return strategies


@pytest.fixture
def make_app() -> Iterator[Callable[..., Flask]]:
    built: list[Flask] = []

    def build(**options: Any) -> Flask:
        app = Flask("contract_app")
        Flamigo(app, strategies=contract_registry(), **options)
        built.append(app)
        return app

    yield build
    for app in built:
        app.extensions["flamigo"].shutdown(timeout=1)


# -- declaring ---------------------------------------------------------------------------


def test_a_strategy_keeps_its_reply_errors_and_summary_and_include_copies_them() -> None:
    strategies = contract_registry()
    point = strategies.get("app::shapes:point")
    assert point is not None
    assert point.reply is Point and dict(point.errors) == {404: "no such shape"}
    assert point.doc == "Answer the payload as the reply: the test picks right and wrong shapes."
    copy = Registry("app")
    copy.include(strategies)
    copied = copy.get("app::shapes:point")
    assert copied is not None and copied.reply is Point and copied.errors == point.errors
    assert copy.events.get("shape:label") is not None


@pytest.mark.parametrize(
    "errors, message",
    [({200: "fine"}, "not an error status"), ({404: ""}, "needs a description"), ({True: "x"}, "not an error status")],
)
def test_declared_statuses_must_be_error_statuses_with_a_meaning(errors: dict[Any, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Registry("app").register("app::x:y", lambda ctx: None, errors=errors)


@pytest.mark.parametrize("topic", ["", "error", "app::rooms:send", "chat message", "chat:"])
def test_a_malformed_or_reserved_client_topic_is_refused(topic: str) -> None:
    with pytest.raises(ValueError, match="invalid client topic"):
        Registry("app").client_event(topic, Label)


def test_a_client_event_is_declared_once_with_valid_bus_patterns() -> None:
    strategies = Registry("app")
    strategies.client_event("chat:message", Label, topics=("rooms/*",))
    with pytest.raises(ValueError, match="already declared"):
        strategies.client_event("chat:message", Label)
    with pytest.raises(ValueError, match="bad bus topic pattern"):
        strategies.client_event("chat:other", Label, topics=("rooms//x",))
    assert strategies.events.get("chat:message").bus_topics == ("rooms/*",)  # type: ignore[union-attr]


# -- output checks -------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["app::shapes:point", "app::shapes:later", "app::shapes:actor"])
def test_in_tests_a_wrong_reply_is_a_500_naming_the_strategy_and_the_field(
    make_app: Callable[..., Flask], strategy: str
) -> None:
    flamigo = make_app().extensions["flamigo"]
    with flamigo.test_client() as client:
        assert client.request(strategy, {"x": 1, "y": 2}) == {"x": 1, "y": 2}
        with pytest.raises(TestClientError) as caught:
            client.request(strategy, {"x": 1, "why": 2})
        assert caught.value.status == 500
        message = caught.value.public or ""
        assert f"reply of {strategy}" in message and "Point" in message and "y: Field required" in message
        with pytest.raises(TestClientError, match="x: Input should be a valid integer"):
            client.request(strategy, {"x": "1", "y": 2})  # the client would get a string: refused
        assert client.request(strategy, {"x": 3, "y": 4}) == {"x": 3, "y": 4}  # the connection goes on


def test_flamigo_call_fails_loudly_too(make_app: Callable[..., Flask]) -> None:
    flamigo = make_app(check_output=True).extensions["flamigo"]
    assert flamigo.call("app::shapes:later", {"x": 1, "y": 1}) == {"x": 1, "y": 1}
    with pytest.raises(FlamigoError) as caught:
        flamigo.call("app::shapes:later", {"x": 1})
    assert status_of(caught.value) == 500 and isinstance(caught.value.__cause__, ContractViolation)
    assert "reply of app::shapes:later" in str(caught.value) and "y: Field required" in str(caught.value)


def test_in_tests_a_wrong_push_fails_its_publisher_and_reaches_nobody(make_app: Callable[..., Flask]) -> None:
    flamigo = make_app().extensions["flamigo"]
    with flamigo.test_client() as listener, flamigo.test_client() as client:
        listener.request("app::shapes:subscribe")
        right = {"text": "origin", "at": {"x": 0, "y": 0}}
        client.request("app::shapes:label", right)
        assert [p["payload"] for p in listener.pushes("shape:label", wait=5)] == [right]
        with pytest.raises(TestClientError) as caught:
            client.request("app::shapes:label", {"text": "bad", "at": {"x": 0, "y": "0"}}, timeout=5)
        assert caught.value.status == 500
        assert "push shape:label" in (caught.value.public or "") and "at.y" in (caught.value.public or "")
        listener.request("app::websocket:ping")  # anything pushed before this reply has arrived
        assert listener.pushes("shape:label") == []


def test_an_undeclared_push_works_and_the_contract_lists_it_untyped(make_app: Callable[..., Flask]) -> None:
    flamigo = make_app().extensions["flamigo"]
    with flamigo.test_client() as listener:
        listener.request("app::shapes:subscribe")
        listener.request("app::shapes:other")
        assert listener.pushes("shape:other", wait=5)[0]["payload"] == {"any": "thing"}
    document = asyncapi_document(flamigo)
    [operation] = [op for op in document["operations"].values() if op["title"] == "shape:other"]
    assert operation["action"] == "send" and operation["x-flamigo-untyped"] is True
    assert operation["x-flamigo-declared"] is False


def test_in_production_nothing_is_checked_and_replies_are_unchanged(
    make_app: Callable[..., Flask], live_server: Callable[[Flask], LiveServer]
) -> None:
    server = live_server(make_app())  # debug off, not testing: checks off
    assert server.flamigo.strategies.checks_output is False
    client = WsClient(server.ws_url)
    try:
        assert client.request("app::shapes:point", {"x": 1, "why": 2}) == {"x": 1, "why": 2}
        assert client.request("app::shapes:actor", {"x": "1"}) == {"x": "1"}
    finally:
        client.close()


def test_in_debug_mode_a_live_server_answers_a_wrong_reply_with_a_500(
    make_app: Callable[..., Flask], live_server: Callable[[Flask], LiveServer]
) -> None:
    server = live_server(make_app(debug=True))
    client = WsClient(server.ws_url)
    try:
        client.send_json({"topic": "app::shapes:actor", "payload": {"x": 1}, "ackId": 7})
        reply = client.recv_json()
        assert reply["topic"] == "error" and reply["ackId"] == 7
        assert reply["payload"]["status"] == 500
        assert "reply of app::shapes:actor" in reply["payload"]["message"]
        assert "y: Field required" in reply["payload"]["message"]
    finally:
        client.close()


def test_the_setting_can_turn_checks_off_even_for_the_test_client(make_app: Callable[..., Flask]) -> None:
    flamigo = make_app(check_output=False).extensions["flamigo"]
    with flamigo.test_client() as client:
        assert client.request("app::shapes:point", {"wrong": True}) == {"wrong": True}


# -- the documents ---------------------------------------------------------------------------


def test_every_registered_strategy_and_event_of_the_demo_is_in_the_asyncapi_document(flamigo: Flamigo) -> None:
    document = asyncapi_document(flamigo)
    assert document["asyncapi"] == "3.0.0"
    operations = document["operations"]
    by_strategy = {op["x-flamigo-strategy"]: op for op in operations.values() if op["action"] == "receive"}
    assert set(by_strategy) == {strategy.name for strategy in flamigo.strategies}
    messages = document["components"]["messages"]
    for name, operation in by_strategy.items():
        assert operation["title"] == name
        reply_refs = [m["$ref"].rsplit("/", 1)[-1] for m in operation["reply"]["messages"]]
        assert reply_refs[-1] == "error"
        request = messages[operation["messages"][0]["$ref"].rsplit("/", 1)[-1]]
        assert request["correlationId"] == {"$ref": "#/components/correlationIds/ackId"}
        assert request["payload"]["properties"]["topic"]["const"] == name
        strategy = flamigo.strategies.get(name)
        assert strategy is not None
        assert operation["x-flamigo-untyped"] is (strategy.payload is None or strategy.reply is None)
        assert {int(s) for s in operation["x-flamigo-errors"]} >= {400, 500, 504} | dict(strategy.errors).keys()
    assert document["components"]["correlationIds"]["ackId"]["location"] == "$message.payload#/ackId"
    pushes = {op["x-flamigo-client-topic"]: op for op in operations.values() if op["action"] == "send"}
    assert set(pushes) >= {spec.topic for spec in flamigo.strategies.events}
    chat = pushes["chat:message"]
    assert chat["x-flamigo-bus-topics"] == ["rooms/*"] and chat["x-flamigo-untyped"] is False
    payload = messages[chat["messages"][0]["$ref"].rsplit("/", 1)[-1]]["payload"]["properties"]["payload"]
    schema = document["components"]["schemas"][payload["$ref"].rsplit("/", 1)[-1]]
    assert set(schema["required"]) == {"room", "user", "text", "ts"}
    send = by_strategy["app::rooms:send"]
    assert send["x-flamigo-errors"]["503"].startswith("the room is unavailable")
    assert send["x-flamigo-errors"]["401"] and send["x-flamigo-public"] is False
    assert by_strategy["app::websocket:auth"]["x-flamigo-public"] is True
    lifecycle = document["channels"]["websocket"]["x-flamigo-lifecycle"]
    assert lifecycle["authStrategy"] == "app::websocket:auth" and lifecycle["authRequired"] is True


def test_the_json_schemas_name_every_strategy_and_resolve_their_references(flamigo: Flamigo) -> None:
    document = json_schema_document(flamigo)
    assert set(document["strategies"]) == {strategy.name for strategy in flamigo.strategies}
    text = json.dumps(document)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/$defs/')[1:]}:
        assert ref in document["$defs"], ref
    assert document["strategies"]["app::echo"]["untyped"] is True
    assert document["strategies"]["app::rooms:send"]["untyped"] is False


def test_the_asyncapi_endpoint_is_served_in_debug_mode_only_unless_set(
    make_app: Callable[..., Flask], live_server: Callable[[Flask], LiveServer]
) -> None:
    debug = live_server(make_app(debug=True))
    response = requests.get(f"{debug.url}/_flamigo/asyncapi.json", timeout=5)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    document = response.json()
    assert document["servers"]["websocket"]["host"] == f"127.0.0.1:{debug.port}"
    assert document == json.loads(json.dumps(asyncapi_document(debug.flamigo, server=f"127.0.0.1:{debug.port}")))
    production = live_server(make_app())
    assert requests.get(f"{production.url}/_flamigo/asyncapi.json", timeout=5).status_code == 404
    enabled = live_server(make_app(asyncapi_endpoint=True))
    assert requests.get(f"{enabled.url}/_flamigo/asyncapi.json", timeout=5).status_code == 200


def test_a_model_without_a_json_schema_is_named_in_the_error(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    flamigo = app.extensions["flamigo"]
    flamigo.strategies.register("app::broken:model", lambda ctx: None, reply=gevent.Greenlet)
    with pytest.raises(ValueError, match="app::broken:model"):
        asyncapi_document(flamigo)


# -- the scaffold's refusals (the full scaffold runs in test_contract_tools.py) ---------------------


@pytest.mark.parametrize("name", ["Notes", "1notes", "class", "app", "notes-app", ""])
def test_new_refuses_a_name_that_is_not_a_package_name_and_writes_nothing(name: str, tmp_path: Any) -> None:
    from flamigo_actors.serving.scaffold import ScaffoldError, create_project

    with pytest.raises(ScaffoldError, match="invalid project name"):
        create_project(name, str(tmp_path / "target"))
    assert list(tmp_path.iterdir()) == []


def test_new_never_touches_an_existing_folder(tmp_path: Any) -> None:
    from flamigo_actors.serving.scaffold import ScaffoldError, create_project

    existing = tmp_path / "notes"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(ScaffoldError, match="exists already"):
        create_project("notes", str(existing))
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]

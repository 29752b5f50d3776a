"""The strategy registry and calling strategies from anywhere."""

from typing import Any

import gevent
import pytest
from flask import Flask, jsonify
from pydantic import BaseModel, Field

from flamigo_actors import (
    BackendIdentity,
    Flamigo,
    FlamigoError,
    Registry,
    StrategyContext,
    User,
    public_message,
    status_of,
)


class Greeting(BaseModel):
    name: str = Field(min_length=1)
    times: int = Field(ge=1, le=3)


def make() -> tuple[Flask, Flamigo, Registry]:
    registry = Registry("app")

    @registry.strategy("app::greet", payload=Greeting)
    def greet(ctx: StrategyContext) -> str:
        return " ".join([f"hello {ctx.request.data.name}"] * ctx.request.data.times)

    @registry.strategy("app::whoami")
    def whoami(ctx: StrategyContext) -> dict[str, Any]:
        return {"type": ctx.identity.type, "interface": getattr(ctx.identity, "interface", None)}

    @registry.strategy("app::outer")
    def outer(ctx: StrategyContext) -> dict[str, Any]:
        # a strategy calling strategies, inline, as the same identity
        return {"inner": ctx.call("app::whoami"), "greeting": ctx.call("app::greet", ctx.payload)}

    @registry.strategy("app::explicit")
    def explicit(ctx: StrategyContext) -> None:
        if ctx.payload == "ok":
            ctx.response.set_result({"ok": True})
        else:
            ctx.response.set_error(FlamigoError("nope", public="refused", status=409))

    @registry.strategy("app::slow", timeout=5)
    def slow(ctx: StrategyContext) -> str:
        gevent.sleep(ctx.payload)
        return "done"

    @registry.strategy("app::deferred")
    def deferred(ctx: StrategyContext) -> None:
        def work() -> int:
            gevent.sleep(0.01)
            if ctx.payload == "fail":
                raise ValueError("deferred failure detail")
            return 42

        ctx.defer(work)

    def handler(ctx: StrategyContext) -> int:
        return 1

    registry.register("app::by-call", handler)
    app = Flask("strategies-test")
    flamigo = Flamigo(app, strategies=registry)
    return app, flamigo, registry


def test_registry_refuses_bad_names() -> None:
    registry = Registry("app")
    with pytest.raises(ValueError, match="outside this registry's namespace"):
        registry.register("other::x:y", lambda ctx: None)
    with pytest.raises(ValueError, match="invalid strategy name"):
        registry.register("app:x", lambda ctx: None)
    with pytest.raises(ValueError, match="invalid strategy name"):
        registry.register("app::", lambda ctx: None)
    registry.register("app::x:y", lambda ctx: None)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("app::x:y", lambda ctx: None)
    with pytest.raises(TypeError):
        registry.register("app::z", "not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Registry("bad namespace")


def test_registered_by_decorator_and_by_call() -> None:
    _, flamigo, registry = make()
    assert "app::greet" in registry and "app::by-call" in registry
    assert flamigo.call("app::by-call") == 1


def test_resolve_statuses() -> None:
    _, flamigo, _ = make()
    with pytest.raises(FlamigoError) as info:
        flamigo.call("app::missing")
    assert status_of(info.value) == 404
    with pytest.raises(FlamigoError) as info:
        flamigo.call("admin::secrets")
    assert status_of(info.value) == 403 and public_message(info.value) == "invalid scope"


def test_bind_reports_field_errors_with_422() -> None:
    _, flamigo, _ = make()
    assert flamigo.call("app::greet", {"name": "ada", "times": 2}) == "hello ada hello ada"
    with pytest.raises(FlamigoError) as info:
        flamigo.call("app::greet", {"name": "", "times": 9})
    err = info.value
    assert status_of(err) == 422
    from flamigo_actors.core.errors import field_errors_of

    fields = {f["field"] for f in field_errors_of(err) or []}
    assert fields == {"name", "times"}
    assert str(err).startswith("strategy(app::greet): bind(Greeting)")


def test_strategies_call_strategies_inline_as_same_identity() -> None:
    _, flamigo, _ = make()
    result = flamigo.call("app::outer", {"name": "bo", "times": 1}, identity=BackendIdentity("job"))
    assert result == {"inner": {"type": "backend", "interface": "job"}, "greeting": "hello bo"}


def test_nested_errors_are_layered() -> None:
    _, flamigo, _ = make()
    with pytest.raises(FlamigoError) as info:
        flamigo.call("app::outer", {"name": "", "times": 1})
    assert str(info.value).startswith("strategy(app::outer): strategy(app::greet): bind(Greeting)")
    assert status_of(info.value) == 422


def test_explicit_response_object() -> None:
    _, flamigo, _ = make()
    assert flamigo.call("app::explicit", "ok") == {"ok": True}
    with pytest.raises(FlamigoError) as info:
        flamigo.call("app::explicit", "no")
    assert status_of(info.value) == 409 and public_message(info.value) == "refused"


def test_call_timeout_is_504() -> None:
    _, flamigo, _ = make()
    with pytest.raises(FlamigoError) as info:
        flamigo.call("app::slow", 1.0, timeout=0.05)
    assert status_of(info.value) == 504


def test_call_waits_for_deferred_replies() -> None:
    _, flamigo, _ = make()
    assert flamigo.call("app::deferred") == 42
    with pytest.raises(FlamigoError) as info:
        flamigo.call("app::deferred", "fail")
    assert status_of(info.value) == 500
    assert public_message(info.value) == "internal error"


def test_call_from_a_flask_view_with_a_user() -> None:
    app, flamigo, registry = make()

    @flamigo.strategy("app::me")
    def me(ctx: StrategyContext) -> Any:
        return ctx.user.public() if ctx.user else None

    @app.get("/me")
    def view() -> Any:
        user = User("9", "nina")
        return jsonify(flamigo.call("app::me", identity=BackendIdentity("http", user)))

    response = app.test_client().get("/me")
    assert response.get_json() == {"id": "9", "username": "nina"}


def test_registry_include_refuses_duplicates() -> None:
    first, second = Registry(), Registry()
    first.register("app::a", lambda ctx: 1)
    second.register("app::a", lambda ctx: 2)
    with pytest.raises(ValueError, match="already registered"):
        first.include(second)
    with pytest.raises(ValueError):
        first.include(Registry("other"))


def test_each_app_copies_the_registry_it_is_given() -> None:
    shared = Registry()
    shared.register("app::a", lambda ctx: 1)
    first = Flamigo(Flask("one"), strategies=shared, auth=lambda token: None)
    first.strategy("app::only-first")(lambda ctx: 2)
    second = Flamigo(Flask("two"), strategies=shared)
    assert "app::websocket:auth" in first.strategies and "app::only-first" in first.strategies
    assert "app::websocket:auth" not in shared and "app::only-first" not in shared
    assert "app::websocket:auth" not in second.strategies

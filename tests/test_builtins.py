"""The built-in strategies and admission, as a new application uses them.

* A custom ``app::websocket:auth`` registered as the README says (no
  ``public=True``) is callable before authentication: clients can log in.
* The in-memory test client goes through the same admission as the server:
  origin allow-list, draining, connection rate per address.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from flamigo_actors import Flamigo, FlamigoError, Registry, StrategyContext, User
from flamigo_actors.integration.testing import TestClientRefused
from tests.rawws import RawWs
from tests.support import LiveServer


def custom_auth_app(*, with_verifier: bool) -> Flask:
    strategies = Registry()

    @strategies.strategy("app::websocket:auth")  # not public=True: as the README shows
    def auth(ctx: StrategyContext) -> dict[str, Any]:
        """Our own login: any token naming a user, except 'nobody'."""
        token = (ctx.payload or {}).get("token")
        if not token or token == "nobody":
            raise FlamigoError("custom auth: refused", public="invalid token", status=401)
        ctx.identity.authenticate(User(id=token, username=token.title()))
        return {"welcome": token}

    @strategies.strategy("app::whoami")
    def whoami(ctx: StrategyContext) -> str:
        assert ctx.user is not None
        return ctx.user.id

    app = Flask(__name__)
    if with_verifier:  # the built-in would be registered, but the app's own wins
        Flamigo(app, strategies=strategies, auth=lambda token: None)
    else:
        Flamigo(app, strategies=strategies, auth_required=True)
    return app


@pytest.mark.parametrize("with_verifier", [True, False])
def test_a_custom_auth_strategy_is_callable_before_authentication(
    live_server: Callable[[Flask], LiveServer], with_verifier: bool
) -> None:
    server = live_server(custom_auth_app(with_verifier=with_verifier))
    ws = RawWs(server.port)
    refused = ws.request("app::whoami", ack=1)
    assert (refused["topic"], refused["payload"]["status"]) == ("error", 401)
    bad = ws.request("app::websocket:auth", {"token": "nobody"}, ack=2)
    assert (bad["topic"], bad["payload"]["status"], bad["payload"]["message"]) == ("error", 401, "invalid token")
    ok = ws.request("app::websocket:auth", {"token": "ann"}, ack=3)
    assert (ok["ackId"], ok["payload"]) == (3, {"welcome": "ann"})
    assert ws.request("app::whoami", ack=4)["payload"] == "ann"
    ws.close()


# -- the test client honours admission ------------------------------------------------


@pytest.fixture
def make_app(demo_app: Callable[..., Flask]) -> Iterator[Callable[..., Flask]]:
    apps: list[Flask] = []

    def make(**config: Any) -> Flask:
        app = demo_app(**config)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["flamigo"].shutdown(timeout=1)


def test_the_test_client_refuses_a_foreign_origin_as_the_server_does(make_app: Callable[..., Flask]) -> None:
    flamigo = make_app(FLAMIGO_ALLOWED_ORIGINS=["https://chat.example"]).extensions["flamigo"]
    refused_before = flamigo.stats.connections_refused
    with pytest.raises(TestClientRefused) as info:
        flamigo.test_client(origin="https://evil.example")
    assert info.value.status == 403 and "https://evil.example" in str(info.value)
    assert flamigo.stats.connections_refused == refused_before + 1
    assert not flamigo.connections
    for origin in ("https://chat.example", "http://localhost", None):  # allowed, same host, none
        with flamigo.test_client(origin=origin) as client:
            assert client.request("app::websocket:ping") == {"pong": True}


def test_the_test_client_limits_connections_per_address(make_app: Callable[..., Flask]) -> None:
    flamigo = make_app(FLAMIGO_CONNECT_RATE_LIMIT=0.001, FLAMIGO_CONNECT_RATE_BURST=2).extensions["flamigo"]
    for _ in range(2):
        with flamigo.test_client(remote_addr="10.0.0.1:1000"):
            pass
    with pytest.raises(TestClientRefused) as info:
        flamigo.test_client(remote_addr="10.0.0.1:1001")
    assert info.value.status == 429
    with flamigo.test_client(remote_addr="10.0.0.2:1000") as other:  # another address is fine
        assert other.request("app::websocket:ping") == {"pong": True}


def test_the_test_client_is_refused_while_draining(make_app: Callable[..., Flask]) -> None:
    flamigo = make_app().extensions["flamigo"]
    flamigo.shutdown(timeout=0.5)
    with pytest.raises(TestClientRefused) as info:
        flamigo.test_client()
    assert info.value.status == 503
    assert not flamigo.connections

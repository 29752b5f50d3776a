"""The demo app's own tests, through the in-memory test client (no network)."""

from __future__ import annotations

from collections.abc import Callable

import gevent
import pytest
from flask import Flask

from flamigo_actors import Flamigo
from flamigo_actors.integration.testing import TestClient, TestClientError
from tests.support import offline_token


def test_echo_after_auth(app: Flask, flamigo: Flamigo) -> None:
    with flamigo.test_client() as client:
        with pytest.raises(TestClientError) as info:
            client.request("app::echo", 1)
        assert info.value.status == 401
        assert client.authenticate(offline_token(app, "ann"))["user"]["username"] == "ann"
        assert client.request("app::echo", {"deep": [1, {"x": None}]}) == {"deep": [1, {"x": None}]}


def test_rooms_through_the_test_client(app: Flask, flamigo: Flamigo) -> None:
    with flamigo.test_client() as ann, flamigo.test_client() as ben:
        ann.authenticate(offline_token(app, "ann"))
        ben.authenticate(offline_token(app, "ben"))
        ann.request("app::rooms:join", {"room": "lobby"})
        ben.request("app::rooms:join", {"room": "lobby"})
        assert "lobby" in ann.request("app::rooms:list")["rooms"]
        ben.request("app::rooms:send", {"room": "lobby", "text": "hi ann"})
        (push,) = ann.pushes("chat:message", wait=2)
        assert push["payload"]["text"] == "hi ann" and push["payload"]["user"] == "ben"
        # the HTTP view publishes the same event
        response = app.test_client().post(
            "/api/rooms/lobby/messages",
            json={"text": "from http"},
            headers={"Authorization": f"Bearer {offline_token(app, 'cat')}"},
        )
        assert response.status_code == 202
        assert [p["payload"]["text"] for p in ben.pushes("chat:message", count=2, wait=2)] == ["hi ann", "from http"]


def test_errors_through_the_test_client(app: Flask, flamigo: Flamigo) -> None:
    with flamigo.test_client() as client:
        client.authenticate(offline_token(app, "ann"))
        with pytest.raises(TestClientError) as info:
            client.request("app::demo:fail")
        assert (info.value.status, info.value.public) == (500, "internal error")
        with pytest.raises(TestClientError) as info:
            client.request("app::rooms:join", {"room": ""})
        assert info.value.status == 422 and info.value.field_errors[0]["field"] == "room"
        client.send_raw("{broken")
        assert client.receive()["payload"]["status"] == 400


def test_deferred_reply_frees_the_mailbox(app: Flask, flamigo: Flamigo) -> None:
    with flamigo.test_client() as client:
        client.authenticate(offline_token(app, "ann"))
        client.send("app::demo:deferred", {"seconds": 0.3}, ack_id="slow")
        assert client.request("app::echo", "first") == "first"  # not stuck behind the deferred one
        reply = client.receive(timeout=3)
        assert reply == {"topic": "app::demo:deferred", "payload": {"slept": 0.3}, "ackId": "slow"}


def test_expired_token_is_refused(demo_app: Callable[..., Flask]) -> None:
    app = demo_app(TOKEN_MAX_AGE=1)
    flamigo = app.extensions["flamigo"]
    token = offline_token(app, "ann")
    gevent.sleep(2.1)
    try:
        with flamigo.test_client() as client:
            with pytest.raises(TestClientError) as info:
                client.authenticate(token)
            assert info.value.status == 401
            response = app.test_client().post(
                "/api/rooms/lobby/messages", json={"text": "x"}, headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == 401
    finally:
        flamigo.shutdown(timeout=1)


def test_disconnect_is_reported(app: Flask, flamigo: Flamigo) -> None:
    seen: list[str] = []
    flamigo.bus.subscribe(lambda ctx, e: seen.append(e.conn_id), "connection/disconnected/*")
    client = TestClient(flamigo)
    conn_id = client.conn_id
    client.close()
    flamigo.publish_sync(_Probe())
    assert seen == [conn_id]


class _Probe:
    topics = ("probe",)

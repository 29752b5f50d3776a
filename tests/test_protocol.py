"""The wire protocol's pure cases, on the shipped in-memory test client (no network needed).

Envelopes, ackId echo, malformed frames, the status table, auth gating: the
same Connection, strategies and encoder as over a socket
(``flamigo.test_client()``); tests/test_websocket.py covers what needs a real
socket (closing, pings, origins, the upgrade).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from flamigo_actors import Flamigo
from flamigo_actors.integration.testing import TestClient, TestClientError
from tests.support import offline_token


@pytest.fixture
def client(app: Flask, flamigo: Flamigo) -> Iterator[TestClient]:
    """A test connection authenticated as alice."""
    with flamigo.test_client() as client:
        client.authenticate(offline_token(app, "alice"))
        yield client


def error_of(message: dict[str, Any]) -> tuple[int, str]:
    assert message["topic"] == "error", message
    return message["payload"]["status"], message["payload"]["message"]


def test_replies_echo_ack_ids_with_their_json_type(client: TestClient) -> None:
    for ack in ["abc", 7, 7.5, 0, ""]:
        client.send_raw(json.dumps({"topic": "app::echo", "payload": {"v": ack}, "ackId": ack}))
        reply = client.receive()
        assert reply == {"topic": "app::echo", "payload": {"v": ack}, "ackId": ack}
        assert type(reply["ackId"]) is type(ack)
    client.send("app::echo", [1, "two", None])
    assert client.receive() == {"topic": "app::echo", "payload": [1, "two", None]}


@pytest.mark.parametrize(
    ("frame", "ack"),
    [
        ("not json", None),
        ("[1, 2]", None),
        ('"text"', None),
        ('{"payload": 1, "ackId": "a1"}', "a1"),
        ('{"topic": 5, "ackId": 3}', 3),
        ('{"topic": "", "ackId": "e"}', "e"),
        ('{"topic": "app::echo", "ackId": true}', None),
        ('{"topic": "app::echo", "ackId": {"x": 1}}', None),
        ('{"topic": "app::echo", "ackId": null}', None),
    ],
)
def test_malformed_frames_answer_400_and_keep_the_connection(client: TestClient, frame: str, ack: Any) -> None:
    client.send_raw(frame)
    reply = client.receive()
    assert error_of(reply)[0] == 400
    if ack is None:
        assert "ackId" not in reply
    else:
        assert reply["ackId"] == ack
    assert client.request("app::echo", "still here") == "still here"


def test_binary_frames_answer_400(client: TestClient) -> None:
    client.send_raw(b'{"topic": "app::echo"}', binary=True)
    assert error_of(client.receive())[0] == 400
    assert client.request("app::echo", 1) == 1


def test_statuses_in_order_401_403_404_422_500(app: Flask, flamigo: Flamigo) -> None:
    with flamigo.test_client() as client:
        # unauthenticated: everything but the auth strategy is 401, even unknown or foreign names
        for topic in ["app::echo", "app::missing", "other::thing"]:
            with pytest.raises(TestClientError) as info:
                client.request(topic, {})
            assert info.value.status == 401
        client.authenticate(offline_token(app, "alice"))
        expectations = [
            ("other::thing", {}, 403, "invalid scope"),
            ("app::missing", {}, 404, "unknown strategy app::missing"),
            ("app::rooms:join", {"room": "no/slash"}, 422, "invalid payload"),
            ("app::rooms:send", {}, 422, "invalid payload"),
            ("app::demo:fail", {}, 500, "internal error"),
        ]
        for topic, payload, status, message in expectations:
            with pytest.raises(TestClientError) as info:
                client.request(topic, payload)
            assert (info.value.status, info.value.payload["message"]) == (status, message)
            if status == 422:
                fields = {f["field"] for f in info.value.payload["fieldErrors"]}
                assert fields == ({"room"} if topic.endswith("join") else {"room", "text"})
            else:
                assert "fieldErrors" not in info.value.payload
            assert "trace" not in info.value.payload
        assert client.request("app::echo", "alive") == "alive"


def test_500_never_leaks_the_exception_text(client: TestClient) -> None:
    client.send("app::demo:fail", None, ack_id=1)
    raw = json.dumps(client.receive())
    assert "stays on the server" not in raw and "RuntimeError" not in raw


def test_debug_mode_sends_the_trace(demo_app: Callable[..., Flask]) -> None:
    app = demo_app(FLAMIGO_DEBUG=True)
    flamigo = app.extensions["flamigo"]
    try:
        with flamigo.test_client() as client:
            client.authenticate(offline_token(app, "alice"))
            with pytest.raises(TestClientError) as info:
                client.request("app::demo:fail")
            assert "demo failure" in info.value.payload["trace"]
            assert info.value.payload["message"] == "internal error"
    finally:
        flamigo.shutdown(timeout=1)


def test_200_pipelined_requests_are_answered_in_order(client: TestClient) -> None:
    for n in range(200):
        client.send("app::echo", n, ack_id=n)
    replies = [client.receive() for _ in range(200)]
    assert [r["ackId"] for r in replies] == list(range(200))
    assert [r["payload"] for r in replies] == list(range(200))


def test_auth_gating_and_retry_after_a_bad_token(app: Flask, flamigo: Flamigo) -> None:
    with flamigo.test_client() as client:
        with pytest.raises(TestClientError) as info:
            client.request("app::websocket:auth", {"token": "forged"})
        assert info.value.status == 401 and info.value.payload["message"] == "invalid token"
        with pytest.raises(TestClientError) as info:
            client.request("app::websocket:auth", {})
        assert info.value.status == 422
        reply = client.request("app::websocket:auth", {"token": offline_token(app, "Bob")})
        assert reply == {"success": True, "user": {"id": "bob", "username": "Bob"}}
        assert client.request("app::echo", 5) == 5
        # the same user refreshing the token is fine; another user is refused
        client.request("app::websocket:auth", {"token": offline_token(app, "bob")})
        with pytest.raises(TestClientError) as info:
            client.request("app::websocket:auth", {"token": offline_token(app, "eve")})
        assert info.value.status == 409

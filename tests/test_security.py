"""Security promises over real sockets (SECURITY.md lists them with these tests).

Origins are checked before the upgrade; strategies need an authenticated
connection, with signed tokens that expire; only the app namespace is
callable; clients never see internal traces or exception text unless debug
is on; inspection is off by default.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from flask import Flask
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from tests.rawws import OP_TEXT, RawWs, Refused, frame
from tests.reliability_app import create_app
from tests.support import LiveServer, eventually

# -- origins -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "admitted"),
    [
        ("https://chat.example", True),  # on the allow-list
        ("SAME", True),  # the server's own origin is always allowed
        ("SAME-UPPER", True),  # host names compare case-insensitively
        (None, True),  # no Origin header: not a browser, nothing to forge
        ("https://evil.example", False),
        ("https://chat.example.evil.example", False),  # a suffix is not the origin
        ("https://evil.chat.example", False),  # nor a subdomain
        ("http://chat.example", False),  # nor another scheme of an allowed origin
        ("OTHER-PORT", False),  # same host, another port: another origin
        ("null", False),  # sandboxed iframes, file:// pages
        ("not a url at all", False),
    ],
)
def test_origins_outside_the_allow_list_are_refused_before_the_upgrade(
    live_server: Callable[[Flask], LiveServer], origin: str | None, admitted: bool
) -> None:
    server = live_server(create_app({"FLAMIGO_ALLOWED_ORIGINS": ["https://chat.example"]}))
    value = {
        "SAME": f"http://127.0.0.1:{server.port}",
        "SAME-UPPER": f"HTTP://127.0.0.1:{server.port}",
        "OTHER-PORT": f"http://127.0.0.1:{server.port + 1}",
    }.get(origin or "", origin)
    headers = {"Origin": value} if value is not None else {}
    if admitted:
        RawWs(server.port, headers=headers).close()
        assert server.flamigo.stats.connections_refused == 0
    else:
        with pytest.raises(Refused) as refused:
            RawWs(server.port, headers=headers)
        assert refused.value.status == 403
        assert server.flamigo.stats.connections_refused == 1
        assert server.flamigo.connections == {}


def test_an_allow_list_star_admits_every_origin(live_server: Callable[[Flask], LiveServer]) -> None:
    server = live_server(create_app({"FLAMIGO_ALLOWED_ORIGINS": "*"}))
    RawWs(server.port, headers={"Origin": "https://anywhere.example"}).close()


# -- auth: signed, expiring tokens -------------------------------------------------------


def signed(app: Flask, data: dict[str, str], *, age: float = 0.0, secret: str | None = None) -> str:
    """A demo token for ``data``, issued ``age`` seconds ago (a real signature, a real timestamp)."""

    class IssuedEarlier(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - age)

    serializer = URLSafeTimedSerializer(
        secret or app.config["SECRET_KEY"], salt="flamigo-demo-login", signer=IssuedEarlier
    )
    return str(serializer.dumps(data))


def test_expired_forged_and_tampered_tokens_get_401_and_the_connection_stays_usable(
    live_server: Callable[[Flask], LiveServer],
) -> None:
    app = create_app({"TOKEN_MAX_AGE": 3600})
    server = live_server(app)
    alice = {"id": "alice", "username": "alice"}
    valid = signed(app, alice, age=60)
    header, _, rest = valid.partition(".")
    bad_tokens = {
        "expired": signed(app, alice, age=3601),
        "other secret": signed(app, alice, secret="not-the-server-key"),
        "tampered": header[:-2] + ("A" if header[-2] != "A" else "B") + header[-1] + "." + rest,
        "not a token": "hello",
    }
    ws = RawWs(server.port)
    for name, token in bad_tokens.items():
        reply = ws.request("app::websocket:auth", {"token": token}, ack=name)
        assert reply == {"topic": "error", "payload": {"message": "invalid token", "status": 401}, "ackId": name}
        assert ws.request("app::echo", 1, ack="gated")["payload"]["status"] == 401
    reply = ws.request("app::websocket:auth", {"token": valid}, ack="ok")
    assert reply["payload"] == {"success": True, "user": alice}
    assert ws.request("app::echo", 1, ack="open")["payload"] == 1
    ws.close()
    # the HTTP side uses the same tokens
    url = f"{server.url}/api/rooms/lobby/messages"
    for token in bad_tokens.values():
        response = requests.post(url, json={"text": "x"}, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401
    assert requests.post(url, json={"text": "x"}, headers={"Authorization": f"Bearer {valid}"}).status_code == 202


def test_every_strategy_but_auth_needs_an_authenticated_connection(live_server: Callable[[Flask], LiveServer]) -> None:
    server = live_server(create_app())
    ws = RawWs(server.port)
    public = {s.name for s in server.flamigo.strategies if s.public}
    names = sorted(s.name for s in server.flamigo.strategies if not s.public)
    assert "app::websocket:auth" in public and len(names) > 10
    for name in names + ["app::no-such-thing", "other::thing", ""]:
        reply = ws.request(name, {}, ack=name or "empty")
        assert reply["payload"]["status"] in ((400,) if name == "" else (401,)), (name, reply)
    ws.close()


# -- namespace scope ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "status"),
    [
        ("other::echo", 403),
        ("APP::echo", 403),
        ("app:echo", 403),
        (" app::echo", 403),
        ("::app::echo", 403),
        ("app::echo ", 404),
        ("app::echo\u200b", 404),
        ("app::../echo", 404),
        ("app::", 404),
    ],
)
def test_only_the_app_namespace_is_callable(live_server: Callable[[Flask], LiveServer], topic: str, status: int) -> None:
    server = live_server(create_app({"FLAMIGO_AUTH_REQUIRED": False}))
    ws = RawWs(server.port)
    reply = ws.request(topic, {}, ack=1)
    assert (reply["payload"]["status"], reply["ackId"]) == (status, 1)
    assert reply["payload"]["message"] == ("invalid scope" if status == 403 else f"unknown strategy {topic}")
    ws.close()


# -- no internals in replies --------------------------------------------------------------

INTERNALS = ("Traceback", ".py", "stays on the server", "RuntimeError", "LookupError", "SystemExit",
             "machinery", "flamigo_actors", "strategy(")


def every_error(server: LiveServer, ws: RawWs) -> list[dict[str, Any]]:
    """Trigger each kind of error reply and return them."""
    gates = server.app.extensions["gates"]
    sent: list[Any] = [
        "{not json",
        {"topic": 5, "ackId": 1},
        {"topic": "app::missing", "ackId": 2},
        {"topic": "other::x", "ackId": 3},
        {"topic": "app::rooms:join", "payload": {"room": "no/slash"}, "ackId": 4},
        {"topic": "app::demo:fail", "ackId": 5},
        {"topic": "app::test:exit", "ackId": 6},
        {"topic": "app::test:block", "ackId": 7},
        {"topic": "app::test:defer-forever", "ackId": 8},
        {"topic": "app::test:defer-fail", "payload": {"gate": "security"}, "ackId": 9},
    ]
    for message in sent:
        ws.send(frame(OP_TEXT, message.encode() if isinstance(message, str) else json.dumps(message).encode()))
    eventually(lambda: "security" in gates._gates)
    gates.open("security")
    return [ws.recv_json(timeout=10) for _ in sent]


def test_error_replies_carry_no_internals(live_server: Callable[[Flask], LiveServer]) -> None:
    server = live_server(create_app({"FLAMIGO_AUTH_REQUIRED": False}))
    ws = RawWs(server.port)
    replies = every_error(server, ws)
    statuses = sorted(r["payload"]["status"] for r in replies)
    assert statuses == [400, 400, 403, 404, 422, 500, 500, 500, 504, 504]
    for reply in replies:
        assert reply["topic"] == "error"
        expected_keys = {"message", "status"} | ({"fieldErrors"} if reply["payload"]["status"] == 422 else set())
        assert set(reply["payload"]) == expected_keys, reply
        text = json.dumps(reply)
        assert not any(marker in text for marker in INTERNALS), reply
    assert {r["payload"]["message"] for r in replies if r["payload"]["status"] >= 500} == {"internal error", "timed out"}
    ws.close()


def test_debug_mode_adds_traces_and_only_then(live_server: Callable[[Flask], LiveServer]) -> None:
    server = live_server(create_app({"FLAMIGO_AUTH_REQUIRED": False, "FLAMIGO_DEBUG": True}))
    ws = RawWs(server.port)
    replies = every_error(server, ws)
    failures = [r for r in replies if r["payload"]["status"] == 500]
    assert all("Traceback" in r["payload"]["trace"] for r in failures)
    assert any("stays on the server" in r["payload"]["trace"] for r in failures)
    assert all(r["payload"]["message"] == "internal error" for r in failures)  # the message stays public
    ws.close()


# -- inspection is opt-in ------------------------------------------------------------------


def test_inspection_and_dashboard_are_off_by_default(live_server: Callable[[Flask], LiveServer]) -> None:
    server = live_server(create_app())
    settings = server.flamigo.settings
    assert settings.inspect_enabled is False and settings.admin_token is None
    ours = {rule.rule for rule in server.app.url_map.iter_rules() if rule.rule.startswith("/_flamigo/")}
    assert ours == {"/_flamigo/flamigo.js"}  # the browser client only
    for path in ("/_flamigo/inspect", "/_flamigo/dashboard"):
        assert requests.get(f"{server.url}{path}").status_code == 404

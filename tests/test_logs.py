"""Structured logs: JSON lines with the connection's fields, and no secret in either format.

The full-session test runs the demo as a real process (``python -m app``) on a
real redis-server that requires a password, drives a whole session over
loopback (login, auth, rooms, HTTP posts, errors, a bad token, inspection
with and without the admin token, a SIGTERM drain) and searches every line
it logged for the secrets.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from flask import Flask

from flamigo_actors import Flamigo
from flamigo_actors import register_secret
from flamigo_actors.core.logs import JsonFormatter, Redactor, redact_text, set_context_provider
from flamigo_actors.websocket.log_context import connection_fields
from tests.support import (
    ErrorReply,
    LiveServer,
    RedisServer,
    ServerProcess,
    WsClient,
    free_port,
    need_binary,
    post_message,
)


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing JSON lines through the redactor into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(Redactor())
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, buffer
    logger.removeHandler(handler)
    set_context_provider(None)


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_secret_bearing_fields_urls_and_registered_values_are_redacted(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = captured
    register_secret("registered-secret-value")
    logger.info("auth with token=%s for %s", "tok-abc-123", "alice")
    logger.info("linking to %s", "redis://:hunter2hunter@127.0.0.1:6379/0")
    logger.info("headers %s", {"Authorization": "Bearer eyJhbGciOi.payload.sig", "Accept": "*/*"})
    logger.info('payload {"sessionId": "s-4711-abcdef", "room": "lobby"}')
    logger.warning("password: pa55word! given, session_id=sid-99")
    try:
        raise RuntimeError("boom with registered-secret-value and api_key=k-123456")
    except RuntimeError:
        logger.exception("failed")
    text = buffer.getvalue()
    for secret in ("tok-abc-123", "hunter2hunter", "eyJhbGciOi", "s-4711-abcdef", "pa55word!",
                   "sid-99", "registered-secret-value", "k-123456"):
        assert secret not in text, secret
    records = lines(buffer)
    assert [r["message"] for r in records[:4]] == [
        "auth with token=[REDACTED] for alice",
        "linking to redis://:[REDACTED]@127.0.0.1:6379/0",
        "headers {'Authorization': '[REDACTED]', 'Accept': '*/*'}",
        'payload {"sessionId": "[REDACTED]", "room": "lobby"}',
    ]
    assert records[-1]["level"] == "ERROR" and "RuntimeError" in records[-1]["exc"]
    assert {"time", "level", "logger", "message"} <= records[0].keys()
    assert records[0]["logger"] == "tests.logs"
    # Harmless text is left alone.
    assert redact_text("connection c1 closed: 1000 normal") == "connection c1 closed: 1000 normal"


def test_a_line_logged_by_a_strategy_carries_its_connection_user_strategy_and_ack_id(
    captured: tuple[logging.Logger, io.StringIO], live_server: Callable[[Flask], LiveServer]
) -> None:
    logger, buffer = captured
    set_context_provider(connection_fields)
    app = Flask("logs-test")
    flamigo = Flamigo(app)

    @flamigo.strategy("app::logs:work")
    def work(ctx: Any) -> str:
        logger.info("working on %s", ctx.payload)
        return "done"

    server = live_server(app)
    client = WsClient(server.ws_url)
    client.send_json({"topic": "app::logs:work", "payload": "job", "ackId": 42})
    assert client.recv_json()["payload"] == "done"
    logger.info("outside any connection")
    first, second = lines(buffer)
    conn_id = next(iter(flamigo.connections))
    assert first["message"] == "working on job"
    assert first["conn_id"] == conn_id and first["strategy"] == "app::logs:work" and first["ack_id"] == 42
    assert "user_id" not in first  # not authenticated
    assert "conn_id" not in second and "strategy" not in second
    client.close()


@pytest.fixture
def secured_redis() -> Iterator[RedisServer]:
    server = RedisServer(need_binary("redis-server"), free_port(), password="redis-pw-Zq81x").start()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_full_demo_session_logs_no_secret(secured_redis: RedisServer, log_format: str) -> None:
    admin = "admin-token-Yp42k"
    session = "recovery-session-Hh73q"
    server = ServerProcess.demo(
        free_port(), "--redis", secured_redis.url, "--log-level", "DEBUG",
        env={
            "FLAMIGO_LOG_FORMAT": log_format, "FLAMIGO_METRICS": "true",
            "FLAMIGO_INSPECT_ENABLED": "true", "FLAMIGO_ADMIN_TOKEN": admin,
        },
    )
    tokens = []
    try:
        server.wait_ready()
        tokens = [server.login("alice"), server.login("bob")]
        alice = WsClient(server.ws_url)
        alice.request("app::websocket:auth", {"token": tokens[0], "sessionId": session})
        alice.request("app::rooms:join", {"room": "lobby"})
        alice.request("app::rooms:send", {"room": "lobby", "text": "hello"})
        post_message(server, "bob", "lobby", "via HTTP")
        for topic, payload in (("app::demo:fail", None), ("app::rooms:join", {"room": "no such room!"}),
                               ("app::nope", {"token": tokens[0]})):
            with pytest.raises(ErrorReply):
                alice.request(topic, payload)
        stranger = WsClient(server.ws_url)
        with pytest.raises(ErrorReply):  # a forged token: refused
            stranger.request("app::websocket:auth", {"token": tokens[1] + "x", "session": session})
        stranger.send_raw('{"topic": "app::echo", "ackId": 1, "payload": {"token": "' + tokens[1])  # malformed
        bad = requests.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {admin}x"}, timeout=5)
        assert bad.status_code == 403
        assert requests.get(f"{server.url}/_flamigo/inspect", headers={
            "Authorization": f"Bearer {admin}", "Host": "example.com"}, timeout=5).status_code == 200
        alice.close()
        server.signal(signal.SIGTERM)
        assert server.wait(30) == 0
    finally:
        server.stop()
    log = server.log
    assert "lobby" in log or "serving" in log  # the session did log
    for secret in (*tokens, admin, secured_redis.password, session, "flamigo-demo-dev-key-change-me"):
        assert secret and secret not in log, f"{secret!r} appears in the {log_format} log:\n{log}"
    if log_format == "json":
        entries = [json.loads(line) for line in log.splitlines() if line.strip()]
        assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
        assert any(entry.get("conn_id") for entry in entries), log

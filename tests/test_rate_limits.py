"""Rate limits over real sockets: off by default; 429, then 1008; HTTP 429 before the upgrade.

The token rate is set so low (one token per 1,000 s) that only the burst
counts: the outcome never depends on how fast the machine is.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import requests
from flask import Flask

from flamigo_actors import Disconnected
from tests.rawws import RawWs, Refused, text
from tests.reliability_app import create_app
from tests.support import LiveServer, eventually

NEVER_REFILLS = 0.001
"""Tokens per second: none comes back during a test."""


def serve(live_server: Callable[[Flask], LiveServer], **config: object) -> LiveServer:
    return live_server(create_app({"TESTING": True, "FLAMIGO_AUTH_REQUIRED": False, **config}))


def test_the_token_bucket_answers_429_then_closes_with_1008(live_server: Callable[[Flask], LiveServer]) -> None:
    server = serve(
        live_server,
        FLAMIGO_RATE_LIMIT=NEVER_REFILLS,
        FLAMIGO_RATE_LIMIT_BURST=3,
        FLAMIGO_RATE_LIMIT_CLOSE_AFTER=5,
    )
    seen: list[Disconnected] = []
    server.flamigo.bus.subscribe(lambda ctx, e: seen.append(e), "connection/disconnected/*")
    abuser = RawWs(server.port)
    polite = RawWs(server.port)
    abuser.send(b"".join(text({"topic": "app::echo", "payload": n, "ackId": n}) for n in range(20)))
    ending = abuser.read_until_close(timeout=10)
    assert [m["payload"] for m in ending.messages[:3]] == [0, 1, 2]
    refused = ending.messages[3:]
    assert [m["ackId"] for m in refused] == [3, 4, 5, 6, 7]  # every request read is answered
    assert all(m["payload"] == {"message": "too many requests: slow down", "status": 429} for m in refused)
    assert (ending.code, ending.reason) == (1008, "rate limit exceeded") and ending.eof
    assert server.flamigo.stats.rate_limited == 5
    event = eventually(lambda: seen and seen[0])
    assert (event.code, event.reason) == (1008, "rate limit exceeded")
    # each connection has its own bucket
    for n in range(3):
        assert polite.request("app::echo", n, ack=n)["payload"] == n
    reply = polite.request("app::echo", 3, ack=3)
    assert (reply["payload"]["status"], reply["ackId"]) == (429, 3)
    assert polite.request("app::echo", 4, ack=4)["payload"]["status"] == 429  # still open
    polite.close()


def test_connection_attempts_per_address_are_refused_with_http_429(
    live_server: Callable[[Flask], LiveServer],
) -> None:
    server = serve(live_server, FLAMIGO_CONNECT_RATE_LIMIT=NEVER_REFILLS, FLAMIGO_CONNECT_RATE_BURST=2)
    first, second = RawWs(server.port), RawWs(server.port)
    with pytest.raises(Refused) as refused:
        RawWs(server.port)
    assert refused.value.status == 429
    assert b"too many connection attempts" in refused.value.body
    assert server.flamigo.stats.connections_refused == 1
    assert len(server.flamigo.connections) == 2
    # refused before the upgrade only: accepted connections and plain HTTP carry on
    assert first.request("app::echo", "ok")["payload"] == "ok"
    assert second.request("app::echo", "ok")["payload"] == "ok"
    assert requests.get(f"{server.url}/healthz").status_code == 200
    first.close()
    second.close()


def test_rate_limits_are_off_by_default(live_server: Callable[[Flask], LiveServer]) -> None:
    server = serve(live_server)
    settings = server.flamigo.settings
    assert settings.rate_limit is None and settings.connect_rate_limit is None
    clients = [RawWs(server.port) for _ in range(50)]  # 50 connections from one address
    burst = clients[0]
    count = 2000
    burst.send(b"".join(text({"topic": "app::echo", "payload": n, "ackId": n}) for n in range(count)))
    replies = [burst.recv_json() for _ in range(count)]
    assert [r["payload"] for r in replies] == list(range(count))
    stats = server.flamigo.stats
    assert (stats.rate_limited, stats.connections_refused) == (0, 0)
    for ws in clients:
        ws.close()

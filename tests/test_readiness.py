"""Readiness: /readyz turns 503 at SIGTERM while the server still serves for the grace, then drains.

Real SIGTERMs to real server processes (single-process and gunicorn workers), and a
real redis-server killed under a server that requires it.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest
import requests
from flask import Flask

from flamigo_actors.core.settings import Settings
from flamigo_actors.ops.readiness import announce_shutdown, grace_period
from tests.support import LiveServer, RedisServer, ServerProcess, eventually, free_port


def readyz(server: object) -> tuple[int, dict[str, str]]:
    response = requests.get(f"{server.url}/readyz", timeout=5)  # type: ignore[attr-defined]
    return response.status_code, response.json()


def test_ready_until_shutdown_is_announced(demo_server: LiveServer) -> None:
    assert readyz(demo_server) == (200, {"status": "ready"})
    client = demo_server.client("alice")
    announce_shutdown(demo_server.flamigo)
    assert readyz(demo_server) == (503, {"status": "not ready", "reason": "shutting down"})
    # Announcing is not draining: connections go on being served.
    assert client.request("app::echo", "still here") == "still here"
    demo_server.client("bob").close()
    client.close()


def test_not_ready_while_a_required_redis_is_unreachable(
    demo_app: Callable[..., Flask], live_server: Callable[[Flask], LiveServer], redis_server: RedisServer
) -> None:
    server = live_server(demo_app(FLAMIGO_REDIS_URL=redis_server.url))
    assert readyz(server)[0] == 200
    redis_server.kill()
    status, body = eventually(lambda: (lambda r: r[0] == 503 and r)(readyz(server)), timeout=20)
    assert body["reason"] == "Redis is required and unreachable"
    redis_server.start()
    eventually(lambda: readyz(server)[0] == 200, timeout=30)


def test_the_grace_is_taken_from_the_drain_timeout() -> None:
    assert grace_period(Settings()) == 1.0
    assert grace_period(Settings(readiness_grace=0)) == 0
    assert grace_period(Settings(readiness_grace=5, drain_timeout=4)) == 2.0
    with pytest.raises(ValueError, match="FLAMIGO_READINESS_GRACE"):
        Settings.from_config({"FLAMIGO_READINESS_GRACE": -1}, {})


def _serves_during_the_grace_then_drains(server: ServerProcess) -> None:
    alice = server.client("alice")
    assert readyz(server)[0] == 200
    server.signal(signal.SIGTERM)
    eventually(lambda: readyz(server)[0] == 503, timeout=10)
    # Not ready, yet still serving: a new connection is accepted and answered.
    late = server.client("bob")
    assert late.request("app::echo", "late") == "late"
    assert alice.request("app::echo", "early") == "early"
    # Then the drain closes every connection with 1001 and the process exits.
    assert alice.wait_closed(timeout=20)[0] == 1001
    assert late.wait_closed(timeout=20)[0] == 1001
    assert server.wait(30) == 0


def test_sigterm_single_process(processes: list[ServerProcess]) -> None:
    server = ServerProcess.demo(
        free_port(), env={"FLAMIGO_READINESS_GRACE": "5", "FLAMIGO_DRAIN_TIMEOUT": "12"}
    )
    processes.append(server)
    server.wait_ready()
    _serves_during_the_grace_then_drains(server)
    assert "/readyz answers 503" in server.log


def test_sigterm_workers(redis_server: RedisServer, processes: list[ServerProcess]) -> None:
    server = ServerProcess.demo(
        free_port(), "--workers", "2", "--redis", redis_server.url,
        env={"FLAMIGO_READINESS_GRACE": "5", "FLAMIGO_DRAIN_TIMEOUT": "12"},
    )
    processes.append(server)
    server.wait_ready()
    _serves_during_the_grace_then_drains(server)

"""Serving from the command line, in a child process: start, healthz, graceful shutdown."""

from __future__ import annotations

import signal
import time

import requests

from tests.support import ServerProcess, free_port


def test_python_m_app_serves_healthz_and_drains_on_sigterm() -> None:
    server = ServerProcess.demo(free_port()).wait_ready()
    try:
        assert requests.get(f"{server.url}/healthz").json() == {"status": "ok", "connections": 0}
        busy = server.client("alice")
        idle = server.client("bob")
        busy.send_json({"topic": "app::demo:slow", "payload": {"seconds": 1.0}, "ackId": "inflight"})
        deferred = server.client("carol")
        deferred.send_json({"topic": "app::demo:deferred", "payload": {"seconds": 1.0}, "ackId": "later"})
        time.sleep(0.2)
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        # in-flight requests are answered before the connection closes with 1001
        assert busy.recv_json(timeout=5) == {
            "topic": "app::demo:slow", "payload": {"slept": 1.0}, "ackId": "inflight"
        }
        assert deferred.recv_json(timeout=5)["ackId"] == "later"
        for client in (busy, idle, deferred):
            assert client.wait_closed()[0] == 1001
        assert server.wait(15) == 0
        assert time.monotonic() - started < 10 + 3  # FLAMIGO_DRAIN_TIMEOUT plus grace
    finally:
        server.stop()
    log = server.log
    assert log.count("disconnected ") == 3, log
    assert "code=1001 reason=server shutting down" in log


def test_refuses_a_busy_port_with_a_clear_message() -> None:
    port = free_port()
    first = ServerProcess.demo(port).wait_ready()
    try:
        second = ServerProcess.demo(port)
        assert second.wait(20) == 1
        assert f"cannot listen on 127.0.0.1:{port}" in second.log
    finally:
        first.stop()

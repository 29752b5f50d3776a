"""Graceful shutdown of a real server process on SIGTERM and SIGINT.

The server stops accepting, lets in-flight requests (and deferred replies)
answer, closes every connection with 1001 "going away", fires every
disconnected event (the demo logs one line each) and exits within
FLAMIGO_DRAIN_TIMEOUT, even when a strategy would run far longer.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import gevent
import pytest
from flask import Flask

from flamigo_actors import Context, Disconnected
from tests.rawws import RawWs, Refused
from tests.support import LiveServer, ServerProcess, eventually, free_port, start_live_server

DRAIN = 2.0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_drains_within_the_drain_timeout(signum: int) -> None:
    server = ServerProcess.demo(free_port(), env={"FLAMIGO_DRAIN_TIMEOUT": str(DRAIN)}).wait_ready()
    try:
        token = server.login("alice")
        clients = {name: RawWs(server.port) for name in ("stuck", "inflight", "deferred", "idle", "room")}
        for ws in clients.values():
            assert ws.request("app::websocket:auth", {"token": token}, ack="auth")["payload"]["success"]
        assert clients["room"].request("app::rooms:join", {"room": "tea"})["payload"]["joined"]
        # 60 s: far beyond the drain; 0.3 s: answered during it
        clients["stuck"].send_json({"topic": "app::demo:slow", "payload": {"seconds": 60}, "ackId": "stuck"})
        clients["inflight"].send_json({"topic": "app::demo:slow", "payload": {"seconds": 0.3}, "ackId": "in"})
        clients["deferred"].send_json({"topic": "app::demo:deferred", "payload": {"seconds": 0.3}, "ackId": "de"})
        gevent.sleep(0.1)
        server.signal(signum)
        endings = {name: ws.read_until_close(timeout=DRAIN + 10) for name, ws in clients.items()}
        for name, ending in endings.items():
            assert (ending.code, ending.reason) == (1001, "server shutting down"), (name, ending)
            assert ending.eof
        assert endings["inflight"].messages == [{"topic": "app::demo:slow", "payload": {"slept": 0.3}, "ackId": "in"}]
        assert endings["deferred"].messages == [
            {"topic": "app::demo:deferred", "payload": {"slept": 0.3}, "ackId": "de"}
        ]
        assert endings["stuck"].messages == []  # cut by the drain deadline: its close says so
        with pytest.raises((ConnectionError, Refused)):
            RawWs(server.port, timeout=2)  # no longer accepting
        # exits long before the 60 s strategy would have finished
        assert server.wait(DRAIN + 15) == 0
    finally:
        server.stop()
    log = server.log
    assert log.count("disconnected ") == len(clients), log
    assert log.count("code=1001 reason=server shutting down") == len(clients), log
    assert "a strategy is still running after the drain" in log


def test_shutdown_fires_every_disconnected_event_even_past_the_drain(demo_app: Callable[..., Flask]) -> None:
    """In process: a connection whose strategy outlives the drain still gets its event."""
    server: LiveServer = start_live_server(demo_app(FLAMIGO_AUTH_REQUIRED=False))
    seen: list[Disconnected] = []

    def record(ctx: Context, event: Disconnected) -> None:
        seen.append(event)

    server.flamigo.bus.subscribe(record, "connection/disconnected/*", event_type=Disconnected)
    stuck, idle = RawWs(server.port), RawWs(server.port)
    stuck.send_json({"topic": "app::demo:slow", "payload": {"seconds": 60}, "ackId": 1})
    eventually(lambda: sum(c.client.messages_in for c in server.flamigo.connections.values()) == 1)
    gevent.sleep(0.1)  # the slow strategy starts (if not, it is queued ahead of the close anyway)
    started = time.monotonic()
    try:
        server.flamigo.shutdown(timeout=0.5)
        assert time.monotonic() - started < 30  # not the strategy's 60 s
        assert sorted(e.code for e in seen) == [1001, 1001]
        assert server.flamigo.connections == {}
        for ws in (stuck, idle):
            assert ws.read_until_close(timeout=5).code == 1001
    finally:
        server.server.stop(timeout=1)

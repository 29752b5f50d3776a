"""The JSON inspection endpoint and the live dashboard: off by default, loopback or admin token only."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import gevent
import pytest
import requests
from flask import Flask
from playwright.sync_api import expect

from tests.support import LiveServer, ServerProcess, eventually, free_port, join_room

TOKEN = "s3cret-admin-token"
PATHS = ["/_flamigo/inspect", "/_flamigo/dashboard", "/_flamigo/dashboard.js", "/_flamigo/dashboard.css"]


@pytest.fixture
def inspect_server(demo_app: Callable[..., Flask], live_server: Callable[[Flask], LiveServer]) -> LiveServer:
    return live_server(demo_app(FLAMIGO_INSPECT_ENABLED=True, FLAMIGO_ADMIN_TOKEN=TOKEN))


@pytest.mark.parametrize("path", PATHS)
def test_off_by_default(demo_server: LiveServer, path: str) -> None:
    assert requests.get(demo_server.url + path, timeout=5).status_code == 404


@pytest.mark.parametrize("path", PATHS)
def test_served_to_loopback_clients(inspect_server: LiveServer, path: str) -> None:
    response = requests.get(inspect_server.url + path, timeout=5)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


def test_inspection_document(inspect_server: LiveServer) -> None:
    alice = inspect_server.client("alice")
    alice.request("app::rooms:join", {"room": "lobby"})
    anonymous = inspect_server.client()
    try:
        doc = requests.get(f"{inspect_server.url}/_flamigo/inspect", timeout=5).json()
        assert doc["stats"]["connections"] == 2 and doc["stats"]["authenticated"] == 1
        assert doc["connections_total"] == 2
        users = {(c["user"] or {}).get("id"): c for c in doc["connections"]}
        assert set(users) == {"alice", None}
        assert users["alice"]["subscriptions"] == ["rooms/lobby", "user/alice"]
        assert {"mailbox", "outbound", "messages_in", "messages_out", "remote", "age"} <= set(users["alice"])
        kinds = {k["kind"]: k["count"] for k in doc["actor_kinds"]}
        assert kinds["connection"] == 2 and kinds["bus"] == 1
        subscriber = f"connection:{users['alice']['id']}(user=alice)"
        assert {"pattern": "rooms/lobby", "subscribers": [subscriber]} in doc["subscriptions"]
        assert set(doc["stats"]["rates_per_second"]) == {
            "messages_in", "messages_out", "events_published", "events_delivered", "events_refused",
        }
        limited = requests.get(f"{inspect_server.url}/_flamigo/inspect?limit=1", timeout=5).json()
        assert len(limited["connections"]) == 1 and limited["connections_total"] == 2
        bad = requests.get(f"{inspect_server.url}/_flamigo/inspect?limit=lots", timeout=5)
        assert bad.status_code == 400 and "limit must be an integer" in bad.json()["error"]
        assert requests.post(f"{inspect_server.url}/_flamigo/inspect", timeout=5).status_code == 405
    finally:
        alice.close()
        anonymous.close()


@pytest.mark.parametrize("path", PATHS)
def test_wrong_token_is_refused_even_from_loopback(inspect_server: LiveServer, path: str) -> None:
    for header in (f"Bearer {TOKEN}x", "Bearer ", f"Basic {TOKEN}"):
        response = requests.get(inspect_server.url + path, headers={"Authorization": header}, timeout=5)
        assert response.status_code == 403, header
        assert "token" in response.json()["error"].lower()


@pytest.mark.parametrize("path", PATHS)
def test_proxied_client_needs_the_token(inspect_server: LiveServer, path: str) -> None:
    # Behind a reverse proxy on this machine every request comes from 127.0.0.1:
    # a forwarded request is not a local one.
    forwarded = {"X-Forwarded-For": "203.0.113.7"}
    refused = requests.get(inspect_server.url + path, headers=forwarded, timeout=5)
    assert refused.status_code == 403
    assert "FLAMIGO_ADMIN_TOKEN" in refused.json()["error"]
    allowed = requests.get(
        inspect_server.url + path, headers={**forwarded, "Authorization": f"Bearer {TOKEN}"}, timeout=5
    )
    assert allowed.status_code == 200


def test_foreign_host_name_is_refused_from_loopback(inspect_server: LiveServer) -> None:
    # A page whose DNS name was rebound to 127.0.0.1 must not read the endpoint.
    response = requests.get(
        f"{inspect_server.url}/_flamigo/inspect", headers={"Host": "evil.example:80"}, timeout=5
    )
    assert response.status_code == 403


@pytest.mark.parametrize("path", PATHS)
def test_non_loopback_address_needs_the_token(demo_app: Callable[..., Flask], path: str) -> None:
    # Tests only use 127.0.0.1 sockets: a remote peer is the REMOTE_ADDR of the WSGI environ.
    remote = {"REMOTE_ADDR": "203.0.113.9"}
    http = demo_app(FLAMIGO_INSPECT_ENABLED=True, FLAMIGO_ADMIN_TOKEN=TOKEN).test_client()
    refused = http.get(path, environ_base=remote)
    assert refused.status_code == 403
    assert "loopback" in refused.get_json()["error"]
    assert http.get(path, environ_base=remote, headers={"Authorization": f"Bearer {TOKEN}x"}).status_code == 403
    assert http.get(path, environ_base=remote, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert http.get(path).status_code == 200  # the same request from 127.0.0.1

    no_token = demo_app(FLAMIGO_INSPECT_ENABLED=True).test_client()
    response = no_token.get(path, environ_base=remote, headers={"Authorization": "Bearer anything"})
    assert response.status_code == 403
    assert "no FLAMIGO_ADMIN_TOKEN is configured" in response.get_json()["error"]


def test_dashboard_shows_connections_and_mailbox_depth_in_chromium(page: Any, artifacts_dir: str) -> None:
    port = free_port()
    # A child process: the slow strategy may still run when the test ends (short drain).
    server = ServerProcess.demo(
        port, env={"FLAMIGO_INSPECT_ENABLED": "true", "FLAMIGO_DRAIN_TIMEOUT": "1"}
    ).wait_ready()
    clients = []
    try:
        for user, room in (("alice", "lobby"), ("bob", "random"), ("carol", "dev")):
            client = server.client(user)
            join_room(client, room, user)  # its own presence diff is in before carol's mailbox fills
            clients.append(client)
        carol = clients[2]
        carol.send_json({"topic": "app::demo:slow", "payload": {"seconds": 30}, "ackId": "slow"})
        for n in range(4):
            carol.send_json({"topic": "app::echo", "payload": n, "ackId": n})

        page.goto(f"{server.url}/_flamigo/dashboard")
        # The page's CSP forbids eval: wait with locators, not JS expressions.
        expect(page.locator("#stat-connections")).to_have_text("3", timeout=20_000)
        carol_row = page.locator("#connections tbody tr").filter(
            has=page.locator("td.user", has_text=re.compile("^carol$"))
        )
        expect(carol_row.locator("td.mailbox")).to_have_text("4", timeout=20_000)
        rows = page.eval_on_selector_all(
            "#connections tbody tr",
            "rows => rows.map(r => [r.querySelector('.user').textContent, r.querySelector('.mailbox').textContent])",
        )
        assert sorted(rows) == [["alice", "0"], ["bob", "0"], ["carol", "4"]]
        assert page.text_content("#stat-authenticated") == "3"
        assert page.text_content("#status").startswith("live")
        assert page.text_content("#rate-messages_in").endswith("/s")
        page.screenshot(path=os.path.join(artifacts_dir, "dashboard.png"), full_page=True)

        # It is live: a client leaving shows up without reloading the page.
        clients[0].close()
        expect(page.locator("#stat-connections")).to_have_text("2", timeout=20_000)
    finally:
        for client in clients:
            client.close()
        server.stop()


def test_history_is_sampled_every_second_into_the_inspection_document(inspect_server: LiveServer) -> None:
    client = inspect_server.client("dave")
    for n in range(5):
        client.request("app::echo", n)

    def samples() -> list[dict[str, Any]]:
        return list(requests.get(f"{inspect_server.url}/_flamigo/inspect", timeout=5).json()["history"])

    rows = eventually(lambda: (lambda h: len(h) >= 3 and h)(samples()), timeout=20)
    assert set(rows[-1]) == {"t", "connections", "requests_per_s", "deliveries_per_s", "p99_ms", "refusals_per_s"}
    assert rows[-1]["connections"] == 1
    assert all(a["t"] < b["t"] for a, b in zip(rows, rows[1:]))
    assert any(row["requests_per_s"] > 0 for row in rows) or any(row["p99_ms"] for row in rows)
    client.close()


def test_history_keeps_ten_minutes() -> None:
    from flamigo_actors.ops.history import SAMPLES, History
    from flamigo_actors.ops.meter import Meter

    class Counters:
        messages_in = connections_refused = slow_consumers = rate_limited = frames_dropped = 0

    class Bus:
        class stats:  # noqa: N801 - the shape of Bus.stats
            delivered = refused = 0

    class Host:
        stats, bus, connections = Counters(), Bus(), {"c1": object()}

    now = [0.0]
    meter = Meter()
    history = History(Host(), meter, clock=lambda: now[0])  # type: ignore[arg-type]
    for second in range(SAMPLES + 50):
        now[0] = float(second)
        Counters.messages_in += 10
        meter.strategy_done("app::x", 200, 0.001 * (second % 100 + 1))
        history.sample()
    rows = history.rows()
    assert len(rows) == SAMPLES == 600
    assert rows[-1]["requests_per_s"] == 10.0 and rows[-1]["connections"] == 1
    assert rows[-1]["p99_ms"] is not None


def test_dashboard_draws_history_charts_and_the_busiest_domain_actors_in_chromium(
    demo_app: Callable[..., Flask], live_server: Callable[[Flask], LiveServer], page: Any, artifacts_dir: str
) -> None:
    from gevent.event import Event

    from flamigo_actors import DomainActor

    blocker = Event()

    class Backlog(DomainActor):
        kind = "test-backlog"

        def hold(self) -> None:
            blocker.wait(30)

    app = demo_app(FLAMIGO_INSPECT_ENABLED=True)
    server = live_server(app)
    client = server.client("erin")

    def traffic() -> None:  # requests every second or so: every chart gets points
        n = 0
        while True:
            client.request("app::echo", n)
            n += 1
            gevent.sleep(0.2)

    worker = gevent.spawn(traffic)
    try:
        ref = server.flamigo.actors.get(Backlog, "queue-7")
        for _ in range(4):
            ref.tell("hold")  # the first holds; three wait in its mailbox
        page.goto(f"{server.url}/_flamigo/dashboard")
        for chart in ("connections", "requests", "deliveries", "p99", "refusals"):
            expect(page.locator(f"#chart-{chart} svg")).to_have_attribute(
                "data-points", re.compile(r"^([3-9]|\d\d+)$"), timeout=20_000
            )
        points = page.get_attribute("#chart-connections polyline", "points") or ""
        assert len(points.split()) >= 3
        expect(page.locator("#chart-connections .last")).to_contain_text("1", timeout=10_000)
        row = page.locator("#domain-busiest tbody tr").first
        expect(row).to_contain_text("queue-7", timeout=10_000)
        expect(row.locator("td.mailbox")).to_have_text("3")
        path = os.path.join(artifacts_dir, "dashboard-history.png")
        page.screenshot(path=path, full_page=True)
        print(f"dashboard screenshot: {path}")
    finally:
        worker.kill()
        blocker.set()
        client.close()

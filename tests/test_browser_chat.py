"""The demo chat UI in headless Chromium: two users, live messages, errors, a server restart.

Everything is polled with Playwright's waits (``expect``), never timed.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from typing import Any

from playwright.sync_api import expect

from tests.support import LiveServer, ServerProcess, eventually, free_port, post_message

WAIT = 30_000  # ms: generous upper bound for a poll, never an expected duration


def log_in(page: Any, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/")
    page.fill("#username", username)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "connected", timeout=WAIT)
    expect(page.locator("#whoami")).to_have_text(f"signed in as {username}")


def join(page: Any, room: str) -> None:
    page.fill("#room-name", room)
    page.click("#join-form button[type=submit]")
    expect(page.locator("#room-title")).to_have_text(f"#{room}", timeout=WAIT)
    expect(page.locator(f'#room-list button[data-room="{room}"]')).to_have_attribute("aria-current", "true")


def send(page: Any, text: str, *, via: str = "ws") -> None:
    page.fill("#message-text", text)
    page.click("#send-ws" if via == "ws" else "#send-http")
    expect(page.locator("#message-text")).to_have_value("", timeout=WAIT)


def expect_message(page: Any, user: str, text: str) -> None:
    message = page.locator("#messages .message", has_text=text)
    expect(message).to_have_count(1, timeout=WAIT)
    expect(message.locator(".user")).to_have_text(user)


def test_two_users_chat_over_websocket_and_http(
    demo_server: LiveServer, new_page: Callable[[], Any], artifacts_dir: str
) -> None:
    alice, bob = new_page(), new_page()
    log_in(alice, demo_server.url, "alice")
    log_in(bob, demo_server.url, "bob")
    join(alice, "e2e")
    join(bob, "e2e")

    send(alice, "hello from alice over the WebSocket")
    for page in (alice, bob):
        expect_message(page, "alice", "hello from alice over the WebSocket")

    send(bob, "bob posted this through the Flask view", via="http")
    for page in (alice, bob):
        expect_message(page, "bob", "bob posted this through the Flask view")

    alice.screenshot(path=os.path.join(artifacts_dir, "chat-alice.png"), full_page=True)
    bob.screenshot(path=os.path.join(artifacts_dir, "chat-bob.png"), full_page=True)

    # Rooms are separate: a room alice has not joined stays silent for her.
    join(bob, "elsewhere")
    send(bob, "only for elsewhere")
    expect_message(bob, "bob", "only for elsewhere")
    expect(alice.locator("#messages .message", has_text="only for elsewhere")).to_have_count(0)
    expect(alice.locator("#messages .message")).to_have_count(2)


def texts_shown(page: Any) -> list[str]:
    return list(page.locator("#messages .message .text").all_text_contents())


def test_a_room_shows_its_history_on_join_and_after_a_reload(
    demo_server: LiveServer, new_page: Callable[[], Any], artifacts_dir: str
) -> None:
    alice, bob, carol = new_page(), new_page(), new_page()
    log_in(alice, demo_server.url, "alice")
    join(alice, "history")
    said = ["first, over the WebSocket", "second, through the Flask view", "third, over the WebSocket"]
    for text, via in zip(said, ("ws", "http", "ws")):
        send(alice, text, via=via)
        expect_message(alice, "alice", text)

    # Joining shows what was said before, oldest first.
    log_in(bob, demo_server.url, "bob")
    join(bob, "history")
    expect(bob.locator("#messages .message")).to_have_count(3, timeout=WAIT)
    assert texts_shown(bob) == said

    # A reload starts from an empty page: the history comes back, once.
    alice.reload()
    expect(alice.locator("#conn-state")).to_have_attribute("data-state", "connected", timeout=WAIT)
    expect(alice.locator("#messages .message")).to_have_count(3, timeout=WAIT)
    assert texts_shown(alice) == said

    # A message said while carol joins is shown once, whether it reaches her as a push, in the history or both.
    log_in(carol, demo_server.url, "carol")
    carol.fill("#room-name", "history")
    carol.click("#join-form button[type=submit]")
    send(bob, "said while carol joins", via="http")
    said.append("said while carol joins")
    for page in (alice, bob, carol):
        expect(page.locator("#messages .message")).to_have_count(4, timeout=WAIT)
        expect_message(page, "bob", "said while carol joins")
        assert texts_shown(page) == said
    carol.screenshot(path=os.path.join(artifacts_dir, "chat-history-carol.png"), full_page=True)
    alice.screenshot(path=os.path.join(artifacts_dir, "chat-history-alice-reloaded.png"), full_page=True)


def test_request_errors_show_in_the_page(demo_server: LiveServer, new_page: Callable[[], Any]) -> None:
    page = new_page()
    log_in(page, demo_server.url, "erin")

    page.click("#demo-fail")
    expect(page.locator("#errors li", has_text="app::demo:fail: 500 internal error")).to_have_count(1, timeout=WAIT)
    # The server's exception text never reaches the page.
    expect(page.locator("body")).not_to_contain_text("stays on the server")

    page.fill("#call-topic", "app::no:such-strategy")
    page.click("#call-form button[type=submit]")
    expect(page.locator("#call-result")).to_contain_text("✗ 404", timeout=WAIT)
    rejected = page.evaluate(
        """() => window.chat.client.request("app::no:such-strategy", {}).then(
            () => null, (error) => ({status: error.status, code: error.code, message: error.message}))"""
    )
    assert rejected is not None and rejected["status"] == 404 and rejected["code"] == "server"

    page.fill("#call-topic", "app::rooms:join")
    page.fill("#call-payload", '{"room": "no spaces allowed"}')
    page.click("#call-form button[type=submit]")
    expect(page.locator("#call-result")).to_contain_text("✗ 422", timeout=WAIT)

    # And the connection is still fine afterwards.
    page.fill("#call-topic", "app::echo")
    page.fill("#call-payload", '{"still": "alive"}')
    page.click("#call-form button[type=submit]")
    expect(page.locator("#call-result")).to_have_text('→ {"still":"alive"}', timeout=WAIT)
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "connected")


def test_pages_reconnect_reauthenticate_and_rejoin_after_a_server_restart(
    new_page: Callable[[], Any], artifacts_dir: str
) -> None:
    port = free_port()
    server = ServerProcess.demo(port)
    try:
        server.wait_ready()
        alice, bob = new_page(), new_page()
        log_in(alice, server.url, "alice")
        log_in(bob, server.url, "bob")
        join(alice, "restart")
        join(bob, "restart")
        send(alice, "before the restart")
        expect_message(bob, "alice", "before the restart")

        server.stop()  # SIGTERM: graceful drain, every connection closed with 1001
        for page in (alice, bob):
            expect(page.locator("#conn-state")).to_have_attribute("data-state", "reconnecting", timeout=WAIT)
            expect(page.locator("#conn-log li", has_text="connection lost (1001")).to_have_count(1)
        alice.screenshot(path=os.path.join(artifacts_dir, "chat-reconnecting-alice.png"), full_page=True)

        server = ServerProcess.demo(port)  # same port; same SECRET_KEY, so tokens stay valid
        server.wait_ready()
        for page in (alice, bob):
            expect(page.locator("#conn-state")).to_have_attribute("data-state", "connected", timeout=WAIT)
            expect(page.locator("#conn-log li", has_text="reconnected after")).to_have_count(1)
            expect(page.locator("#conn-log li", has_text="re-joined")).to_contain_text("#restart")

        # The new server knows nothing of the old connections: the messages flow
        # only because both pages re-authenticated and re-joined by themselves.
        send(bob, "after the restart, over the WebSocket")
        send(alice, "after the restart, over HTTP", via="http")
        for page in (alice, bob):
            expect_message(page, "bob", "after the restart, over the WebSocket")
            expect_message(page, "alice", "after the restart, over HTTP")

        figures = {
            name: page.evaluate("() => ({...window.chat.client.stats})")
            for name, page in (("alice", alice), ("bob", bob))
        }
        with open(os.path.join(artifacts_dir, "browser-reconnect.json"), "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=2)
        for stats in figures.values():
            assert stats["reconnects"] == 1 and stats["connects"] == 2
        alice.screenshot(path=os.path.join(artifacts_dir, "chat-after-restart-alice.png"), full_page=True)
        bob.screenshot(path=os.path.join(artifacts_dir, "chat-after-restart-bob.png"), full_page=True)
    finally:
        server.stop()


def test_the_page_loads_the_client_from_the_extension(demo_server: LiveServer, page: Any) -> None:
    response = page.goto(f"{demo_server.url}/_flamigo/flamigo.js")
    assert response is not None and response.status == 200
    assert "javascript" in response.headers["content-type"]
    page.goto(f"{demo_server.url}/")
    expect(page.locator("#login-view")).to_be_visible()
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "offline")


def test_the_heartbeat_finds_a_frozen_server_dead_in_a_real_browser(
    new_page: Callable[[], Any], artifacts_dir: str
) -> None:
    """Chromium does not notice a peer that stops answering; flamigo.js's heartbeat does."""
    server = ServerProcess.demo(free_port())
    try:
        server.wait_ready()
        page = new_page()
        page.goto(f"{server.url}/")
        page.evaluate(
            """async ([url, token]) => {
                const { connect } = await import("/_flamigo/flamigo.js");
                const events = [];
                const client = connect(url, {
                    token, heartbeatInterval: 300, heartbeatTimeout: 600, connectTimeout: 1000,
                    reconnectDelay: 200, reconnectDelayMax: 500,
                });
                client.listen("close", (e) => events.push({type: "close", code: e.code, at: Date.now()}));
                client.listen("open", (e) => events.push({type: "open", reconnect: e.reconnect}));
                window.probe = { client, events };
                await client.ready();
            }""",
            [server.ws_url, server.login("hank")],
        )
        frozen_at = page.evaluate("() => Date.now()")
        server.signal(signal.SIGSTOP)  # sockets stay open, nothing answers
        try:
            page.wait_for_function(
                "() => window.probe.events.some((e) => e.type === 'close' && e.code === 4001)",
                timeout=WAIT,
            )
        finally:
            server.signal(signal.SIGCONT)
        detected = page.evaluate(
            "(t) => window.probe.events.find((e) => e.type === 'close').at - t", frozen_at
        )
        page.wait_for_function(
            "() => window.probe.events.some((e) => e.type === 'open' && e.reconnect)", timeout=WAIT
        )
        assert page.evaluate("() => window.probe.client.request('app::echo', 'thawed')") == "thawed"
        page.evaluate("() => window.probe.client.close()")
        with open(os.path.join(artifacts_dir, "browser-heartbeat.json"), "w", encoding="utf-8") as handle:
            json.dump({"dead_connection_detected_ms": detected, "heartbeat_interval_ms": 300,
                       "heartbeat_timeout_ms": 600}, handle, indent=2)
    finally:
        server.stop()


def test_a_page_back_from_the_background_checks_its_connection_at_once(
    new_page: Callable[[], Any],
) -> None:
    """A tab that becomes visible again probes its connection at once.

    The heartbeat interval is a minute here: only the client's
    ``visibilitychange`` handler can find the dead server within the poll's
    bound. (Headless Chromium never hides a page, so the test tells the page
    it was hidden and is visible again, the way the browser would.)
    """
    server = ServerProcess.demo(free_port())
    try:
        server.wait_ready()
        page = new_page()
        page.goto(f"{server.url}/")
        page.evaluate(
            """async ([url, token]) => {
                const { connect } = await import("/_flamigo/flamigo.js");
                window.visibility = "visible";
                Object.defineProperty(document, "visibilityState", {
                    configurable: true, get: () => window.visibility,
                });
                const events = [];
                const client = connect(url, {
                    token, heartbeatInterval: 60000, heartbeatTimeout: 500, connectTimeout: 1000,
                    reconnectDelay: 200, reconnectDelayMax: 500,
                });
                client.listen("close", (e) => events.push({type: "close", code: e.code}));
                client.listen("open", (e) => events.push({type: "open", reconnect: e.reconnect}));
                window.probe = { client, events };
                await client.ready();
            }""",
            [server.ws_url, server.login("iris")],
        )
        switch = """(state) => {
            window.visibility = state;
            document.dispatchEvent(new Event("visibilitychange"));
        }"""
        page.evaluate(switch, "hidden")
        server.signal(signal.SIGSTOP)  # dies while the tab is in the background
        try:
            page.evaluate(switch, "visible")
            page.wait_for_function(
                "() => window.probe.events.some((e) => e.type === 'close' && e.code === 4001)",
                timeout=20_000,  # far below the 60 s heartbeat interval
            )
        finally:
            server.signal(signal.SIGCONT)
        page.wait_for_function(
            "() => window.probe.events.some((e) => e.type === 'open' && e.reconnect)", timeout=WAIT
        )
        page.evaluate("() => window.probe.client.close()")
    finally:
        server.stop()


def test_a_page_whose_server_is_killed_resumes_and_shows_each_message_once_in_order(
    redis_server: Any, new_page: Callable[[], Any], artifacts_dir: str
) -> None:
    """Connection-state recovery in Chromium: the page's server dies (SIGKILL) and comes back on
    the same port; what was said meanwhile (through another server on the same Redis) is replayed,
    and the member list is right again (the dead server's entry for the page leaves, once)."""
    port = free_port()
    # A short down-after: the killed server's presence entries are reaped within seconds.
    env = {"FLAMIGO_PRESENCE_DOWN_AFTER": "3", "FLAMIGO_PRESENCE_REFRESH": "1"}
    servers = [ServerProcess.demo(port, "--redis", redis_server.url, env=env),
               ServerProcess.demo(free_port(), "--redis", redis_server.url, env=env)]
    observer = None
    try:
        for server in servers:
            server.wait_ready()
        post_message(servers[1], "bob", "blip", "m1")  # the room's actor lives on the server that stays
        page, carol = new_page(), new_page()
        log_in(page, servers[0].url, "alice")
        join(page, "blip")
        expect_message(page, "bob", "m1")  # from the history
        log_in(carol, servers[1].url, "carol")  # in the room too, on the server that stays
        join(carol, "blip")
        for viewer in (page, carol):
            expect(viewer.locator("#members li")).to_have_text(["alice", "carol"], timeout=WAIT)

        servers[0].signal(signal.SIGKILL)  # no close frame, no goodbye: the page finds out itself
        servers[0].wait(10)
        for n in (2, 3, 4):  # said while the page has no socket
            post_message(servers[1], "bob", "blip", f"m{n}")
        servers[0] = ServerProcess.demo(port, "--redis", redis_server.url, env=env)
        servers[0].wait_ready()
        expect(page.locator("#conn-state")).to_have_attribute("data-state", "connected", timeout=WAIT)
        expect(page.locator("#conn-log li", has_text="resumed: missed messages replayed")).to_have_count(1, timeout=WAIT)
        post_message(servers[1], "bob", "blip", "m5")
        expect_message(page, "bob", "m5")
        for n in range(1, 5):
            expect_message(page, "bob", f"m{n}")  # each exactly once
        texts = page.locator("#messages .message .text").all_inner_texts()
        assert texts == ["m1", "m2", "m3", "m4", "m5"]

        # The member list: alice once (her new connection; the killed server's entry is gone,
        # not "2 tabs"), carol once, on both pages and as every server lists it.
        for viewer in (page, carol):
            expect(viewer.locator("#members li")).to_have_text(["alice", "carol"], timeout=WAIT)
        observer = servers[1].client("dave")  # not in the room: lists without being listed

        def listed() -> Any:
            return observer.request("app::rooms:members", {"room": "blip"})["members"]

        view = 'window.chat.client.presence("rooms/blip").list()'
        eventually(lambda: {k: len(v) for k, v in listed().items()} == {"alice": 1, "carol": 1}, timeout=WAIT / 1000)
        eventually(lambda: page.evaluate(view) == listed() == carol.evaluate(view), timeout=WAIT / 1000)
        page.screenshot(path=os.path.join(artifacts_dir, "chat-resumed.png"), full_page=True)
    finally:
        if observer is not None:
            observer.close()
        for server in servers:
            server.stop()

"""The demo's member list in headless Chromium: a second user joins and leaves, a tab reconnects.

Everything is polled with Playwright's waits (``expect``), never timed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from playwright.sync_api import expect

from tests.support import LiveServer, eventually
from tests.test_browser_chat import WAIT, join, log_in


def members(page: Any) -> Any:
    return page.locator("#members li")


def test_the_member_list_follows_joins_leaves_and_reconnects(
    demo_server: LiveServer, new_page: Callable[[], Any]
) -> None:
    alice, bob = new_page(), new_page()
    log_in(alice, demo_server.url, "alice")
    join(alice, "here")
    expect(members(alice)).to_have_text(["alice"], timeout=WAIT)
    log_in(bob, demo_server.url, "bob")
    join(bob, "here")
    expect(members(alice)).to_have_text(["alice", "bob"], timeout=WAIT)
    expect(members(bob)).to_have_text(["alice", "bob"], timeout=WAIT)
    expect(alice.locator("#member-count")).to_have_text("2")
    # bob leaves the room: alice's list drops him, his own list empties
    bob.click("#leave-room")
    expect(members(alice)).to_have_text(["alice"], timeout=WAIT)
    # bob comes back, then closes his tab (no leave request at all)
    join(bob, "here")
    expect(members(alice)).to_have_text(["alice", "bob"], timeout=WAIT)
    bob.close()
    expect(members(alice)).to_have_text(["alice"], timeout=WAIT)
    # alice's socket is cut by the server: she reconnects, re-joins, and the list is right again
    presence = demo_server.flamigo.presence
    (before,) = presence.list("rooms/here")["alice"]
    for conn in list(demo_server.flamigo.connections.values()):
        conn.abort(1006, "cut by the test")
    eventually(lambda: [m["ref"] for m in presence.list("rooms/here").get("alice", [])] not in ([], [before["ref"]]),
               timeout=WAIT / 1000)
    (after,) = presence.list("rooms/here")["alice"]  # the new connection's entry only: no zombie
    page_view = 'window.chat.client.presence("rooms/here").list()'
    expect(members(alice)).to_have_text(["alice"], timeout=WAIT)
    eventually(lambda: alice.evaluate(page_view) == {"alice": [after]}, timeout=WAIT / 1000)

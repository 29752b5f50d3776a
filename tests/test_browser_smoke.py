"""The real browser speaks the wire protocol to a live server (a smoke test of the browser fixture)."""

from typing import Any

from tests.support import LiveServer


def test_browser_websocket_round_trip(demo_server: LiveServer, page: Any) -> None:
    token = demo_server.login("alice")
    page.goto(f"{demo_server.url}/healthz")
    replies = page.evaluate(
        """async ([url, token]) => {
            const ws = new WebSocket(url);
            await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
            const replies = [];
            const next = () => new Promise(resolve => ws.onmessage = e => resolve(JSON.parse(e.data)));
            ws.send(JSON.stringify({topic: "app::websocket:auth", payload: {token}, ackId: "a"}));
            replies.push(await next());
            ws.send(JSON.stringify({topic: "app::echo", payload: {hello: "browser"}, ackId: 2}));
            replies.push(await next());
            ws.close();
            return replies;
        }""",
        [demo_server.ws_url, token],
    )
    assert replies[0]["payload"]["success"] is True
    assert replies[1] == {"topic": "app::echo", "payload": {"hello": "browser"}, "ackId": 2}

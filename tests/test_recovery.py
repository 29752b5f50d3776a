"""Connection-state recovery in one process: the demo served live, real sockets, the embedded store.

The two-process cases (Redis, SIGKILL, FLUSHALL) are in tests/test_recovery_redis.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import pytest
from flask import Flask

from flamigo_actors.runtime.recovery import session_key
from tests.support import ErrorReply, LiveServer, WsClient, eventually, nothing_arrives, post_message


def opted_in(server: Any, username: str, **auth: Any) -> tuple[WsClient, dict[str, Any]]:
    """A client authenticated with ``recover: true`` (or ``auth``'s resume): it and the auth reply."""
    client = WsClient(server.ws_url)
    reply = client.request("app::websocket:auth", {"token": server.login(username), "recover": True, **auth})
    return client, reply


def join(client: WsClient, room: str) -> dict[str, Any]:
    reply = client.request("app::rooms:join", {"room": room})
    assert reply["joined"] is True
    return reply  # type: ignore[no-any-return]


def cut(client: WsClient) -> None:
    """Lose the socket abruptly: no close frame (a network drop)."""
    client.ws.sock.close()


def chat(client: WsClient, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    pushes = client.pushes("chat:message", count=count, timeout=timeout)
    assert len(pushes) == count, pushes
    return pushes


def offsets(pushes: list[dict[str, Any]]) -> list[int]:
    return [p["pos"]["offset"] for p in pushes]


def since(room: str, push_or_pos: dict[str, Any]) -> dict[str, Any]:
    pos = push_or_pos.get("pos", push_or_pos)
    return {f"rooms/{room}": {"offset": pos["offset"], "epoch": pos["epoch"]}}


def resume(server: Any, username: str, session: str, positions: dict[str, Any]) -> tuple[WsClient, dict[str, Any]]:
    return opted_in(server, username, resume={"session": session, "since": positions})


def test_a_resumed_client_gets_exactly_what_it_missed_in_order_then_live_pushes(demo_server: LiveServer) -> None:
    ann, auth = opted_in(demo_server, "ann")
    assert isinstance(auth["session"], str) and auth["session"]
    joined = join(ann, "r1")
    assert joined["pos"]["stream"] == "rooms/r1" and joined["pos"]["offset"] == 0
    assert isinstance(joined["pos"]["epoch"], str)
    for n in range(1, 4):
        post_message(demo_server, "bob", "r1", f"m{n}")
    got = chat(ann, 3)
    assert offsets(got) == [1, 2, 3]
    assert all(p["pos"]["stream"] == "rooms/r1" and p["pos"]["epoch"] == joined["pos"]["epoch"] for p in got)
    assert set(got[0]) == {"topic", "payload", "pos"}
    cut(ann)
    for n in range(4, 9):
        post_message(demo_server, "bob", "r1", f"m{n}")

    back, reply = resume(demo_server, "ann", auth["session"], since("r1", got[-1]))
    assert reply["recovered"] is True and reply["session"] == auth["session"]
    assert reply["streams"]["rooms/r1"]["recovered"] is True
    missed = chat(back, 5)
    assert offsets(missed) == [4, 5, 6, 7, 8]
    assert [p["payload"]["text"] for p in missed] == [f"m{n}" for n in range(4, 9)]
    post_message(demo_server, "bob", "r1", "live")
    live = chat(back, 1)
    assert offsets(live) == [9] and live[0]["payload"]["text"] == "live"
    assert nothing_arrives(back)
    back.close()


def test_clients_that_do_not_opt_in_see_todays_frames(demo_server: LiveServer) -> None:
    plain = demo_server.client("carl")
    reply = plain.request("app::rooms:join", {"room": "r2"})
    # Today's reply (with presence's members): no position for a client that did not opt in.
    assert reply == {"room": "r2", "joined": True, "members": reply["members"]}
    assert list(reply["members"]) == ["carl"]
    fan, _ = opted_in(demo_server, "fan")
    join(fan, "r2")
    post_message(demo_server, "bob", "r2", "hello")
    push = plain.pushes("chat:message")[0]
    assert set(push) == {"topic", "payload"}
    assert chat(fan, 1)[0]["pos"]["offset"] == 1
    plain.close()
    fan.close()


def test_a_client_that_never_received_a_push_resumes_from_its_join_position(demo_server: LiveServer) -> None:
    post_message(demo_server, "bob", "r3", "before")  # offset 1, before ann joins
    ann, auth = opted_in(demo_server, "ann")
    joined = join(ann, "r3")
    assert joined["pos"]["offset"] == 1
    cut(ann)
    post_message(demo_server, "bob", "r3", "after-1")
    post_message(demo_server, "bob", "r3", "after-2")
    back, reply = resume(demo_server, "ann", auth["session"], since("r3", joined["pos"]))
    assert reply["recovered"] is True
    assert [p["payload"]["text"] for p in chat(back, 2)] == ["after-1", "after-2"]
    assert nothing_arrives(back)
    # Naming no position at all: the session's recorded one is used.
    cut(back)
    post_message(demo_server, "bob", "r3", "after-3")
    again, reply = resume(demo_server, "ann", auth["session"], {})
    assert reply["recovered"] is True
    assert [p["payload"]["text"] for p in chat(again, 1)] == ["after-3"]
    again.close()


@pytest.fixture
def short_window(demo_app: Callable[..., Flask], live_server: Callable[[Flask], LiveServer]) -> LiveServer:
    return live_server(demo_app(FLAMIGO_RECOVERY_WINDOW=0.5, FLAMIGO_RECOVERY_HISTORY=3))


def test_past_the_window_the_session_is_unknown_and_nothing_is_replayed(short_window: LiveServer) -> None:
    ann, auth = opted_in(short_window, "ann")
    joined = join(ann, "w1")
    ann.close()
    post_message(short_window, "bob", "w1", "missed")
    gevent.sleep(1.0)  # past the 0.5 s window
    back, reply = resume(short_window, "ann", auth["session"], since("w1", joined["pos"]))
    assert reply["recovered"] is False and reply["reason"] in ("unknown_session", "expired")
    assert reply["session"] != auth["session"]
    assert reply["success"] is True  # still authenticated
    assert back.request("app::rooms:list")["rooms"]
    assert nothing_arrives(back)
    back.close()


def test_history_overflow_answers_too_many_and_live_pushes_go_on(short_window: LiveServer) -> None:
    ann, auth = opted_in(short_window, "ann")
    joined = join(ann, "w2")
    cut(ann)
    for n in range(5):  # the history keeps 3
        post_message(short_window, "bob", "w2", f"m{n}")
    back, reply = resume(short_window, "ann", auth["session"], since("w2", joined["pos"]))
    assert reply["recovered"] is False
    assert reply["streams"]["rooms/w2"] == {
        "recovered": False, "reason": "too_many",
        "pos": {"stream": "rooms/w2", "offset": 5, "epoch": joined["pos"]["epoch"]},
    }
    assert nothing_arrives(back)
    post_message(short_window, "bob", "w2", "live")
    assert offsets(chat(back, 1)) == [6]  # still subscribed: the session recorded the room
    back.close()


def test_an_unknown_epoch_answers_epoch_mismatch(demo_server: LiveServer) -> None:
    ann, auth = opted_in(demo_server, "ann")
    join(ann, "e1")
    cut(ann)
    back, reply = resume(demo_server, "ann", auth["session"], {"rooms/e1": {"offset": 0, "epoch": "other"}})
    assert reply["recovered"] is False
    assert reply["streams"]["rooms/e1"]["reason"] == "epoch_mismatch"
    back.close()


def ask(client: WsClient, ack: str, topic: str, payload: Any, timeout: float = 10.0) -> dict[str, Any]:
    """Send a request with ``ack`` as its ackId; the whole reply message."""
    client.send_json({"topic": topic, "payload": payload, "ackId": ack})

    def answered() -> Any:
        found = next((m for m in client.backlog if m.get("ackId") == ack), None)
        if found is None:
            client.backlog.append(client._recv())
        return found

    return eventually(answered, timeout=timeout)  # type: ignore[no-any-return]


def test_a_retried_request_with_the_same_ack_id_runs_once(demo_server: LiveServer) -> None:
    ann, auth = opted_in(demo_server, "ann")
    joined = join(ann, "q1")
    first = ask(ann, "s-1", "app::rooms:send", {"room": "q1", "text": "once"})
    assert first["payload"] == {"room": "q1", "sent": True}
    cut(ann)
    back, reply = resume(demo_server, "ann", auth["session"], since("q1", joined["pos"]))
    assert reply["recovered"] is True
    # Re-sent after the resume (its reply was lost, as far as the client knows): answered
    # from the session's cache, the strategy does not run again.
    again = ask(back, "s-1", "app::rooms:send", {"room": "q1", "text": "once"})
    assert again == first
    fresh = ask(back, "s-2", "app::rooms:send", {"room": "q1", "text": "twice"})  # a new ackId runs
    assert fresh["payload"] == {"room": "q1", "sent": True}
    history = ask(back, "h-1", "app::rooms:history", {"room": "q1"})["payload"]
    assert [m["text"] for m in history["messages"]] == ["once", "twice"]
    # A strategy's error is an answer too: cached like a result.
    failed = ask(back, "f-1", "app::demo:fail", None)
    assert failed["topic"] == "error" and ask(back, "f-1", "app::demo:fail", None) == failed
    back.close()


def test_another_users_session_is_refused_with_403(demo_server: LiveServer) -> None:
    ann, auth = opted_in(demo_server, "ann")
    join(ann, "p1")
    cut(ann)
    eve = WsClient(demo_server.ws_url)
    with pytest.raises(ErrorReply) as refused:
        eve.request("app::websocket:auth", {
            "token": demo_server.login("eve"), "resume": {"session": auth["session"], "since": {}},
        })
    assert refused.value.status == 403
    with pytest.raises(ErrorReply) as unauthenticated:  # the refused resume authenticated nobody
        eve.request("app::rooms:list")
    assert unauthenticated.value.status == 401
    eve.close()
    back, reply = resume(demo_server, "ann", auth["session"], {})
    assert reply["recovered"] is True  # the owner still can
    back.close()


def test_streams_not_recorded_in_the_session_are_not_added_by_naming_them(demo_server: LiveServer) -> None:
    ann, auth = opted_in(demo_server, "ann")
    join(ann, "own")
    cut(ann)
    post_message(demo_server, "bob", "secret", "not for ann")
    back, reply = resume(demo_server, "ann", auth["session"], {"rooms/secret": {"offset": 0, "epoch": "x"}})
    assert set(reply["streams"]) == {"rooms/own"}
    post_message(demo_server, "bob", "secret", "still not for ann")
    assert nothing_arrives(back)
    back.close()


def test_an_app_with_no_recoverable_topic_gives_no_session_and_its_bus_does_not_look() -> None:
    from flask import Flask as FlaskApp

    from flamigo_actors import Flamigo, TopicError, User

    app = FlaskApp("plain")
    flamigo = Flamigo(app, auth=lambda token: User(token, token))
    try:
        with flamigo.test_client() as client:
            reply = client.request("app::websocket:auth", {"token": "ann", "recover": True})
            assert reply == {"success": True, "user": {"id": "ann", "username": "ann"}}
            assert flamigo.bus.recovery is None
            assert client.request("app::websocket:auth", {
                "token": "ann", "resume": {"session": "whatever", "since": {}},
            }) == reply
        flamigo.recoverable("rooms/*")
        assert flamigo.bus.recovery is flamigo.recovery
        with flamigo.test_client() as client:
            reply = client.request("app::websocket:auth", {"token": "bob", "recover": True})
            assert isinstance(reply["session"], str) and len(reply["session"]) >= 32
        with pytest.raises(TopicError):
            flamigo.recoverable("rooms//x")  # a malformed pattern fails at once
    finally:
        flamigo.shutdown(timeout=1)


def test_a_session_resumed_elsewhere_is_not_overwritten_by_the_old_connections_late_end(
    demo_server: LiveServer,
) -> None:
    ann, auth = opted_in(demo_server, "ann")
    joined = join(ann, "o1")
    # ann's network changes: a new connection resumes while the old one is still open here.
    back, reply = resume(demo_server, "ann", auth["session"], since("o1", joined["pos"]))
    assert reply["recovered"] is True
    ann.close()  # the old connection ends late: the window must not start now
    post_message(demo_server, "bob", "o1", "for the new connection")
    assert [p["payload"]["text"] for p in chat(back, 1)] == ["for the new connection"]
    eventually(lambda: len(demo_server.flamigo.connections) == 1)  # the old one's cleanup ran
    session = demo_server.flamigo.recovery.store.load_session(session_key(auth["session"]))
    assert session is not None and session.disconnected_at is None
    back.close()

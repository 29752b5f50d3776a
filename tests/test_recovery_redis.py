"""Connection-state recovery across processes: demo servers (``python -m app --redis``) on a real redis-server.

The client's server is killed with SIGKILL and the client resumes on another
one; Redis loses its data (``FLUSHALL``) and the resume says so.
"""

from __future__ import annotations

import signal
from typing import Any


from tests.support import RedisServer, ServerProcess, eventually, free_port, nothing_arrives, post_message
from tests.test_recovery import chat, cut, join, offsets, opted_in, resume, since


def servers(redis_server: RedisServer, processes: list[ServerProcess], count: int) -> list[ServerProcess]:
    started = [ServerProcess.demo(free_port(), "--redis", redis_server.url) for _ in range(count)]
    processes += started
    for server in started:
        server.wait_ready()
    return started


def killed_and_resumed(a: ServerProcess, b: ServerProcess) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    """ann (opted in, on ``a``) is in room k1 when bob posts m1-m3 through ``b``; ``a`` is
    killed (SIGKILL), bob posts m4-m8, and ann resumes on ``b``: checks that she gets
    exactly m4-m8, in order, then nothing; returns (her new client, her auth reply, m4-m8)."""
    ann, auth = opted_in(a, "ann")
    assert join(ann, "k1")["pos"]["offset"] == 0
    for n in range(1, 4):
        post_message(b, "bob", "k1", f"m{n}")  # through the other server: they cross Redis
    got = chat(ann, 3)
    assert offsets(got) == [1, 2, 3]
    a.signal(signal.SIGKILL)
    a.wait(10)
    for n in range(4, 9):
        post_message(b, "bob", "k1", f"m{n}")

    back, reply = resume(b, "ann", auth["session"], since("k1", got[-1]))
    assert reply["recovered"] is True and reply["session"] == auth["session"]
    missed = chat(back, 5)
    assert offsets(missed) == [4, 5, 6, 7, 8]
    assert [p["payload"]["text"] for p in missed] == [f"m{n}" for n in range(4, 9)]
    assert nothing_arrives(back, 0.5)
    return back, auth, missed


def test_a_client_whose_server_was_killed_resumes_on_another_with_exactly_what_it_missed(
    redis_server: RedisServer, processes: list[ServerProcess], backplane_mode: str
) -> None:
    a, b = servers(redis_server, processes, 2)
    back, auth, missed = killed_and_resumed(a, b)
    last = missed[-1]
    for _ in range(2):  # reconnects with nothing new: nothing replayed
        cut(back)
        back, reply = resume(b, "ann", auth["session"], since("k1", last))
        assert reply["recovered"] is True
        assert reply["streams"]["rooms/k1"]["pos"]["offset"] == 8
        assert nothing_arrives(back, 0.5)
    post_message(b, "bob", "k1", "live")
    assert offsets(chat(back, 1)) == [9]  # the session's room is subscribed again on b
    back.close()


def test_redis_data_lost_answers_epoch_mismatch_never_a_silent_recovery(
    redis_server: RedisServer, processes: list[ServerProcess], backplane_mode: str
) -> None:
    (a,) = servers(redis_server, processes, 1)
    ann, auth = opted_in(a, "ann")
    join(ann, "f1")
    post_message(a, "bob", "f1", "before")
    got = chat(ann, 1)
    redis = redis_server.client()
    redis.flushall()  # Redis loses everything while ann is connected
    cut(ann)  # a saves the session again at the disconnect
    eventually(lambda: redis.keys("flamigo:rec:session:*"), timeout=10)
    post_message(a, "bob", "f1", "after")
    back, reply = resume(a, "ann", auth["session"], since("f1", got[-1]))
    assert reply["recovered"] is False
    stream = reply["streams"]["rooms/f1"]
    assert stream["recovered"] is False and stream["reason"] == "epoch_mismatch"
    assert stream["pos"]["epoch"] != got[-1]["pos"]["epoch"]
    back.close()


def test_a_retried_request_runs_once_across_servers(
    redis_server: RedisServer, processes: list[ServerProcess], backplane_mode: str
) -> None:
    from tests.test_recovery import ask

    a, b = servers(redis_server, processes, 2)
    ann, auth = opted_in(a, "ann")
    joined = join(ann, "q2")
    first = ask(ann, "send-1", "app::rooms:send", {"room": "q2", "text": "once"})
    assert first["payload"] == {"room": "q2", "sent": True}
    a.signal(signal.SIGKILL)
    a.wait(10)
    back, _ = resume(b, "ann", auth["session"], since("q2", joined["pos"]))
    assert ask(back, "send-1", "app::rooms:send", {"room": "q2", "text": "once"}) == first
    # Run again, the room would have said it a second time: a second event in its stream.
    assert nothing_arrives(back, 1.0)
    assert redis_server.client().get("flamigo:rec:{rooms/q2}:n") == b"1"
    back.close()

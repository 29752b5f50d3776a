"""The Redis backplane in this process: two apps sharing a real redis-server.

Each app has its own bus and its own backplane link (its own origin id), so
two apps in one process behave like two processes as far as Redis is
concerned; the tests with real server processes are in test_scale_out.py.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import orjson
import pytest
from flask import Flask

from flamigo_actors import (
    BackendIdentity,
    ClientMessage,
    Context,
    User,
    event_published,
    is_authenticated,
    is_backend,
    serializable,
)
from flamigo_actors.backplane.streams import (
    REMOTE,
    RedisBackplane,
    RedisUnavailable,
    RemoteIdentity,
    backoff,
    encode_for_backplane,
    redact,
)
from flamigo_actors.core.events import EventEncodingError, decode_event
from flamigo_actors.ops.inspect import stats
from tests.support import REPO, LiveServer, RedisServer, eventually, free_port


@serializable("test.backplane.audit")
@dataclass(frozen=True)
class Audit:
    """A registered, non-client event: crosses as itself."""

    what: str

    @property
    def topics(self) -> tuple[str, ...]:
        return (f"audit/{self.what}",)


@dataclass(frozen=True)
class LocalOnly:
    """Neither registered nor a client event: it cannot cross processes."""

    what: str
    handle: object = None

    @property
    def topics(self) -> tuple[str, ...]:
        return (f"audit/{self.what}",)


@dataclass(frozen=True)
class Shout:
    """A client event that is not registered: crosses as a ClientMessageEvent."""

    room: str
    text: str

    @property
    def topics(self) -> tuple[str, ...]:
        return (f"rooms/{self.room}",)

    @property
    def client_message(self) -> ClientMessage:
        return ClientMessage("shout", {"text": self.text})


class Recorder:
    """An in-process listener that keeps what it received, with the publisher's identity."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, Any]] = []

    def __call__(self, ctx: Context, event: Any) -> None:
        self.events.append((event, ctx.identity))

    def whats(self) -> list[str]:
        return [getattr(event, "what", None) or type(event).__name__ for event, _ in self.events]


Pair = tuple[LiveServer, LiveServer]


@pytest.fixture
def pair(
    redis_server: RedisServer,
    demo_app: Callable[..., Flask],
    live_server: Callable[[Flask], LiveServer],
) -> Pair:
    """Two demo apps served live, sharing ``redis_server`` through their backplanes."""
    return (
        live_server(demo_app(FLAMIGO_REDIS_URL=redis_server.url)),
        live_server(demo_app(FLAMIGO_REDIS_URL=redis_server.url)),
    )


def backplane_of(server: LiveServer) -> RedisBackplane:
    backplane = server.flamigo.bus.backplane
    assert isinstance(backplane, RedisBackplane)
    return backplane


def test_registered_events_cross_with_a_remote_identity(pair: Pair) -> None:
    a, b = pair
    on_a, on_b = Recorder(), Recorder()
    a.flamigo.bus.subscribe(on_a, "audit/*")
    b.flamigo.bus.subscribe(on_b, "audit/*")
    alice = User("u1", "alice", frozenset({"rooms:moderate"}))
    a.flamigo.publish(Audit("login"), identity=BackendIdentity("http", alice))
    eventually(lambda: on_b.events)
    event, identity = on_b.events[0]
    assert event == Audit("login")
    assert isinstance(identity, RemoteIdentity) and identity.type == REMOTE
    assert (identity.origin_type, identity.interface, identity.user) == ("backend", "http", alice)
    assert identity.process == backplane_of(a).origin
    is_authenticated(identity)  # the user travelled along...
    with pytest.raises(Exception, match="not backend"):
        is_backend(identity)  # ...but a remote publisher is not this process's backend
    # publish_sync events cross too (it waits for local subscribers only)
    a.flamigo.publish_sync(Audit("sync"))
    eventually(lambda: on_b.whats() == ["login", "sync"])
    # each side's own listener saw its own events exactly once, never echoed back
    eventually(lambda: backplane_of(a).stats.sent >= 2)
    assert on_a.whats() == ["login", "sync"]
    assert backplane_of(b).stats.received >= 2 and backplane_of(a).stats.received == 0


def test_client_events_cross_even_when_not_registered(pair: Pair) -> None:
    a, b = pair
    member = b.client("bob")
    member.request("app::rooms:join", {"room": "hall"})
    typed = Recorder()
    b.flamigo.bus.subscribe(typed, "rooms/*")
    a.flamigo.publish(Shout("hall", "hello"))
    assert member.pushes("shout") == [{"topic": "shout", "payload": {"text": "hello"}}]
    eventually(lambda: typed.events)
    assert type(typed.events[0][0]).__name__ == "ClientMessageEvent"  # register Shout to keep it
    member.close()


def test_event_published_observers_see_events_from_other_processes(pair: Pair) -> None:
    """Regression: ``event_published.connect(fn, sender=app)`` saw only this process's events."""
    a, b = pair
    heard: dict[str, list[tuple[Any, Any, Any, bool]]] = {"a": [], "b": []}

    def observer(side: str) -> Callable[..., None]:
        def observe(sender: Any, event: Any, identity: Any, **extra: Any) -> None:
            heard[side].append((sender, event, identity, extra.get("remote", False)))

        return observe

    observe_a, observe_b = observer("a"), observer("b")
    event_published.connect(observe_a, sender=a.app)
    event_published.connect(observe_b, sender=b.app)
    try:
        on_b = Recorder()
        b.flamigo.bus.subscribe(on_b, "audit/*", "rooms/*")
        member = b.client("bob")
        member.request("app::rooms:join", {"room": "hall"})
        eventually(lambda: backplane_of(b).pending == 0)  # bob's own lifecycle events went out
        sent, published = backplane_of(b).stats.sent, b.flamigo.bus.stats.published
        alice = User("u1", "alice")
        a.flamigo.publish(Audit("seen"), identity=BackendIdentity("http", alice))
        a.flamigo.publish(Shout("hall", "hello"))
        remote_on_b = lambda: [h for h in heard["b"] if h[3]]  # noqa: E731
        eventually(lambda: len(remote_on_b()) == 2)
        # b's observer saw a's events, marked remote, with the remote publisher
        (s1, e1, i1, _), (s2, e2, _, _) = remote_on_b()
        assert (s1, e1, s2) == (b.app, Audit("seen"), b.app)
        assert type(e2).__name__ == "ClientMessageEvent" and e2.client_message == ("shout", {"text": "hello"})
        assert isinstance(i1, RemoteIdentity) and i1.user == alice
        assert i1.process == backplane_of(a).origin
        # ...the bus routed them locally, once, and did not send them back out
        assert member.pushes("shout") == [{"topic": "shout", "payload": {"text": "hello"}}]
        eventually(lambda: len(on_b.events) == 2)
        assert backplane_of(b).stats.sent == sent and backplane_of(b).pending == 0
        assert b.flamigo.bus.stats.published == published  # remote events are not local publishes
        # a's observer saw its own two publishes once each, as local ones
        assert [(sender, event) for sender, event, _, remote in heard["a"] if not remote] == [
            (a.app, Audit("seen")),
            (a.app, Shout("hall", "hello")),
        ]
        member.close()
    finally:
        event_published.disconnect(observe_a, sender=a.app)
        event_published.disconnect(observe_b, sender=b.app)


def test_an_unserialisable_event_is_delivered_locally_and_reported(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair
    on_a, on_b = Recorder(), Recorder()
    a.flamigo.bus.subscribe(on_a, "audit/*")
    b.flamigo.bus.subscribe(on_b, "audit/*")
    with caplog.at_level(logging.ERROR, logger="flamigo_actors.backplane"):
        a.flamigo.publish(LocalOnly("secret", handle=object()))  # returns: no exception
        a.flamigo.publish(Audit("after"))
    eventually(lambda: on_a.whats() == ["secret", "after"])  # delivered locally, in order
    eventually(lambda: on_b.whats() == ["after"])  # the next event crossed; this one did not
    assert backplane_of(a).stats.unserialisable == 1
    assert stats(a.flamigo)["backplane"]["unserialisable"] == 1
    report = [r.getMessage() for r in caplog.records if "LocalOnly" in r.getMessage()]
    assert len(report) == 1, caplog.text
    assert "delivered in this process only" in report[0]
    assert "@flamigo_actors.serializable" in report[0]


def test_encoding_is_documented_json() -> None:
    assert orjson.loads(encode_for_backplane(Audit("x"))) == {
        "type": "test.backplane.audit", "data": {"what": "x"}
    }
    generic = orjson.loads(encode_for_backplane(Shout("r", "t")))
    assert generic == {
        "type": "flamigo.client-message",
        "data": {"topics": ["rooms/r"], "client_topic": "shout", "payload": {"text": "t"}},
    }
    assert decode_event(generic).client_message == ("shout", {"text": "t"})  # type: ignore[attr-defined]
    with pytest.raises(EventEncodingError, match="LocalOnly cannot cross processes"):
        encode_for_backplane(LocalOnly("x"))


def test_bad_duplicate_and_missing_entries_are_counted_not_fatal(
    pair: Pair, redis_server: RedisServer
) -> None:
    a, b = pair
    on_b = Recorder()
    b.flamigo.bus.subscribe(on_b, "audit/*")
    stream = backplane_of(b).stream
    redis = redis_server.client()

    def entry(seq: int, what: str) -> dict[str, Any]:
        return {"o": "elsewhere:1:x", "s": seq, "e": encode_for_backplane(Audit(what)),
                "i": b'{"type": "backend"}'}

    redis.xadd(stream, {"o": "elsewhere:1:x", "s": 1, "e": b"not json", "i": b"{}"})
    redis.xadd(stream, {"o": "elsewhere:1:x", "s": 2,
                        "e": b'{"type": "no.such.type", "data": {}}', "i": b"{}"})
    redis.xadd(stream, entry(3, "three"))
    redis.xadd(stream, entry(3, "three again"))  # a retried write: skipped
    redis.xadd(stream, entry(7, "seven"))  # 4, 5, 6 never arrived
    a.flamigo.publish(Audit("still-flowing"))
    eventually(lambda: on_b.whats() == ["three", "seven", "still-flowing"])
    counters = backplane_of(b).stats
    assert (counters.decode_errors, counters.duplicates, counters.missed) == (2, 1, 3)
    assert on_b.events[0][1].origin_type == "backend"


def test_publishers_never_wait_for_a_frozen_redis(
    redis_server: RedisServer, demo_app: Callable[..., Flask], live_server: Callable[[Flask], LiveServer]
) -> None:
    server = live_server(demo_app())
    # A long socket timeout: if a publisher waited on Redis, it would hang for a minute.
    backplane = RedisBackplane(server.flamigo.bus, redis_server.url, socket_timeout=60)
    backplane.start()
    alice, bob = server.client("alice"), server.client("bob")
    for client in (alice, bob):
        client.request("app::rooms:join", {"room": "lobby"})
    eventually(lambda: backplane.pending == 0)
    sent = backplane.stats.sent
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)  # Redis hangs: no error, no answer
    try:
        for n in range(3):
            assert alice.request("app::rooms:send", {"room": "lobby", "text": f"m{n}"})["sent"]
        assert [p["payload"]["text"] for p in bob.pushes("chat:message", count=3)] == ["m0", "m1", "m2"]
        # All of that happened while Redis answered nothing at all:
        assert backplane.connected and backplane.stats.sent == sent and backplane.pending == 3
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    eventually(lambda: backplane.pending == 0)
    alice.close()
    bob.close()


def test_outbox_is_bounded_while_redis_is_down_and_flushed_when_back(
    redis_server: RedisServer, demo_app: Callable[..., Flask], live_server: Callable[[Flask], LiveServer]
) -> None:
    a = live_server(demo_app(FLAMIGO_REDIS_URL=redis_server.url, FLAMIGO_REDIS_OUTBOX_MAX=10))
    b = live_server(demo_app(FLAMIGO_REDIS_URL=redis_server.url))
    on_a, on_b = Recorder(), Recorder()
    a.flamigo.bus.subscribe(on_a, "audit/*")
    b.flamigo.bus.subscribe(on_b, "audit/*")
    sender = backplane_of(a)
    a.flamigo.publish(Audit("before"))
    eventually(lambda: on_b.whats() == ["before"])
    redis_server.kill()
    a.flamigo.publish(Audit("probe"))  # the sender finds out that Redis is gone
    eventually(lambda: not sender.connected)
    for n in range(15):
        a.flamigo.publish(Audit(f"n{n}"))
    eventually(lambda: len(on_a.events) == 17)  # local delivery went on
    assert sender.pending == 10
    assert sender.stats.failed == 6  # the oldest ones, counted
    redis_server.start()
    eventually(lambda: on_b.whats() == ["before"] + [f"n{n}" for n in range(5, 15)], timeout=15)
    assert sender.stats.reconnects >= 1 and sender.pending == 0
    assert backplane_of(b).stats.missed == 6  # the receiver sees the gap too
    snapshot = stats(a.flamigo)["backplane"]
    assert snapshot["connected"] and snapshot["failed"] == 6 and snapshot["reconnects"] >= 1


def test_shutdown_leaves_no_greenlet(pair: Pair) -> None:
    a, _ = pair
    backplane = backplane_of(a)
    assert len(backplane.greenlets()) == 2  # reader and sender
    a.stop()
    assert backplane.greenlets() == []
    assert stats(a.flamigo)["backplane"]["closed"] is True


def test_unreachable_redis_refuses_to_start(demo_app: Callable[..., Flask]) -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    flamigo = demo_app(FLAMIGO_REDIS_URL=url).extensions["flamigo"]
    with pytest.raises(RedisUnavailable, match="cannot reach Redis at redis://:\\*\\*\\*@127.0.0.1") as info:
        flamigo.start()
    assert "s3cret" not in str(info.value) and "FLAMIGO_REDIS_REQUIRED=false" in str(info.value)
    assert flamigo.bus.backplane is None
    flamigo.shutdown(timeout=0.1)
    optional = demo_app(FLAMIGO_REDIS_URL="http://127.0.0.1/0", FLAMIGO_REDIS_REQUIRED=False)
    with pytest.raises(RedisUnavailable, match="not a Redis URL"):
        optional.extensions["flamigo"].start()  # a wrong URL is refused even when Redis is optional


def test_local_only_start_warns_and_connects_later(
    demo_app: Callable[..., Flask],
    live_server: Callable[[Flask], LiveServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tests.support import need_binary

    redis_server = RedisServer(need_binary("redis-server"), free_port())
    with caplog.at_level(logging.WARNING, logger="flamigo_actors.backplane"):
        a = live_server(demo_app(FLAMIGO_REDIS_URL=redis_server.url, FLAMIGO_REDIS_REQUIRED=False))
    assert "REDIS UNREACHABLE" in caplog.text and "LOCAL-ONLY" in caplog.text
    on_a = Recorder()
    a.flamigo.bus.subscribe(on_a, "audit/*")
    a.flamigo.publish(Audit("local"))
    eventually(lambda: on_a.whats() == ["local"])
    try:
        redis_server.start()
        eventually(lambda: backplane_of(a).connected, timeout=10)
        b = live_server(demo_app(FLAMIGO_REDIS_URL=redis_server.url))
        on_b = Recorder()
        b.flamigo.bus.subscribe(on_b, "audit/*")
        a.flamigo.publish(Audit("crossed"))
        eventually(lambda: "crossed" in on_b.whats())
        assert backplane_of(a).stats.reconnects == 1
    finally:
        redis_server.stop()
        shutil.rmtree(redis_server.dir, ignore_errors=True)


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    for attempt in range(12):
        delay = min(3.0, 0.1 * 2**attempt)
        samples = {backoff(attempt) for _ in range(20)}
        assert all(delay / 2 <= s <= delay for s in samples)
        assert len(samples) > 1  # jittered
    assert backoff(1000) <= 3.0


def test_redact_hides_the_password() -> None:
    assert redact("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert redact("redis://h:1/0") == "redis://h:1/0"


def test_many_events_arrive_in_publish_order(pair: Pair) -> None:
    a, b = pair
    on_b = Recorder()
    b.flamigo.bus.subscribe(on_b, "audit/*")
    for n in range(2000):
        a.flamigo.publish(Audit(f"e{n}"))
        if n % 200 == 0:
            gevent.sleep(0)
    eventually(lambda: len(on_b.events) == 2000, timeout=20)
    assert on_b.whats() == [f"e{n}" for n in range(2000)]
    assert backplane_of(b).stats.duplicates == 0 and backplane_of(b).stats.missed == 0


@pytest.mark.parametrize(("ci", "outcome", "status"), [("true", "1 error", 1), ("", "1 skipped", 0)])
def test_a_missing_redis_server_fails_under_ci(tmp_path: Any, ci: str, outcome: str, status: int) -> None:
    probe = tmp_path / "test_probe.py"
    probe.write_text("def test_needs_redis(redis_server):\n    pass\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "tests.conftest",
         "-p", "no:cacheprovider", str(probe)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "CI": ci, "PATH": str(tmp_path)},  # no redis-server on this PATH
    )
    assert (outcome in result.stdout, result.returncode) == (True, status), result.stdout + result.stderr
    assert "redis-server is not installed (apt-get install -y redis-server)" in result.stdout

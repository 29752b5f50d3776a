"""The event bus: subscriptions, listeners, ordering, publish_sync, deadlocks, supervision."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gevent
import pykka
import pytest
from flask import Flask

from flamigo_actors import (
    BackendIdentity,
    Bus,
    ClientMessage,
    ClientMessageEvent,
    Context,
    DeadlockError,
    Flamigo,
    FlamigoError,
    NoBusError,
    TopicError,
    event_published,
    publish,
    publish_sync,
)
from flamigo_actors.runtime.listener import ListenerSubscriber
from tests.support import eventually


@dataclass(frozen=True)
class Note:
    topics: tuple[str, ...]
    n: int = 0


@dataclass(frozen=True)
class Alert:
    topics: tuple[str, ...]
    n: int = 0


@dataclass(frozen=True)
class Shout:
    """A client event of its own kind."""

    topics: tuple[str, ...]
    text: str = ""

    @property
    def client_message(self) -> ClientMessage:
        return ClientMessage("shout", {"text": self.text})


@pytest.fixture
def flamigo() -> Iterator[Flamigo]:
    app = Flask("bus-test")
    flamigo = Flamigo(app)
    yield flamigo
    flamigo.shutdown(timeout=1)


def recorder() -> tuple[list[Any], Any]:
    seen: list[Any] = []

    def listener(ctx: Context, event: Any) -> None:
        seen.append(event)

    return seen, listener


def test_subscribe_and_unsubscribe_at_run_time(flamigo: Flamigo) -> None:
    seen, listener = recorder()
    sub = flamigo.bus.subscribe(listener, "rooms/a")
    flamigo.publish(Note(("rooms/a",), 1))
    flamigo.publish(Note(("rooms/b",), 2))
    eventually(lambda: len(seen) == 1)
    sub.add("rooms/*")
    flamigo.publish(Note(("rooms/b",), 3))
    eventually(lambda: len(seen) == 2)
    sub.remove("rooms/*", "rooms/a")
    flamigo.publish_sync(Note(("rooms/a",), 4))
    assert [e.n for e in seen] == [1, 3]
    assert sub.patterns == set()


def test_an_event_reaches_a_subscriber_once_even_if_many_patterns_match(flamigo: Flamigo) -> None:
    seen, listener = recorder()
    flamigo.bus.subscribe(listener, "rooms/a", "rooms/*", "*")
    flamigo.publish_sync(Note(("rooms/a", "rooms/b")))
    assert len(seen) == 1


def test_client_only_subscription(flamigo: Flamigo) -> None:
    seen, listener = recorder()
    flamigo.bus.subscribe(listener, "*", client_only=True)
    flamigo.publish(Note(("x",)))
    flamigo.publish(Shout(("x",), "hey"))
    flamigo.publish_sync(ClientMessageEvent(("x",), "chat:message", {"t": 1}))
    assert [type(e).__name__ for e in seen] == ["Shout", "ClientMessageEvent"]


def test_typed_listener(flamigo: Flamigo) -> None:
    seen, listener = recorder()
    flamigo.listen("*", event_type=Alert)(listener)
    flamigo.publish(Note(("x",), 1))
    flamigo.publish(Alert(("x",), 2))
    flamigo.publish_sync(Note(("x",), 3))
    assert [(type(e).__name__, e.n) for e in seen] == [("Alert", 2)]


def test_listener_context_carries_the_publisher_identity(flamigo: Flamigo) -> None:
    identities: list[Any] = []
    flamigo.bus.subscribe(lambda ctx, event: identities.append(ctx.identity), "x")
    flamigo.publish_sync(Note(("x",)))
    flamigo.publish_sync(Note(("x",)), identity=BackendIdentity("job"))
    assert identities[0].type == "backend"
    assert identities[1] == BackendIdentity("job")


def test_per_publisher_ordering_over_10000_events(flamigo: Flamigo) -> None:
    seen, listener = recorder()
    flamigo.bus.subscribe(listener, "seq/*")

    def producer(name: str) -> None:
        for n in range(5000):
            flamigo.publish(Note((f"seq/{name}",), n))
            if n % 500 == 0:
                gevent.sleep(0)  # interleave the two publishers

    gevent.joinall([gevent.spawn(producer, "a"), gevent.spawn(producer, "b")])
    eventually(lambda: len(seen) == 10000, timeout=30)
    for name in ("a", "b"):
        ns = [e.n for e in seen if e.topics[0] == f"seq/{name}"]
        assert ns == list(range(5000))


def test_publish_sync_waits_for_slow_listeners(flamigo: Flamigo) -> None:
    done: list[str] = []

    def slow(ctx: Context, event: Any) -> None:
        gevent.sleep(0.2)
        done.append("slow")

    def quick(ctx: Context, event: Any) -> None:
        done.append("quick")

    flamigo.bus.subscribe(slow, "x")
    flamigo.bus.subscribe(quick, "x")
    flamigo.publish(Note(("x",)))
    assert done == []
    flamigo.publish_sync(Note(("x",)))
    assert sorted(done) == ["quick", "quick", "slow", "slow"]


def test_publish_sync_to_nobody_returns(flamigo: Flamigo) -> None:
    flamigo.publish_sync(Note(("nobody/listens",)))


def test_publish_sync_from_a_subscriber_of_the_event_raises(flamigo: Flamigo) -> None:
    outcome: list[Any] = []

    def echo_back(ctx: Context, event: Any) -> None:
        if event.n == 0:
            try:
                ctx.publish_sync(Note(("loop",), 1), timeout=5)
                outcome.append("returned")
            except DeadlockError as err:
                outcome.append(err)

    flamigo.bus.subscribe(echo_back, "loop")
    flamigo.publish(Note(("loop",), 0))
    eventually(lambda: outcome, timeout=3)
    assert isinstance(outcome[0], DeadlockError)
    assert "itself a subscriber" in str(outcome[0])
    assert flamigo.bus.stats.deadlocks == 1


def test_publish_sync_cycle_between_two_listeners_raises(flamigo: Flamigo) -> None:
    outcome: list[Any] = []

    def on_a(ctx: Context, event: Any) -> None:
        try:
            ctx.publish_sync(Note(("b",), 1), timeout=5)
            outcome.append("a returned")
        except DeadlockError as err:
            outcome.append(err)

    def on_b(ctx: Context, event: Any) -> None:
        gevent.sleep(0.05)  # let on_a start waiting for us first
        try:
            ctx.publish_sync(Note(("a",), 2), timeout=5)
            outcome.append("b returned")
        except DeadlockError as err:
            outcome.append(err)

    flamigo.bus.subscribe(on_a, "a")
    flamigo.bus.subscribe(on_b, "b")
    flamigo.publish(Note(("a",), 0))
    eventually(lambda: len(outcome) >= 2, timeout=5)
    errors = [o for o in outcome if isinstance(o, DeadlockError)]
    assert len(errors) == 1 and "waiting for the publishing actor" in str(errors[0])
    assert "a returned" in outcome


def test_a_failing_listener_is_isolated_and_logged(flamigo: Flamigo, caplog: pytest.LogCaptureFixture) -> None:
    seen, listener = recorder()

    def broken(ctx: Context, event: Any) -> None:
        raise RuntimeError(f"broken on {event.n}")

    flamigo.bus.subscribe(broken, "x")
    flamigo.bus.subscribe(listener, "x")
    with caplog.at_level(logging.ERROR, logger="flamigo_actors.listener"):
        for n in range(20):
            flamigo.publish(Note(("x",), n))
        flamigo.publish_sync(Note(("x",), 99))
    assert [e.n for e in seen] == [*range(20), 99]
    assert flamigo.bus.stats.listener_errors == 21
    assert "broken" in caplog.text and "topics x" in caplog.text


def test_cancelled_subscriptions_leave_nothing_behind(flamigo: Flamigo) -> None:
    flamigo.bus.start()
    baseline = len(pykka.ActorRegistry.get_all())
    subs = [flamigo.bus.subscribe(lambda ctx, e: None, f"rooms/{i}", "rooms/*/x", "*") for i in range(100)]
    assert flamigo.bus.index_size()[0] == 300
    assert len(pykka.ActorRegistry.get_all()) == baseline + 100
    for sub in subs:
        sub.cancel()
        sub.cancel()  # idempotent
    assert flamigo.bus.index_size() == (0, 0)
    assert flamigo.bus.subscriptions() == []
    eventually(lambda: len(pykka.ActorRegistry.get_all()) == baseline)
    with pytest.raises(RuntimeError, match="cancelled"):
        subs[0].add("x")


def test_bus_actor_is_restarted_with_its_subscriptions(flamigo: Flamigo, caplog: pytest.LogCaptureFixture) -> None:
    seen, listener = recorder()
    flamigo.bus.subscribe(listener, "x")
    flamigo.bus.start()
    first = flamigo.bus.actor_urn()
    with caplog.at_level(logging.ERROR, logger="flamigo_actors.bus"):
        pykka.ActorRegistry.get_by_urn(first).stop()
        eventually(lambda: flamigo.bus.stats.restarts == 1)
    assert flamigo.bus.actor_urn() != first
    flamigo.publish_sync(Note(("x",), 5))
    assert [e.n for e in seen] == [5]
    assert "restarting" in caplog.text


def test_bus_failure_keeps_unprocessed_events(flamigo: Flamigo, monkeypatch: pytest.MonkeyPatch) -> None:
    seen, listener = recorder()
    flamigo.bus.subscribe(listener, "x")
    real_route = flamigo.bus._route
    crashed: list[bool] = []

    def route_once_broken(message: Any) -> None:
        if not crashed:
            crashed.append(True)
            raise RuntimeError("router bug")
        real_route(message)

    monkeypatch.setattr(flamigo.bus, "_route", route_once_broken)
    for n in range(5):
        flamigo.publish(Note(("x",), n))
    flamigo.publish_sync(Note(("x",), 5))
    # The event being routed when the bus crashed is routed again after the restart, first.
    assert [e.n for e in seen] == [0, 1, 2, 3, 4, 5]
    assert flamigo.bus.stats.restarts == 1


def test_invalid_events_are_refused_at_publish_time(flamigo: Flamigo) -> None:
    with pytest.raises(TypeError, match="is not an event"):
        flamigo.publish(object())
    with pytest.raises(TypeError, match="no topics"):
        flamigo.publish(Note(()))
    with pytest.raises(TopicError):
        flamigo.publish(Note(("a//b",)))
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        flamigo.publish(ClientMessageEvent(("x",), "t", {"when": object()}))


def test_blinker_receivers_see_every_event(flamigo: Flamigo) -> None:
    heard: list[Any] = []

    def audit(sender: Any, event: Any, identity: Any, **extra: Any) -> None:
        heard.append((sender, event))

    event_published.connect(audit, sender=flamigo.app)
    try:
        flamigo.publish(Note(("x",), 1))
    finally:
        event_published.disconnect(audit, sender=flamigo.app)
    assert heard == [(flamigo.app, Note(("x",), 1))]


def test_module_publish_needs_an_app_context(flamigo: Flamigo) -> None:
    seen, listener = recorder()
    flamigo.bus.subscribe(listener, "x")
    with pytest.raises(RuntimeError, match="application context"):
        publish(Note(("x",)))
    assert flamigo.app is not None
    with flamigo.app.app_context():
        publish(Note(("x",), 7))
    flamigo.publish_sync(Note(("x",), 8))
    assert [e.n for e in seen] == [7, 8]


def test_listener_over_its_bound_is_refused_and_counted() -> None:
    app = Flask("bounded")
    flamigo = Flamigo(app, listener_max_pending=5)
    try:
        gate = gevent.event.Event()
        seen: list[int] = []

        def blocked(ctx: Context, event: Any) -> None:
            gate.wait()
            seen.append(event.n)

        flamigo.bus.subscribe(blocked, "x")
        for n in range(10):
            flamigo.publish(Note(("x",), n))
        eventually(lambda: flamigo.bus.stats.refused >= 4)
        gate.set()
        eventually(lambda: len(seen) + flamigo.bus.stats.refused == 10)
        assert seen == sorted(seen)
    finally:
        flamigo.shutdown(timeout=1)


# -- faults of the bus actor: the in-flight event is not lost ----------------------


def test_a_delivery_that_crashes_the_bus_is_refused_and_the_rest_are_served_once(
    flamigo: Flamigo, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: the event being routed was lost and publish_sync waited out its timeout."""
    before, after = recorder(), recorder()
    crasher_seen, crasher = recorder()
    flamigo.bus.subscribe(before[1], "x")  # served before the crash
    crashing = flamigo.bus.subscribe(crasher, "x")
    flamigo.bus.subscribe(after[1], "x")  # not yet served when it crashed
    subscriber = crashing.subscriber
    assert isinstance(subscriber, ListenerSubscriber)
    attempts: list[int] = []

    def deliver_crashing(event: Any, frame: Any, identity: Any, waiter: Any) -> bool:
        attempts.append(event.n)
        raise RuntimeError("delivery bug")

    monkeypatch.setattr(subscriber, "deliver", deliver_crashing)
    with caplog.at_level(logging.ERROR, logger="flamigo_actors.bus"):
        flamigo.publish_sync(Note(("x",), 1), timeout=10)  # returns: nobody is waited for in vain
    assert flamigo.bus.stats.restarts == 1
    assert flamigo.bus.stats.refused == 1 and flamigo.bus.stats.delivered == 2
    assert attempts == [1]  # the crashing delivery is not retried
    assert "delivery bug" in caplog.text and "counted refused" in caplog.text
    # the restarted bus routes the next event; nobody got the first one twice
    monkeypatch.undo()
    flamigo.publish_sync(Note(("x",), 2), timeout=10)
    assert [e.n for e in before[0]] == [1, 2]
    assert [e.n for e in after[0]] == [1, 2]
    assert [e.n for e in crasher_seen] == [2]


def test_a_routing_crash_that_recurs_fails_publish_sync_at_once_naming_it(
    flamigo: Flamigo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: publish_sync reported "timeout" after its whole timeout instead of the crash."""
    seen, listener = recorder()
    flamigo.bus.subscribe(listener, "x")
    real_route = flamigo.bus._route

    def route_always_broken(message: Any) -> None:
        raise RuntimeError("router bug")

    monkeypatch.setattr(flamigo.bus, "_route", route_always_broken)
    with pytest.raises(FlamigoError, match="crashed routing Note.*router bug") as caught:
        flamigo.publish_sync(Note(("x",), 1), timeout=10)
    assert caught.value.status == 500
    assert flamigo.bus.stats.restarts == 2  # routed again once, then dropped
    assert flamigo.bus.stats.refused == 1
    monkeypatch.setattr(flamigo.bus, "_route", real_route)
    flamigo.publish_sync(Note(("x",), 2), timeout=10)
    assert [e.n for e in seen] == [2]


# -- publishing where no bus listens -------------------------------------------------


def test_publishing_after_the_bus_closed_raises_a_clear_error() -> None:
    """Regression: a publish after shutdown did nothing and said nothing."""
    app = Flask("closed-bus")
    flamigo = Flamigo(app)
    flamigo.publish_sync(Note(("x",), 0))
    flamigo.shutdown(timeout=1)
    published = flamigo.bus.stats.published
    with pytest.raises(NoBusError, match="bus is closed") as caught:
        flamigo.publish(Note(("x",), 1))
    assert isinstance(caught.value, RuntimeError) and caught.value.status == 503
    assert "closed-bus" in str(caught.value)
    with pytest.raises(NoBusError):
        flamigo.publish_sync(Note(("x",), 2), timeout=10)
    with pytest.raises(NoBusError):
        Context(flamigo, BackendIdentity("job")).publish(Note(("x",), 3))
    with app.app_context():
        with pytest.raises(NoBusError):
            publish(Note(("x",), 4))
        with pytest.raises(NoBusError):
            publish_sync(Note(("x",), 5), timeout=10)
    assert flamigo.bus.stats.published == published


def test_publishing_on_a_bus_never_bound_raises_a_clear_error() -> None:
    flamigo = Flamigo()  # init_app(app) not called yet
    with pytest.raises(NoBusError, match="never bound.*init_app"):
        flamigo.publish(Note(("x",), 1))
    with pytest.raises(NoBusError, match="never bound"):
        flamigo.publish_sync(Note(("x",), 1), timeout=10)


def test_every_publish_path_is_one_send_of_the_signal(flamigo: Flamigo) -> None:
    """publish(), flamigo.publish(), ctx.publish() and bus.publish() all send event_published."""
    heard: list[tuple[Any, int, Any]] = []

    def audit(sender: Any, event: Any, identity: Any, **extra: Any) -> None:
        heard.append((sender, event.n, extra.get("remote")))

    seen, listener = recorder()
    flamigo.bus.subscribe(listener, "x")
    event_published.connect(audit, sender=flamigo.app)
    try:
        assert flamigo.app is not None
        with flamigo.app.app_context():
            publish(Note(("x",), 1))
        flamigo.publish(Note(("x",), 2))
        Context(flamigo, BackendIdentity("job")).publish(Note(("x",), 3))
        flamigo.bus.publish(Note(("x",), 4))
        flamigo.publish_sync(Note(("x",), 5))
    finally:
        event_published.disconnect(audit, sender=flamigo.app)
    assert heard == [(flamigo.app, n, None) for n in range(1, 6)]
    assert [e.n for e in seen] == [1, 2, 3, 4, 5]


# -- the bus and the wire format -------------------------------------------------------


def test_the_bus_imports_nothing_of_the_wire_or_upper_layers() -> None:
    """Regression: importing the bus imported gevent-websocket (through the transport)."""
    import subprocess
    import sys

    from tests.support import REPO

    probe = (
        "import sys, flamigo_actors.runtime.bus, flamigo_actors.runtime.listener, "
        "flamigo_actors.runtime.signals\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('geventwebsocket', 'flask', "
        "'flamigo_actors.websocket', 'flamigo_actors.integration', 'flamigo_actors.backplane')))\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip() == "[]"


def test_the_injected_encoder_builds_a_push_once_per_publish() -> None:
    from flamigo_actors.integration.publishing import push_frame

    encoded: list[tuple[str, Any]] = []

    def counting(client_topic: str, payload: Any) -> bytes:
        encoded.append((client_topic, payload))
        return push_frame(client_topic, payload)

    app = Flask("encoder")
    own = Flamigo()
    own.bus = Bus(own, encoder=counting)
    own.init_app(app)

    @own.strategy("app::join")
    def join(ctx: Any) -> str:
        ctx.identity.subscribe(ctx.payload)
        return "ok"

    try:
        clients = [own.test_client() for _ in range(3)]
        for client in clients:
            assert client.request("app::join", "news") == "ok"
        own.publish_sync(Shout(("news",), "hello"))
        assert encoded == [("shout", {"text": "hello"})]
        for client in clients:
            assert client.pushes("shout", wait=5) == [{"topic": "shout", "payload": {"text": "hello"}}]
            client.close()
    finally:
        own.shutdown(timeout=1)


def test_a_connection_ending_after_the_bus_closed_logs_its_lost_disconnected_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its Disconnected event cannot be routed any more: a warning says so; nothing raises."""
    app = Flask("late-disconnect")
    flamigo = Flamigo(app)
    client = flamigo.test_client()
    assert client.request("app::websocket:ping") == {"pong": True}
    flamigo.bus.close(timeout=1)
    with caplog.at_level(logging.WARNING):
        client.close()
        eventually(lambda: "ended after the bus closed" in caplog.text)
    assert not flamigo.connections
    flamigo.shutdown(timeout=1)


def test_the_flat_paths_of_0_1_still_publish() -> None:
    """``flamigo_actors.signals`` (0.1) had the signals and publish(): both keep working."""
    import flamigo_actors
    from flamigo_actors.bus import Bus as FlatBus
    from flamigo_actors.signals import event_published as flat_signal
    from flamigo_actors.signals import publish as flat_publish
    from flamigo_actors.signals import publish_sync as flat_publish_sync

    assert FlatBus is flamigo_actors.Bus
    assert flat_signal is flamigo_actors.event_published
    assert (flat_publish, flat_publish_sync) == (flamigo_actors.publish, flamigo_actors.publish_sync)

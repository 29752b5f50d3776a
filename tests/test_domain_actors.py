"""Domain actors in one process: virtual activation, turns, crashes, persistence,
passivation, deadlocks, timeouts, bounded mailboxes, get/wait (real code, no mocks)."""

from __future__ import annotations

import gevent
import pytest
from gevent.event import Event

from flamigo_actors import (
    ActorDeadlock,
    ActorOverloaded,
    ActorRestarted,
    ActorTimeout,
    ActorUnavailable,
    DomainActor,
    get,
    wait,
)
from flamigo_actors.runtime.actor_space import ActorSpace
from tests.support import eventually


class Counter(DomainActor):
    kind = "test-counter"

    def on_activate(self, key, state):
        self.total = state or 0
        self.seen: list = []

    def snapshot(self):
        return self.total

    def add(self, n=1):
        self.total += n
        return self.total

    def add_and_persist(self, n=1):
        self.total += n
        self.persist()
        return self.total

    def value(self):
        return self.total

    def fail(self, text):
        raise ValueError(text)

    def boom(self):
        self.crash("asked to")

    def note(self, sender, i):
        self.seen.append((sender, i))
        gevent.sleep(0)  # yield mid-turn: still one message at a time

    def notes(self):
        return list(self.seen)


@pytest.fixture
def space():
    space = ActorSpace()
    yield space
    space.stop(timeout=5)


def test_a_thousand_concurrent_first_calls_make_one_activation(space: ActorSpace) -> None:
    replies = []

    def first_call() -> None:
        replies.append(space.get(Counter, "k").ask("add", 1).get())

    gevent.joinall([gevent.spawn(first_call) for _ in range(1000)], raise_error=True)
    assert space.stats.activations == 1 and len(space) == 1
    assert sorted(replies) == list(range(1, 1001))
    assert space.get(Counter, "k").ask("value").get() == 1000


def test_one_message_at_a_time_in_arrival_order_per_sender(space: ActorSpace) -> None:
    inside = [0]
    peak = [0]

    class Watched(Counter):
        kind = "test-watched"

        def note(self, sender, i):
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
            super().note(sender, i)
            inside[0] -= 1

    ref = space.get(Watched, "order")

    def sender(name: str) -> None:
        for i in range(50):
            ref.tell("note", name, i)
            if i % 7 == 0:
                gevent.sleep(0)

    gevent.joinall([gevent.spawn(sender, name) for name in "abc"], raise_error=True)
    seen = ref.ask("notes").get()
    assert len(seen) == 150 and peak[0] == 1
    for name in "abc":
        assert [i for s, i in seen if s == name] == list(range(50))


def test_a_raising_method_reaches_the_caller_and_the_actor_keeps_its_state(space: ActorSpace) -> None:
    ref = space.get(Counter, "raise")
    assert ref.ask("add", 5).get() == 5
    with pytest.raises(ValueError, match="bad input"):
        ref.ask("fail", "bad input").get()
    assert ref.ask("add", 1).get() == 6
    assert space.stats.restarts == 0 and space.stats.activations == 1


def test_proxy_style_get_and_wait(space: ActorSpace) -> None:
    proxy = space.get(Counter, "proxy").proxy()
    assert proxy.add(2).get() == 2
    futures = [space.get(Counter, f"w{i}").ask("add", i) for i in range(5)]
    assert get(futures) == [0, 1, 2, 3, 4]
    assert get(futures[0]) == 0
    blocker = Event()

    class Slow(DomainActor):
        kind = "test-slow"

        def hold(self):
            blocker.wait(10)
            return "held"

        def quick(self):
            return "quick"

    slow = space.get(Slow, "s").ask("hold")
    quick = space.get(Slow, "q").ask("quick")
    ready, not_ready = wait([slow, quick], num_returns=1, timeout=5)
    assert ready == [quick] and not_ready == [slow]
    ready, not_ready = wait([slow, quick], num_returns=2, timeout=0.1)
    assert ready == [quick] and not_ready == [slow]
    blocker.set()
    assert slow.get() == "held"
    with pytest.raises(AttributeError, match="no callable method 'nope'"):
        space.get(Counter, "proxy").ask("nope")
    with pytest.raises(AttributeError, match="_private"):
        space.get(Counter, "proxy").tell("_private")


def test_a_crash_restarts_from_the_last_snapshot_and_fails_the_call_in_flight(space: ActorSpace) -> None:
    ref = space.get(Counter, "crash")
    assert ref.ask("add_and_persist", 10).get() == 10
    assert ref.ask("add", 5).get() == 15  # not persisted: lost by the crash
    with pytest.raises(ActorRestarted, match="test-counter:crash"):
        ref.ask("boom").get()
    assert ref.ask("value").get() == 10
    ref.tell("fail", "in a tell: a crash")  # an exception in a told message
    assert ref.ask("value").get() == 10
    assert space.stats.restarts == 2


def test_a_crash_in_on_activate_fails_the_first_call_then_restarts(space: ActorSpace) -> None:
    attempts = []

    class Flaky(DomainActor):
        kind = "test-flaky"

        def on_activate(self, key, state):
            attempts.append(key)
            if len(attempts) == 1:
                raise RuntimeError("database not ready")

        def ping(self):
            return "pong"

    ref = space.get(Flaky, "f")
    with pytest.raises(ActorRestarted, match="database not ready"):
        ref.ask("ping").get()
    assert ref.ask("ping").get() == "pong"
    assert len(attempts) == 2 and space.stats.restarts == 1


def test_past_max_restarts_the_actor_stays_down_for_the_window(space: ActorSpace) -> None:
    class Fragile(Counter):
        kind = "test-fragile"
        max_restarts = 2
        restart_window = 1.0

    ref = space.get(Fragile, "x")
    for _ in range(2):
        with pytest.raises(ActorRestarted):
            ref.ask("boom").get()
    with pytest.raises(ActorUnavailable):
        ref.ask("boom").get()  # the third crash within the window: down
    with pytest.raises(ActorUnavailable, match="down after more than 2 crashes"):
        ref.ask("value")  # at once, without queuing
    with pytest.raises(ActorUnavailable):
        ref.tell("add")
    assert space.stats.restarts == 2 and space.stats.downs == 1

    def back_up() -> bool:
        try:
            return ref.ask("value").get() == 0
        except ActorUnavailable:
            return False

    eventually(back_up, timeout=5, interval=0.1)


def test_persist_stores_the_snapshot_before_returning(space: ActorSpace) -> None:
    ref = space.get(Counter, "p")
    assert ref.ask("add_and_persist", 3).get() == 3
    assert space.store.load("test-counter", "p") == (3, 1)

    class Unjsonable(Counter):
        kind = "test-unjsonable"

        def snapshot(self):
            return {1, 2}

    with pytest.raises(TypeError, match="not JSON-able"):
        space.get(Unjsonable, "u").ask("add_and_persist").get()


def test_passivation_stores_the_snapshot_and_the_next_message_reactivates(space: ActorSpace) -> None:
    passivated = []

    class Sleepy(Counter):
        kind = "test-sleepy"
        idle_timeout = 0.3

        def on_passivate(self):
            passivated.append(self.total)

    ref = space.get(Sleepy, "z")
    assert ref.ask("add", 7).get() == 7
    eventually(lambda: len(space) == 0, timeout=0.3 + 1 + 2)
    assert passivated == [7] and space.stats.passivations == 1
    assert space.store.load("test-sleepy", "z") == (7, 1)
    assert ref.ask("add", 1).get() == 8  # re-activated from the snapshot
    assert space.stats.activations == 2


def test_ask_cycles_fail_at_once_with_actor_deadlock(space: ActorSpace) -> None:
    class Peer(DomainActor):
        kind = "test-peer"

        def ask_peer(self, chain):
            if not chain:
                return self.key
            return self.actors.get(Peer, chain[0]).ask("ask_peer", chain[1:]).get()

    with pytest.raises(ActorDeadlock, match="test-peer:a -> test-peer:a"):
        space.get(Peer, "a").ask("ask_peer", ["a"]).get()
    with pytest.raises(ActorDeadlock, match="test-peer:b -> test-peer:a -> test-peer:b"):
        space.get(Peer, "a").ask("ask_peer", ["b", "a"]).get()
    with pytest.raises(ActorDeadlock, match="test-peer:c -> test-peer:a -> test-peer:b -> test-peer:c"):
        space.get(Peer, "a").ask("ask_peer", ["b", "c", "a"]).get()
    assert space.get(Peer, "a").ask("ask_peer", ["b", "c"]).get() == "c"  # no cycle: fine
    assert space.stats.deadlocks == 3


def test_an_ask_has_a_default_timeout(space: ActorSpace) -> None:
    space.call_timeout = 0.2
    release = Event()

    class Stuck(DomainActor):
        kind = "test-stuck"

        def hang(self):
            release.wait(10)

    future = space.get(Stuck, "s").ask("hang")
    with pytest.raises(ActorTimeout, match="no reply within 0.2 s"):
        future.get()
    release.set()
    future.get(timeout=5)  # the call did run: a late reply is still delivered


def test_a_full_mailbox_refuses_at_once_and_counts(space: ActorSpace) -> None:
    space.mailbox_max = 5
    release, holding = Event(), Event()

    class Busy(DomainActor):
        kind = "test-busy"

        def hold(self):
            holding.set()
            release.wait(10)

        def noop(self):
            return None

    ref = space.get(Busy, "b")
    first = ref.ask("hold")
    holding.wait(5)  # it is being handled: the mailbox is empty again
    futures = [ref.ask("noop") for _ in range(5)]
    with pytest.raises(ActorOverloaded, match="mailbox full"):
        ref.tell("noop")
    with pytest.raises(ActorOverloaded):
        ref.ask("noop")
    assert space.stats.overloads == 2
    release.set()
    first.get(timeout=5)
    assert get(futures, timeout=5) == [None] * 5


def test_the_space_stop_stores_every_snapshot(space: ActorSpace) -> None:
    for key in ("a", "b"):
        space.get(Counter, key).ask("add", 4).get()
    assert space.stop(timeout=5)
    assert space.store.load("test-counter", "a") == (4, 1)
    assert len(space) == 0
    with pytest.raises(ActorUnavailable, match="stopped"):
        space.get(Counter, "c").ask("add")


# -- the placement seams, with small in-process implementations --------------------


class KeyPrefixPlacement:
    """Each key is owned by the node named before its "/" (an in-process stand-in for leases)."""

    renew_interval: float | None = None

    def __init__(self, node: str) -> None:
        self.node_id = node
        self.lost: list = []
        self.released: list = []

    def acquire(self, kind, key):
        from flamigo_actors.runtime.placement import Lease

        owner = key.partition("/")[0]
        return Lease(kind, key, self.node_id, 1) if owner == self.node_id else owner

    def renew(self, leases):
        return [lease for lease in leases if lease.key in self.lost]

    def release(self, lease):
        self.released.append(lease.key)


class InProcessCalls:
    def __init__(self, spaces: dict) -> None:
        self.spaces = spaces

    def call(self, owner, kind, key, method, args, kwargs, *, want_reply, timeout, future=None, chain=None):
        return self.spaces[owner].handle_remote(kind, key, method, args, kwargs, want_reply, chain=chain)

    def serve(self, handler) -> None:
        pass

    def close(self) -> None:
        pass


def test_calls_to_keys_owned_elsewhere_go_through_remote_calls() -> None:
    spaces: dict = {}
    calls = InProcessCalls(spaces)
    for node in ("a", "b"):
        spaces[node] = ActorSpace(placement=KeyPrefixPlacement(node), remote=calls)
    a, b = spaces["a"], spaces["b"]
    try:
        assert a.get(Counter, "b/x").ask("add", 2).get() == 2
        a.get(Counter, "b/x").tell("add", 3)
        assert a.get(Counter, "b/x").ask("value").get() == 5  # in order, through the owner
        assert a.get(Counter, "a/y").ask("add", 1).get() == 1
        assert [row["key"] for row in b.describe()] == ["b/x"]
        eventually(lambda: [row["key"] for row in a.describe()] == ["a/y"])  # no forwarder left
        assert a.stats.remote_calls == 3 and b.stats.activations == 1
        with pytest.raises(ValueError, match="remote failure"):
            a.get(Counter, "b/x").ask("fail", "remote failure").get()
    finally:
        for space in spaces.values():
            space.stop(timeout=5)
    assert b.placement.released == ["b/x"] and a.placement.released == ["a/y"]


def test_a_lost_lease_stops_the_activation_without_saving() -> None:
    placement = KeyPrefixPlacement("n")
    placement.renew_interval = 0.1
    space = ActorSpace(placement=placement)
    try:
        ref = space.get(Counter, "n/lost")
        assert ref.ask("add", 4).get() == 4
        placement.lost.append("n/lost")
        eventually(lambda: len(space) == 0, timeout=5)
        assert space.store.load("test-counter", "n/lost") is None  # never saved
        assert placement.released == [] and space.stats.passivations == 0
    finally:
        space.stop(timeout=5)


class Announcer(DomainActor):
    kind = "test-announcer"

    def announce(self, text: str) -> str:
        self.publish(("announced", self.key, text))
        return text


def test_an_actor_publishes_through_its_space_publisher_and_a_bare_space_says_how() -> None:
    published: list[object] = []
    with_app = ActorSpace(publisher=published.append)
    bare = ActorSpace()
    try:
        assert with_app.get(Announcer, "a").ask("announce", "hi").get(timeout=5) == "hi"
        assert published == [("announced", "a", "hi")]
        with pytest.raises(RuntimeError, match="use flamigo.actors|no publisher"):
            bare.get(Announcer, "b").ask("announce", "hi").get(timeout=5)
    finally:
        with_app.stop(5)
        bare.stop(5)


def test_a_served_call_s_future_hands_its_outcome_over_in_the_settling_greenlet(caplog: pytest.LogCaptureFixture) -> None:
    # The owner's side of a remote ask: the reply leaves in the greenlet that settles the
    # future (the actor's runner), before set() returns, without a hop through the hub.
    from greenlet import getcurrent

    from flamigo_actors.runtime.futures import RemoteCallFuture

    seen: list[object] = []
    future = RemoteCallFuture(None, 5.0, "room:r.post", None)
    future.settle_with(lambda done: seen.append((getcurrent(), done.get(0))))

    def settle() -> None:
        future.set(7)
        seen.append("set returned")
        future.set(8)  # settled once: ignored, no second hand-over

    settler = gevent.spawn(settle)
    settler.join()
    assert seen == [(settler, 7), "set returned"]

    failed = RemoteCallFuture(None, 5.0, "room:r.post", None)
    failed.set_exception(ValueError("boom"))
    failed.settle_with(lambda done: seen.append(repr(done.exception(0))))  # settled already: at once
    assert seen[-1] == "ValueError('boom')"

    broken = RemoteCallFuture(None, 5.0, "room:r.post", None)
    broken.settle_with(lambda done: 1 / 0)
    broken.set("ok")  # the callback's bug is logged; the settling code goes on
    assert broken.get(0) == "ok" and "settle callback" in caplog.text

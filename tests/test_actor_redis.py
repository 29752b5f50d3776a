"""Domain actors across processes, the Redis parts on their own: leases, fenced snapshots, remote calls.

Everything talks to a real redis-server (the ``redis_server`` fixture); the
races and the owner killed with SIGKILL use real child processes. What the
runtime does with these parts (activation, passivation) is tested with the
runtime; here the parts are driven through their Protocols directly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import gevent
import pytest
from gevent.event import AsyncResult

from flamigo_actors.backplane.actor_calls import RedisRemoteCalls, RemoteActorError, inbox_of
from flamigo_actors.backplane.leases import RedisPlacement, actor_keys
from flamigo_actors.backplane.link import RedisLink
from flamigo_actors.backplane.reply_io import replies_of
from flamigo_actors.backplane.snapshots import RedisSnapshotStore
from flamigo_actors.core.errors import FlamigoError, status_of
from flamigo_actors.runtime.actor_errors import ActorTimeout, ActorUnavailable, StaleOwner
from flamigo_actors.runtime.placement import Lease
from tests.support import REPO, RedisServer, eventually


@pytest.fixture
def links(redis_server: RedisServer) -> Iterator[list[RedisLink]]:
    """Started links to the test's Redis (closed afterwards); call ``new()`` for one more."""
    made: list[RedisLink] = []
    yield made
    for link in made:
        link.close()


def new_link(made: list[RedisLink], url: str) -> RedisLink:
    link = RedisLink(url, reconnect_base=0.05, reconnect_cap=0.3)
    link.start()
    made.append(link)
    return link


def child(script: str, *args: str) -> subprocess.Popen[str]:
    """A real Python process running ``script`` (gevent-patched first) with ``args``."""
    code = "from gevent import monkey\nmonkey.patch_all()\n" + textwrap.dedent(script)
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": REPO},
    )


# -- leases -----------------------------------------------------------------------------


def test_a_lease_goes_to_one_node_and_others_learn_the_owner(redis_server: RedisServer, links: list[RedisLink]) -> None:
    a = RedisPlacement(new_link(links, redis_server.url), node_id="host:1", owner_cache=0)
    b = RedisPlacement(new_link(links, redis_server.url), node_id="host:2", owner_cache=0)
    lease = a.acquire("room", "lobby")
    assert lease == Lease("room", "lobby", "host:1", 1)
    assert b.acquire("room", "lobby") == "host:1"
    assert b.acquire("room", "other") == Lease("room", "other", "host:2", 1)
    ttl = redis_server.client().pttl(actor_keys("flamigo", "room", "lobby") + ":lease")
    assert 0 < ttl <= 5000
    a.release(lease)
    assert redis_server.client().exists(actor_keys("flamigo", "room", "lobby") + ":lease") == 0
    assert b.acquire("room", "lobby") == Lease("room", "lobby", "host:2", 2)  # a new fence
    assert a.held == [] and len(b.held) == 2


def test_keys_share_one_cluster_hash_tag_per_actor(redis_server: RedisServer, links: list[RedisLink]) -> None:
    link = new_link(links, redis_server.url)
    placement = RedisPlacement(link, channel="chat", node_id="host:1")
    lease = placement.acquire("room", "a}b")
    assert isinstance(lease, Lease)
    RedisSnapshotStore(link, channel="chat").save("room", "a}b", [1], lease.fence)
    keys = sorted(k.decode() for k in redis_server.client().keys("*"))
    assert keys == ["{chat:actor:room:a}b}:fence", "{chat:actor:room:a}b}:lease", "{chat:actor:room:a}b}:snapshot"]
    # Redis Cluster hashes the text between the first "{" and the next "}": the same for all three
    assert {k[1:k.index("}")] for k in keys} == {"chat:actor:room:a"}


def test_renewal_keeps_a_lease_and_reports_one_taken_by_another_node(
    redis_server: RedisServer, links: list[RedisLink]
) -> None:
    a = RedisPlacement(new_link(links, redis_server.url), node_id="host:1", lease=0.3, owner_cache=0)
    b = RedisPlacement(new_link(links, redis_server.url), node_id="host:2", lease=0.3, owner_cache=0)
    lost: list[Lease] = []
    a.start(lost.append)
    lease = a.acquire("room", "kept")
    gevent.sleep(1.0)  # three lease lifetimes: only renewal keeps it
    assert b.acquire("room", "kept") == "host:1"
    a.close(release=False)
    eventually(lambda: isinstance(b.acquire("room", "kept"), Lease), timeout=5)
    assert a.renew([lease]) == [lease]  # another node owns it now
    assert a.stats.lost == 1
    a2 = RedisPlacement(a.link, node_id="host:1", lease=0.3)
    a2.start(lost.append)
    stolen = a2.acquire("room", "stolen")
    redis_server.client().delete(actor_keys("flamigo", "room", "stolen") + ":lease")
    assert isinstance(b.acquire("room", "stolen"), Lease)
    eventually(lambda: lost == [stolen], timeout=5)
    assert a2.held == []
    a2.close()


def test_an_expired_lease_nobody_took_is_taken_back_by_renewal(
    redis_server: RedisServer, links: list[RedisLink]
) -> None:
    """A stalled process (or Redis restarted without its data) keeps its actor when nobody else got it."""
    a = RedisPlacement(new_link(links, redis_server.url), node_id="host:1", lease=0.2, owner_cache=0)
    b = RedisPlacement(new_link(links, redis_server.url), node_id="host:2", lease=0.2, owner_cache=0)
    lease = a.acquire("room", "stall")
    assert isinstance(lease, Lease)
    eventually(lambda: not redis_server.client().exists(actor_keys("flamigo", "room", "stall") + ":lease"))
    assert a.renew([lease]) == []
    assert b.acquire("room", "stall") == "host:1"
    redis_server.client().flushall()  # Redis lost everything: fences too
    assert a.renew([lease]) == []
    assert b.acquire("room", "stall") == "host:1"
    assert int(redis_server.client().get(actor_keys("flamigo", "room", "stall") + ":fence")) == lease.fence


def test_two_processes_racing_a_thousand_first_calls_grant_one_lease_in_total(
    redis_server: RedisServer, tmp_path: object
) -> None:
    script = """
        import json, sys, time, gevent
        from flamigo_actors.backplane.link import RedisLink
        from flamigo_actors.backplane.leases import RedisPlacement
        from flamigo_actors.runtime.placement import Lease
        url, name, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
        link = RedisLink(url); link.start()
        places = [RedisPlacement(link, node_id=f"{name}:{n}") for n in range(1000)]
        gevent.sleep(max(0.0, start_at - time.time()))
        jobs = [gevent.spawn(p.acquire, "room", "race") for p in places]
        gevent.joinall(jobs, raise_error=True)
        leases = [j.value for j in jobs if isinstance(j.value, Lease)]
        owners = sorted({j.value for j in jobs if isinstance(j.value, str)})
        print(json.dumps({"leases": [[l.owner, l.fence] for l in leases], "owners": owners}))
    """
    start_at = str(time.time() + 2.0)
    racers = [child(script, redis_server.url, name, start_at) for name in ("p1", "p2")]
    results = []
    for racer in racers:
        out, err = racer.communicate(timeout=60)
        assert racer.returncode == 0, err
        results.append(json.loads(out))
    leases = [lease for r in results for lease in r["leases"]]
    assert len(leases) == 1, results
    winner, fence = leases[0]
    assert fence == 1
    for r in results:  # everyone else was told who owns it
        assert r["owners"] == [winner]


def test_the_owner_killed_the_actor_is_placed_on_a_survivor_within_the_lease_with_its_snapshot(
    redis_server: RedisServer, links: list[RedisLink]
) -> None:
    script = """
        import sys, gevent
        from flamigo_actors.backplane.link import RedisLink
        from flamigo_actors.backplane.leases import RedisPlacement
        from flamigo_actors.backplane.snapshots import RedisSnapshotStore
        link = RedisLink(sys.argv[1]); link.start()
        placement = RedisPlacement(link, lease=2.0)
        placement.start(lambda lease: None)
        lease = placement.acquire("room", "lobby")
        store = RedisSnapshotStore(link)
        for n in range(1, 6):
            store.save("room", "lobby", {"messages": n}, lease.fence)
        print(placement.node_id, lease.fence, flush=True)
        gevent.sleep(3600)
    """
    owner = child(script, redis_server.url)
    try:
        line = owner.stdout.readline()  # type: ignore[union-attr]
        assert line, owner.stderr.read()  # type: ignore[union-attr]
        node, fence = line.split()
        survivor_link = new_link(links, redis_server.url)
        survivor = RedisPlacement(survivor_link, lease=2.0, owner_cache=0)
        gevent.sleep(2.5)  # beyond one lease: the owner's renewals keep it
        assert survivor.acquire("room", "lobby") == node
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        answers: list[Lease | str] = []

        def placed_here() -> bool:
            answers.append(survivor.acquire("room", "lobby"))
            return isinstance(answers[-1], Lease)

        # The bound: within lease + 1 s of the kill (the wait, not a speed measurement).
        eventually(placed_here, timeout=2.0 + 1.0)
        lease = answers[-1]
        assert isinstance(lease, Lease) and lease.fence == int(fence) + 1
        assert set(answers[:-1]) <= {node}
        assert RedisSnapshotStore(survivor_link).load("room", "lobby") == ({"messages": 5}, int(fence))
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


# -- snapshots ----------------------------------------------------------------------------


def test_snapshots_round_trip_with_their_fence(redis_server: RedisServer, links: list[RedisLink]) -> None:
    store = RedisSnapshotStore(new_link(links, redis_server.url))
    assert store.load("room", "new") is None
    store.save("room", "new", {"history": [{"user": "ann", "text": "hé"}], "count": 1}, 3)
    assert store.load("room", "new") == ({"history": [{"user": "ann", "text": "hé"}], "count": 1}, 3)
    store.save("room", "new", None, 3)
    assert store.load("room", "new") == (None, 3)
    with pytest.raises(TypeError, match="snapshot of room:new is not JSON-able"):
        store.save("room", "new", {"when": object()}, 3)
    assert store.load("room", "new") == (None, 3)


def test_a_stale_owner_s_snapshot_write_is_refused(redis_server: RedisServer, links: list[RedisLink]) -> None:
    link = new_link(links, redis_server.url)
    a = RedisPlacement(link, node_id="host:1", lease=0.2, owner_cache=0)
    b = RedisPlacement(new_link(links, redis_server.url), node_id="host:2", lease=5.0, owner_cache=0)
    store = RedisSnapshotStore(link)
    old = a.acquire("doc", "d1")
    assert isinstance(old, Lease)
    store.save("doc", "d1", ["a1"], old.fence)
    new = eventually(lambda: b.acquire("doc", "d1") if not redis_server.client().exists(
        actor_keys("flamigo", "doc", "d1") + ":lease") else None, timeout=5)
    assert isinstance(new, Lease) and new.fence == old.fence + 1
    with pytest.raises(StaleOwner) as refused:  # the new owner holds the lease, has not written yet
        store.save("doc", "d1", ["a1", "stale"], old.fence)
    assert f"written with fence {old.fence}, but fence {new.fence} owns" in str(refused.value)
    assert status_of(refused.value) == 503
    store.save("doc", "d1", ["a1", "b1"], new.fence)
    b.release(new)  # gone, but it wrote: the old fence stays refused
    with pytest.raises(StaleOwner):
        store.save("doc", "d1", ["late"], old.fence)
    assert store.load("doc", "d1") == (["a1", "b1"], new.fence)
    assert store.refused == 2


def test_snapshots_with_redis_down_fail_with_actor_unavailable(redis_server: RedisServer, links: list[RedisLink]) -> None:
    link = new_link(links, redis_server.url)
    store = RedisSnapshotStore(link)
    redis_server.kill()
    with pytest.raises(ActorUnavailable):
        store.save("room", "x", [1], 1)
    with pytest.raises(ActorUnavailable):
        store.load("room", "x")
    assert not link.connected
    redis_server.start()
    eventually(lambda: link.connected, timeout=10)
    store.save("room", "x", [1], 1)
    assert store.load("room", "x") == ([1], 1)


# -- remote calls -----------------------------------------------------------------------------


class Custom(FlamigoError):
    pass


def counter_handler(log: list[tuple]) -> object:
    """A stand-in for the runtime's local dispatch: runs ``method`` on a tiny counter."""
    state = {"n": 0}

    def handler(kind: str, key: str, method: str, args: tuple, kwargs: dict, want_reply: bool) -> AsyncResult | None:
        log.append((kind, key, method, args, kwargs, want_reply))
        result: AsyncResult = AsyncResult()
        if method == "add":
            state["n"] += args[0] * kwargs.get("times", 1)
            result.set(state["n"])
        elif method == "fail":
            result.set_exception(Custom("no such room", public="room not found", status=404))
        elif method == "busy":
            result.set_exception(ActorUnavailable("crashed too often"))
        elif method == "explode":
            raise ValueError("bad dispatch")
        elif method == "slow":
            gevent.spawn_later(args[0], result.set, "late")
        elif method == "unjsonable":
            result.set({1, 2})
        return result if want_reply else None

    return handler


@pytest.fixture
def two_nodes(redis_server: RedisServer, links: list[RedisLink]) -> Iterator[tuple[RedisRemoteCalls, RedisRemoteCalls, list[tuple]]]:
    caller = RedisRemoteCalls(new_link(links, redis_server.url), "host:1", errors={"Custom": Custom})
    owner = RedisRemoteCalls(new_link(links, redis_server.url), "host:2")
    log: list[tuple] = []
    caller.serve(counter_handler([]))
    owner.serve(counter_handler(log))
    yield caller, owner, log
    caller.close()
    owner.close()
    assert caller.greenlets() == [] and owner.greenlets() == []


def test_a_remote_ask_runs_on_the_owner_and_the_reply_comes_back(two_nodes) -> None:  # type: ignore[no-untyped-def]
    caller, _owner, log = two_nodes
    assert caller.call("host:2", "counter", "c1", "add", (2,), {"times": 3}, want_reply=True, timeout=5).get(timeout=10) == 6
    assert caller.call("host:2", "counter", "c1", "add", (1,), {}, want_reply=False, timeout=5) is None
    futures = [caller.call("host:2", "counter", "c1", "add", (1,), {}, want_reply=True, timeout=5) for _ in range(200)]
    assert [f.get(timeout=10) for f in futures] == list(range(8, 208))  # in order, each once
    assert log[0] == ("counter", "c1", "add", (2,), {"times": 3}, True)
    assert log[1][-1] is False and len(log) == 202
    assert caller.stats["replied"] == 201 and caller.snapshot()["p50_ms"] is not None


def test_replies_come_back_by_pub_sub_and_a_gone_callers_reply_leaves_nothing(  # type: ignore[no-untyped-def]
    two_nodes, redis_server: RedisServer
) -> None:
    caller, owner, _log = two_nodes
    client = redis_server.client()
    channel = replies_of("flamigo", "host:1")
    assert channel == "{flamigo:node:host:1}:replies"  # the caller's inbox's hash tag
    futures = [caller.call("host:2", "counter", "c", "add", (1,), {}, want_reply=True, timeout=5) for _ in range(50)]
    assert [f.get(timeout=10) for f in futures] == list(range(1, 51))
    assert client.pubsub_numsub(channel) == [(channel.encode(), 1)]  # the caller's subscriber
    assert client.exists(inbox_of("flamigo", "host:1")) == 0  # no reply went through a stream
    assert owner._subscriber is None and owner._replies.conn is None  # serving only: no subscription

    # The caller goes away while its call runs: the call fails there, the late reply is dropped.
    slow = caller.call("host:2", "room", "r", "slow", (0.5,), {}, want_reply=True, timeout=5)
    gevent.sleep(0.1)
    caller.close()
    with pytest.raises(ActorUnavailable, match="remote calls closed"):
        slow.get(timeout=1)
    eventually(lambda: client.pubsub_numsub(channel) == [(channel.encode(), 0)], timeout=5)
    gevent.sleep(0.8)  # the reply was published to nobody
    assert owner.stats["served"] == 51 and client.exists(inbox_of("flamigo", "host:1")) == 0


def test_remote_errors_cross_with_their_type_status_and_public_message(two_nodes) -> None:  # type: ignore[no-untyped-def]
    caller, _owner, _log = two_nodes
    with pytest.raises(Custom) as custom:
        caller.call("host:2", "room", "r", "fail", (), {}, want_reply=True, timeout=5).get(timeout=10)
    assert status_of(custom.value) == 404 and custom.value.public == "room not found"
    assert "no such room" in str(custom.value) and "room:r.fail() on host:2" in str(custom.value)
    with pytest.raises(ActorUnavailable):
        caller.call("host:2", "room", "r", "busy", (), {}, want_reply=True, timeout=5).get(timeout=10)
    with pytest.raises(RemoteActorError, match="ValueError: bad dispatch") as unknown:
        caller.call("host:2", "room", "r", "explode", (), {}, want_reply=True, timeout=5).get(timeout=10)
    assert status_of(unknown.value) == 500
    with pytest.raises(RemoteActorError, match="reply of unjsonable\\(\\) cannot cross processes"):
        caller.call("host:2", "room", "r", "unjsonable", (), {}, want_reply=True, timeout=5).get(timeout=10)
    with pytest.raises(TypeError, match="arguments of room:r.add\\(\\) on host:2 cannot cross processes"):
        caller.call("host:2", "room", "r", "add", (object(),), {}, want_reply=True, timeout=5)


def test_a_call_without_a_reply_in_time_fails_once_and_is_not_run_late(two_nodes, redis_server: RedisServer) -> None:  # type: ignore[no-untyped-def]
    caller, owner, log = two_nodes
    with pytest.raises(ActorTimeout, match="no reply within 0.3s"):
        caller.call("host:2", "room", "r", "slow", (1.0,), {}, want_reply=True, timeout=0.3).get(timeout=10)
    # A gone owner: nobody reads its inbox; the call times out, and its inbox expires.
    with pytest.raises(ActorUnavailable, match="no reply within 0.3s"):
        caller.call("host:9", "room", "r", "add", (1,), {}, want_reply=True, timeout=0.3).get(timeout=10)
    assert 0 < redis_server.client().ttl(inbox_of("flamigo", "host:9")) <= 60
    assert caller.stats["timeouts"] == 2
    gevent.sleep(1.2)  # the slow call's late reply is ignored
    # An owner that reads a call after its deadline does not run it.
    owner.close()
    caller.call("host:2", "counter", "c1", "add", (1,), {}, want_reply=False, timeout=0.2)
    ran = len(log)
    gevent.sleep(0.5)
    late = RedisRemoteCalls(owner.link, "host:2")
    late._in.last_id = b"0-0"  # read the whole inbox again, as a restarted reader would from its last id
    late.serve(counter_handler(log))
    eventually(lambda: late.stats["expired"] >= 1)
    assert len(log) == ran
    late.close()


def test_redis_stopped_and_restarted_remote_calls_fail_fast_then_work_again(
    two_nodes, redis_server: RedisServer  # type: ignore[no-untyped-def]
) -> None:
    caller, owner, _log = two_nodes
    assert caller.call("host:2", "counter", "c", "add", (1,), {}, want_reply=True, timeout=5).get(timeout=10) == 1
    waiting = caller.call("host:2", "room", "r", "slow", (30.0,), {}, want_reply=True, timeout=60)
    gevent.sleep(0.1)
    redis_server.kill()
    # Fail fast: long before the call's 60 s timeout, and new calls at once.
    with pytest.raises(ActorUnavailable, match="Redis"):
        waiting.get(timeout=10)
    eventually(lambda: not caller.link.connected, timeout=10)
    with pytest.raises(ActorUnavailable, match="Redis is unreachable"):
        caller.call("host:2", "counter", "c", "add", (1,), {}, want_reply=True, timeout=60).get(timeout=1)
    with pytest.raises(ActorUnavailable):
        caller.call("host:2", "counter", "c", "add", (1,), {}, want_reply=False, timeout=60)
    gevent.sleep(1.0)  # down for a while: the links keep retrying, calls keep failing at once
    with pytest.raises(ActorUnavailable, match="Redis is unreachable"):
        caller.call("host:2", "counter", "c", "add", (1,), {}, want_reply=True, timeout=60).get(timeout=1)
    redis_server.start()

    def works() -> bool:
        try:
            return caller.call("host:2", "counter", "c", "add", (1,), {}, want_reply=True, timeout=1).get(timeout=5) > 1
        except ActorUnavailable:
            return False

    eventually(works, timeout=20, interval=0.1)
    assert caller.link.reconnects >= 1 and owner.link.reconnects >= 1


def test_redis_s_answers_to_direct_writes_are_read_later_each_time_not_at_once(
    redis_server: RedisServer, links: list[RedisLink], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read right after the write, the answer would wake the caller while the owner needs
    # the CPU: it waits ACK_READ_DELAY (long here), on every call, not only the first.
    from flamigo_actors.backplane import inbox_io

    monkeypatch.setattr(inbox_io, "ACK_READ_DELAY", 2.0)
    caller = RedisRemoteCalls(new_link(links, redis_server.url), "host:1")
    owner = RedisRemoteCalls(new_link(links, redis_server.url), "host:2")
    owner.serve(counter_handler([]))
    writer = caller._out
    try:
        assert caller.call("host:2", "counter", "c", "add", (1,), {}, want_reply=True, timeout=5).get(timeout=10) == 1
        eventually(lambda: not writer.unread, timeout=10)
        for n in (2, 3, 4):  # each a direct write from this greenlet (the writer parked)
            assert writer.parked and not writer.outbox
            assert caller.call("host:2", "counter", "c", "add", (1,), {}, want_reply=True, timeout=5).get(timeout=10) == n
            gevent.sleep(0.3)
            assert len(writer.unread) == 1  # the XADD's answer, still unread
            eventually(lambda: not writer.unread, timeout=10)
        assert caller.stats["failed"] == 0
    finally:
        caller.close()
        owner.close()


# -- an actor space on Redis (in this process) --------------------------------------------------


def test_a_soak_of_ten_thousand_activate_passivate_cycles_leaves_no_lease_behind(redis_server: RedisServer) -> None:
    from flamigo_actors import DomainActor
    from flamigo_actors.backplane.actor_redis import RedisActors
    from flamigo_actors.core.settings import Settings
    from flamigo_actors.runtime.actor_space import ActorSpace
    from flamigo_actors.runtime.futures import ActorFuture

    class Visits(DomainActor):
        kind = "test-visits"
        idle_timeout = 0.05

        def on_activate(self, key: str, state: object) -> None:
            self.count = int(state or 0)

        def snapshot(self) -> int:
            return self.count

        def visit(self) -> int:
            self.count += 1
            return self.count

    space = ActorSpace()
    parts = RedisActors.from_settings(Settings(redis_url=redis_server.url), future_factory=ActorFuture)
    parts.attach(space)
    space.start()
    keys = [f"v{n}" for n in range(2000)]
    try:
        for round_ in range(1, 6):  # 5 rounds x 2,000 keys: 10,000 activations, each passivated
            futures = [space.get(Visits, key).ask("visit") for key in keys]
            assert [f.get(timeout=60) for f in futures] == [round_] * len(keys)  # from the stored snapshot
            eventually(lambda: len(space) == 0, timeout=30)
        assert space.stats.activations == 10_000 and space.stats.passivations == 10_000
        redis = redis_server.client()
        # An activation leaves the space, then releases its lease (a Redis round trip), and a
        # renewal in flight may take a just-released lease back (its round then deletes it
        # again): wait for the last releases and for the sweeper (which renews) to end, then
        # every lease must be gone. (Not waiting on the keys themselves: a leaked lease would
        # expire by itself.)
        eventually(lambda: parts.placement.stats.released == 10_000, timeout=10)
        eventually(lambda: space._sweeper is None, timeout=10)
        assert parts.placement.held == []
        assert redis.keys("{flamigo:actor:test-visits:*}:lease") == []  # every lease released
        assert len(redis.keys("{flamigo:actor:test-visits:*}:snapshot")) == 2000
    finally:
        space.stop(5)
    assert parts.remote.greenlets() == [] and parts.link.greenlets() == []

"""The interest-based backplane (``FLAMIGO_REDIS_BACKPLANE=interest``) with real processes and a real redis-server.

Every server is ``tests/interest_app.py`` in a child process; Redis comes from the
``redis_target`` fixture (a URL and a ``cluster`` flag: the standalone server, or with
``indirect`` parametrization ``"cluster"`` a real 3-master Redis Cluster). What a process
reads from Redis is proven from Redis's side (``CLIENT LIST``, ``INFO commandstats``, on
every master of a cluster) as well as by its counters.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import psutil
import pytest
import requests

from tests.support import RedisClusterServers, RedisServer, ServerProcess, eventually, free_port

APP = "tests.interest_app:create_app"

ON_A_CLUSTER = pytest.param("cluster", marks=[pytest.mark.slow, pytest.mark.subprocess], id="cluster")
"""``@pytest.mark.parametrize("redis_target", ["single", ON_A_CLUSTER], indirect=True)``."""


class RedisTarget(NamedTuple):
    url: str
    cluster: bool
    server: Any  # RedisServer, or RedisClusterServers

    def masters(self) -> list[tuple[int, Any]]:
        """(port, plain client) of the standalone server, or of every master of the cluster."""
        if not self.cluster:
            return [(self.server.port, self.server.client())]
        return [(port, self.server.node(port)) for port in sorted(self.server.master_ports())]

    def exists(self, key: str) -> bool:
        if not self.cluster:
            return bool(self.server.client().exists(key))
        return bool(self.server.node(self.server.master_of(key)).exists(key))


@pytest.fixture
def redis_target(request: pytest.FixtureRequest) -> Iterator[RedisTarget]:
    """Where the servers' Redis is: the standalone server, or (``param`` ``"cluster"``) a Redis Cluster."""
    if getattr(request, "param", "single") == "cluster":
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        yield RedisTarget(cluster.url, True, cluster)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    yield RedisTarget(server.url, False, server)


def serve(target: RedisTarget, processes: list[ServerProcess], patterns: str = "") -> ServerProcess:
    args = ["-m", "flamigo_actors.serving.cli", "run", APP, "--port", str(port := free_port()),
            "--redis", target.url, "--backplane", "interest", *(["--redis-cluster"] if target.cluster else [])]
    server = ServerProcess(args, port, env={"INTEREST_PATTERNS": patterns})
    processes.append(server)
    return server


def start(target: RedisTarget, processes: list[ServerProcess], *patterns: str) -> list[ServerProcess]:
    """One server per entry of ``patterns`` (its listener's patterns at start, comma-separated;
    "": none), all started at once and ready."""
    servers = [serve(target, processes, p) for p in patterns]
    for server in servers:
        server.wait_ready()
    return servers


def publish(server: ServerProcess, topics: list[str], first: int, count: int) -> None:
    reply = requests.post(f"{server.url}/publish", json={"topics": topics, "first": first, "count": count}, timeout=10)
    assert reply.status_code == 200, reply.text


def received(server: ServerProcess) -> list[tuple[str, tuple[str, ...], int]]:
    return [(name, tuple(topics), n) for name, topics, n in requests.get(f"{server.url}/received", timeout=10).json()]


def snapshot(server: ServerProcess) -> dict[str, Any]:
    return dict(requests.get(f"{server.url}/backplane", timeout=10).json())


def client_list(target: RedisTarget) -> list[dict[str, str]]:
    """Every client connection of every master, as Redis lists it."""
    found = []
    for _, client in target.masters():
        for line in client.execute_command("CLIENT", "LIST").decode().splitlines():
            found.append(dict(part.split("=", 1) for part in line.split(" ") if "=" in part))
    return found


def reader_links(target: RedisTarget, origin: str) -> list[dict[str, str]]:
    """The process's pub/sub connections (one per master it listens on), as Redis lists them."""
    return [fields for fields in client_list(target) if fields.get("name") == f"flamigo-interest-{origin}"]


def listens_on(target: RedisTarget, origin: str, port: int) -> bool:
    """Whether the process has a sharded subscription on the master at ``port``, as Redis lists it."""
    return any(link["ssub"] != "0" for link in reader_links(target, origin) if link["laddr"].endswith(f":{port}"))


def reader_link(target: RedisTarget, origin: str) -> dict[str, str]:
    """The process's pub/sub connection (the only one), as Redis lists it."""
    found = reader_links(target, origin)
    assert len(found) == 1, f"{len(found)} pub/sub connections of {origin} in CLIENT LIST: {found}"
    return found[0]


def links_of(target: RedisTarget, server: ServerProcess) -> list[dict[str, str]]:
    """Every connection of ``server``'s process to a master, as Redis lists it (matched by its local ports)."""
    masters = {port for port, _ in target.masters()}
    ports = {f"127.0.0.1:{c.laddr.port}" for c in psutil.Process(server.process.pid).net_connections("tcp")
             if c.raddr and c.raddr.port in masters}
    found = [fields for fields in client_list(target) if fields.get("addr") in ports]
    assert found, "the process holds no connection to Redis"
    return found


def wait_for(server: ServerProcess, count: int, timeout: float = 15.0) -> list[tuple[str, tuple[str, ...], int]]:
    def enough() -> Any:
        got = received(server)
        return got if len(got) >= count else None

    return list(eventually(enough, timeout=timeout))


@contextmanager
def feeding(listener: ServerProcess, publisher: ServerProcess) -> Iterator[list[int]]:
    """``feed/x`` gets 10 events, then 5 every 50 ms from a greenlet while the block runs.

    Yields the count sent so far (a one-item list, kept current); on a normal
    exit it waits for 50 more to be sent (the block's disruption ridden
    through), and always stops the publishing greenlet.
    """
    import gevent

    publish(publisher, ["feed/x"], 1, 10)
    wait_for(listener, 10)
    sent = [10]
    stop = False

    def keep_publishing() -> None:  # the publisher goes on through the disruption (publish never waits for Redis)
        while not stop:
            publish(publisher, ["feed/x"], sent[0] + 1, 5)
            sent[0] += 5
            gevent.sleep(0.05)

    talking = gevent.spawn(keep_publishing)
    gevent.sleep(0.5)
    try:
        yield sent
        at_end = sent[0]
        eventually(lambda: sent[0] >= at_end + 50, timeout=30)
    finally:
        stop = True
        talking.join(10)


def fed(listener: ServerProcess, sent: list[int]) -> set[int]:
    """Once the last ``feed/x`` event arrived, each once and in order: what the listener lacks."""

    def settled() -> Any:  # everything after the disruption arrived; what was before it arrived or is counted
        got = [n for _, t, n in received(listener) if t == ("feed/x",)]
        return got if got and got[-1] == sent[0] else None

    got = eventually(settled, timeout=30)
    assert len(got) == len(set(got)), "an event reached the listener twice"
    assert got == sorted(got), "out of order"
    return set(range(1, sent[0] + 1)) - set(got)


@pytest.mark.parametrize("redis_target", ["single", ON_A_CLUSTER], indirect=True)
def test_three_processes_each_get_exactly_what_they_subscribed_and_the_third_reads_nothing(
    redis_target: RedisTarget, processes: list[ServerProcess]
) -> None:
    # wild's pattern is subscribed before its backplane starts, exact's later (below).
    wild, exact, idle = start(redis_target, processes, "rooms/*", "", "")
    requests.post(f"{exact.url}/subscribe", json={"patterns": ["rooms/a"]}, timeout=10).raise_for_status()

    publish(idle, ["rooms/a"], 1, 20)
    publish(idle, ["rooms/b"], 1, 20)
    wait_for(wild, 40)  # (order holds per publisher: let idle's come first)
    publish(exact, ["rooms/b"], 21, 5)  # a process publishing a topic it does not listen to
    publish(idle, ["news"], 1, 10)  # nobody's

    got_wild = wait_for(wild, 45)
    got_exact = wait_for(exact, 20)
    assert [n for _, t, n in got_wild if t == ("rooms/a",)] == list(range(1, 21))
    assert [n for _, t, n in got_wild if t == ("rooms/b",)] == list(range(1, 26))
    assert [n for _, t, n in got_exact] == list(range(1, 21)) and {t for _, t, _ in got_exact} == {("rooms/a",)}
    assert received(idle) == []

    stats = {name: snapshot(server) for name, server in (("wild", wild), ("exact", exact), ("idle", idle))}
    assert stats["wild"]["patterns"] == 1 and stats["wild"]["topics"] == 0
    assert stats["exact"]["topics"] == 1 and stats["exact"]["patterns"] == 0
    assert stats["idle"]["topics"] == 0 and stats["idle"]["patterns"] == 0
    assert stats["idle"]["received"] == 0 and stats["idle"]["catchups"] == 0
    assert stats["wild"]["received"] == 45 and stats["exact"]["received"] == 20
    assert all(s["missed"] == 0 and s["duplicates"] == 0 and s["decode_errors"] == 0 for s in stats.values())
    # From Redis's side: the idle process listens to no channel at all, the others to one
    # each; nobody reads the whole app (no XREAD, no whole-app stream).
    for link in links_of(redis_target, idle):  # nothing is pushed to it: no (sharded) subscription
        assert (link["ssub"], link["sub"], link["psub"]) == ("0", "0", "0"), link
        assert link.get("name") != f"flamigo-interest-{stats['idle']['origin']}", link
    assert reader_link(redis_target, stats["wild"]["origin"])["ssub"] == "1"
    assert reader_link(redis_target, stats["exact"]["origin"])["ssub"] == "1"
    for _, client in redis_target.masters():
        assert "cmdstat_xread" not in client.info("commandstats")
    assert not redis_target.exists("flamigo:events")
    # A topic nobody listens to is only counted in Redis, never stored.
    assert not redis_target.exists("flamigo:t:{news}") and redis_target.exists("flamigo:t:{news}:c")
    # Nothing is left forever, though no event refreshes a TTL: every key of a channel expires.
    channel_keys = [(key, client.ttl(key)) for _, client in redis_target.masters()
                    for pattern in ("flamigo:t:*", "flamigo:n:*") for key in client.scan_iter(pattern)]
    assert len(channel_keys) >= 8 and all(ttl > 0 for _, ttl in channel_keys), channel_keys
    if redis_target.cluster:  # each reader is on the master of its channel's slot
        assert stats["wild"]["cluster"] is True
        for name, channel in (("wild", "flamigo:n:{rooms}"), ("exact", "flamigo:t:{rooms/a}")):
            assert stats[name]["nodes"] == [f"127.0.0.1:{redis_target.server.master_of(channel)}"], stats[name]


def test_wildcard_and_exact_in_one_process_deliver_each_event_once(
    redis_target: RedisTarget, processes: list[ServerProcess]
) -> None:
    both, other, publisher = start(redis_target, processes, "rooms/*,rooms/a", "*", "")  # other: the firehose
    publish(publisher, ["rooms/a"], 1, 30)
    publish(publisher, ["rooms/a", "rooms/c"], 31, 10)  # two topics, one event
    got = wait_for(both, 40)
    assert [n for _, _, n in got] == list(range(1, 41))
    assert [n for _, _, n in wait_for(other, 40)] == list(range(1, 41))
    requests.post(f"{publisher.url}/publish", json={"topics": ["rooms/a"], "first": 41, "count": 1}, timeout=10)
    assert [n for _, _, n in wait_for(both, 41)] == list(range(1, 42))  # nothing late, nothing twice
    assert snapshot(both)["patterns"] == 1 and snapshot(both)["topics"] == 1


def test_a_subscription_made_before_a_remote_publish_gets_it(
    redis_target: RedisTarget, processes: list[ServerProcess]
) -> None:
    listener, publisher = start(redis_target, processes, "", "")
    for round_ in range(20):  # each round: subscribe (returns once effective), then publish elsewhere at once
        topic = f"race/{round_}"
        requests.post(f"{listener.url}/subscribe", json={"patterns": [topic], "name": topic}, timeout=10).raise_for_status()
        publish(publisher, [topic], round_, 1)
    got = wait_for(listener, 20)
    assert sorted(n for _, _, n in got) == list(range(20))
    assert Counter(name for name, _, _ in got) == {f"race/{r}": 1 for r in range(20)}


def test_subscribers_arriving_while_events_flow_get_every_later_one_and_no_false_gap(
    redis_target: RedisTarget, processes: list[ServerProcess]
) -> None:
    # Events are written in batches (one script per batch): a channel marked wanted between
    # two batches, or while one is queued, must neither lose an event published after the
    # subscription returned nor count a gap that is not one.
    import gevent

    exact, wild, publisher = start(redis_target, processes, "", "", "")
    started: list[int] = []  # the first number of each publish request sent

    def flow() -> None:
        for first in range(1, 4001, 100):
            started.append(first)
            publish(publisher, ["flow/a"], first, 100)

    publishing = gevent.spawn(flow)
    eventually(lambda: len(started) >= 5, timeout=30)
    subscribed = {}
    for name, server, pattern in (("exact", exact, "flow/a"), ("wild", wild, "flow/*")):
        requests.post(f"{server.url}/subscribe", json={"patterns": [pattern], "name": name},
                      timeout=10).raise_for_status()
        subscribed[name] = started[-1] + 100  # every request started after this must arrive whole
    publishing.get(timeout=120)
    for name, server in (("exact", exact), ("wild", wild)):
        got = [n for _, _, n in eventually(lambda: (lambda g: g if g and g[-1][2] == 4000 else None)(
            received(server)), timeout=30)]
        assert got == list(range(got[0], 4001)), f"{name}: not every event once, in order"
        assert got[0] <= subscribed[name], f"{name} lost events published after it subscribed"
        stats = snapshot(server)
        assert stats["missed"] == 0 and stats["duplicates"] == 0 and stats["resets"] == 0, (
            {k: stats[k] for k in ("missed", "duplicates", "resets", "catchups", "reconnects")},
            {k: v for k, v in snapshot(publisher).items() if k in ("sent", "failed", "reconnects", "last_error")})


@pytest.mark.parametrize("fault", ["client_kill", "redis_restart"])
def test_catch_up_after_a_redis_blip_exactly_once(
    redis_target: RedisTarget, processes: list[ServerProcess], fault: str
) -> None:
    listener, publisher = start(redis_target, processes, "feed/*,solo", "")
    publish(publisher, ["feed/x"], 1, 10)
    wait_for(listener, 10)
    origin = snapshot(listener)["origin"]
    redis = redis_target.server
    if fault == "client_kill":
        # The listener's pub/sub connection is cut while the publisher goes on: what was
        # published meanwhile comes from the channel's stream when the listener is back.
        redis.client().execute_command("CLIENT", "KILL", "ID", reader_link(redis_target, origin)["id"])
        publish(publisher, ["feed/x"], 11, 40)
        publish(publisher, ["solo"], 1, 5)
        got = wait_for(listener, 55)
        assert [n for _, t, n in got if t == ("feed/x",)] == list(range(1, 51))
        assert [n for _, t, n in got if t == ("solo",)] == list(range(1, 6))
        stats = eventually(lambda: (lambda s: s if s["reconnects"] >= 1 else None)(snapshot(listener)), timeout=15)
        assert stats["missed"] == 0 and stats["duplicates"] == 0
    else:
        # Redis restarts empty: both processes reconnect, mark their interest again, and the
        # events published afterwards arrive exactly once; the lost state is counted, not silent.
        redis.kill()
        redis.start()
        eventually(lambda: snapshot(listener)["connected"] and snapshot(publisher)["connected"], timeout=20)
        eventually(lambda: reader_link(redis_target, origin)["ssub"] == "2", timeout=20)
        publish(publisher, ["feed/x"], 11, 20)
        got = wait_for(listener, 30)
        assert [n for _, t, n in got if t == ("feed/x",)] == list(range(1, 31))
        stats = snapshot(listener)
        assert stats["reconnects"] >= 1 and stats["resets"] >= 1 and stats["duplicates"] == 0
    assert len(received(listener)) == len(got)


def test_a_burst_of_events_arrives_exactly_once_in_order(
    redis_target: RedisTarget, processes: list[ServerProcess]
) -> None:
    listener, publisher = start(redis_target, processes, "burst/*", "")
    for first in range(1, 3001, 500):  # many live messages queued on the listener's connection at once
        publish(publisher, ["burst/a"], first, 500)
    got = wait_for(listener, 3000, timeout=60)
    assert [n for _, _, n in got] == list(range(1, 3001))
    stats = snapshot(listener)
    assert stats["received"] == 3000 and stats["missed"] == 0 and stats["decode_errors"] == 0


@pytest.mark.parametrize("redis_target", [ON_A_CLUSTER], indirect=True)
def test_a_channel_s_master_killed_delivery_resumes_nothing_twice_anything_lost_counted(
    redis_target: RedisTarget, processes: list[ServerProcess]
) -> None:
    cluster = redis_target.server
    listener, publisher = start(redis_target, processes, "feed/*,solo", "")
    with feeding(listener, publisher) as sent:
        killed = cluster.kill_master_of("flamigo:n:{feed}")
        eventually(lambda: snapshot(listener)["connected"] and snapshot(publisher)["connected"], timeout=30)
    publish(publisher, ["solo"], 1, 5)  # and a channel of another slot still works
    lost = fed(listener, sent)
    stats_l, stats_p = snapshot(listener), snapshot(publisher)
    # Never silent: what the listener lacks is counted by the publisher (failed, unreplicated)
    # or the listener (missed).
    assert len(lost) <= stats_p["failed"] + stats_p["unreplicated"] + stats_l["missed"], (sorted(lost), stats_l, stats_p)
    assert stats_l["reconnects"] >= 1 and stats_p["reconnects"] >= 1
    # The publisher waits for a replica of the masters it writes to that have one (WAIT): the
    # survivors' (the promoted one has none left).
    assert any("cmdstat_wait" in client.info("commandstats") for _, client in redis_target.masters())
    new_master = f"127.0.0.1:{cluster.master_of('flamigo:n:{feed}')}"
    assert new_master in stats_l["nodes"] and f"127.0.0.1:{killed}" not in stats_l["nodes"], stats_l
    eventually(lambda: [n for _, t, n in received(listener) if t == ("solo",)] == [1, 2, 3, 4, 5], timeout=15)
    # Redis's side: the listener is subscribed on the promoted master.
    assert listens_on(redis_target, stats_l["origin"], cluster.master_of("flamigo:n:{feed}"))


@pytest.mark.parametrize("redis_target", [ON_A_CLUSTER], indirect=True)
def test_a_channel_s_slot_resharded_while_a_publisher_sends_exactly_once_or_counted(
    redis_target: RedisTarget, processes: list[ServerProcess]
) -> None:
    cluster = redis_target.server
    listener, publisher = start(redis_target, processes, "feed/*,solo", "")
    channel = "flamigo:n:{feed}"
    with feeding(listener, publisher) as sent:
        target = next(p for p in sorted(cluster.master_ports()) if p != cluster.master_of(channel))
        source = cluster.migrate_slot_of(channel, target)  # its stream, counter and mark move along
    lost = fed(listener, sent)
    stats_l, stats_p = snapshot(listener), snapshot(publisher)
    assert len(lost) <= stats_p["failed"] + stats_l["missed"], (sorted(lost), stats_l, stats_p)
    assert stats_l["resets"] == 0, stats_l
    # The listener reads the channel on its new master now, and not on the old one.
    assert f"127.0.0.1:{target}" in stats_l["nodes"], stats_l
    assert listens_on(redis_target, stats_l["origin"], target)
    assert cluster.master_of(channel) == target != source


@pytest.mark.parametrize("redis_target", [ON_A_CLUSTER], indirect=True)
def test_a_master_whose_replica_does_not_confirm_counts_the_writes_unreplicated(
    redis_target: RedisTarget, processes: list[ServerProcess]
) -> None:
    import os
    import signal

    cluster = redis_target.server
    listener, publisher = start(redis_target, processes, "solo", "")
    publish(publisher, ["solo"], 1, 5)
    wait_for(listener, 5)
    assert snapshot(publisher)["unreplicated"] == 0
    master = cluster.master_of("flamigo:t:{solo}")
    replica = int(cluster.node(master).execute_command("ROLE")[2][0][1])
    os.kill(cluster.processes[replica].pid, signal.SIGSTOP)  # connected, silent: WAIT gets no answer
    try:
        publish(publisher, ["solo"], 6, 10)
        got = wait_for(listener, 15)
        stats = eventually(lambda: (lambda s: s if s["unreplicated"] >= 1 else None)(snapshot(publisher)), timeout=15)
    finally:
        os.kill(cluster.processes[replica].pid, signal.SIGCONT)
    assert [n for _, _, n in got] == list(range(1, 16))  # delivered all the same (the master lives)
    # Counted per channel write: 10 events, each on its topic's channel and the firehose.
    assert stats["failed"] == 0 and stats["unreplicated"] <= 20, stats

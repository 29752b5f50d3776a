"""Everything that uses Redis, on a real Redis Cluster (3 masters, 3 replicas): issue 17 part 3.

Servers are child processes (``python -m app`` / ``flamigo-actors run ...`` with
``--redis URL --redis-cluster``) on free ports; the cluster is the ``redis_cluster``
fixture (real redis-server processes joined by ``redis-cli --cluster create``).
Failover is real too: a master is SIGKILLed and its replica promoted by the cluster.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import gevent
import psutil
import pytest
import requests

from tests.support import (
    ErrorReply,
    post_message,
    RedisClusterServers,
    ServerProcess,
    eventually,
    free_port,
    join_room,
)
from tests import test_presence_redis as presence_test
from tests.test_actors_across_processes import _post_async
from tests.test_scale_out import (
    everyone_receives, joined, next_text, nothing_else_before, post, said, say, start_servers,
)

APP = "tests.actors_redis_app:create_app"


def demo(cluster: RedisClusterServers, processes: list[ServerProcess], n: int = 2,
         **env: str) -> list[ServerProcess]:
    """``n`` demo servers on the cluster; the rooms not recoverable (the whole-stream backplane
    cannot carry recovery on a cluster: see the last test)."""
    servers = [ServerProcess.demo(free_port(), "--redis", cluster.url, "--redis-cluster",
                                  env={"FLAMIGO_INSPECT_ENABLED": "true", "DEMO_RECOVERY": "0", **env})
               for _ in range(n)]
    processes += servers
    start_servers(*servers)
    return servers


def backplane(server: ServerProcess) -> dict[str, Any]:
    doc = requests.get(f"{server.url}/_flamigo/inspect?limit=0", timeout=5).json()
    return dict(doc["stats"]["backplane"])


def cluster_links(server: ServerProcess, cluster: RedisClusterServers) -> dict[int, int]:
    """Established TCP connections from ``server`` to each node of the cluster."""
    ports = set(cluster.ports)
    links: dict[int, int] = {}
    for c in psutil.Process(server.process.pid).net_connections("tcp"):
        if c.raddr and c.raddr.port in ports and c.status == psutil.CONN_ESTABLISHED:
            links[c.raddr.port] = links.get(c.raddr.port, 0) + 1
    return links


def cluster_client(cluster: RedisClusterServers) -> Any:
    from redis.cluster import RedisCluster

    return RedisCluster.from_url(cluster.url, socket_timeout=2)


def drain(client: Any) -> list[str]:
    """The texts of the chat messages that reach ``client`` until none comes for 3 s."""
    texts: list[str] = []
    while True:
        try:
            texts.append(next_text(client, timeout=3))
        except AssertionError:
            return texts


def test_two_demo_servers_on_a_cluster_share_events_presence_and_rooms(
    redis_cluster: RedisClusterServers, processes: list[ServerProcess]
) -> None:
    a, b = demo(redis_cluster, processes)
    alice = a.client("alice")
    join_room(alice, "lobby", "alice")
    bob = b.client("bob")
    reply = join_room(bob, "lobby", "bob")
    assert set(reply["members"]) == {"alice", "bob"}  # presence: A's entries read on B
    carol = joined(a, "carol")
    members = [alice, carol, bob]

    post(b, "dave", "via HTTP on B")
    everyone_receives(members, "via HTTP on B")
    say(bob, "from B")
    everyone_receives(members, "from B")
    say(alice, "from A")
    everyone_receives(members, "from A")
    nothing_else_before(members, bob)
    nothing_else_before(members, alice)

    # The stream is one key on one master; presence is spread by topic and by process.
    assert redis_cluster.node(redis_cluster.master_of("flamigo:events")).xlen("flamigo:events") >= 5
    assert redis_cluster.node(redis_cluster.master_of("{rooms/lobby}")).exists("flamigo:presence:t:{rooms/lobby}")
    for server in (a, b):
        # Bounded: the backplane's, the actors' and presence's pools, each per master (none to replicas).
        links = cluster_links(server, redis_cluster)
        assert set(links) <= redis_cluster.master_ports() and max(links.values()) <= 8, links
        stats = backplane(server)
        assert stats["connected"] and stats["missed"] == 0 and stats["failed"] == 0, stats
    for client in members:
        client.close()


def test_presence_on_a_cluster_a_killed_server_s_members_leave_once_each(
    redis_cluster: RedisClusterServers, processes: list[ServerProcess]
) -> None:
    a, b, c = demo(redis_cluster, processes, 3, **presence_test.ENV)
    doomed = [presence_test.joined(a, name) for name in ("ann", "ben")]
    on_b, on_c = presence_test.joined(b, "wat"), presence_test.joined(c, "vic")
    everyone = {"ann": 1, "ben": 1, "wat": 1, "vic": 1}
    for watcher in (on_b, on_c):
        eventually(lambda w=watcher: presence_test.members(w) == everyone)
        presence_test.diffs(watcher, 0.3)  # the joins so far
    registered = cluster_client(redis_cluster).smembers("flamigo:presence:instances")
    assert len(registered) == 3
    a.signal(signal.SIGKILL)
    a.wait(10)
    down_after = float(presence_test.ENV["FLAMIGO_PRESENCE_DOWN_AFTER"])
    for watcher in (on_b, on_c):
        eventually(lambda w=watcher: presence_test.members(w) == {"wat": 1, "vic": 1}, timeout=down_after + 5)
    for watcher in (on_b, on_c):  # one leave per entry on each survivor's members: one reaper did it
        found = presence_test.diffs(watcher, down_after * 2)
        assert presence_test.changes(found, "leaves") == {"ann": 1, "ben": 1}
        assert presence_test.changes(found, "joins") == {}
    alive = {k.rsplit(b":", 1)[1].strip(b"{}") for port in redis_cluster.master_ports()
             for k in redis_cluster.node(port).keys("flamigo:presence:alive:*")}
    (dead,) = registered - alive
    left = [k for port in redis_cluster.master_ports()
            for k in redis_cluster.node(port).keys("flamigo:presence:*") if dead in k]
    assert all(k == b"flamigo:presence:reaped:{" + dead + b"}" for k in left), left  # the reaper's mark at most
    for client in (*doomed, on_b, on_c):
        client.close()


def test_domain_actors_on_a_cluster_one_activation_per_key_spread_over_the_masters(
    redis_cluster: RedisClusterServers, processes: list[ServerProcess]
) -> None:
    servers = [ServerProcess(["-m", "flamigo_actors.serving.cli", "run", APP, "--port", str(port := free_port()),
                              "--redis", redis_cluster.url, "--redis-cluster"], port) for _ in range(2)]
    processes += servers
    start_servers(*servers)
    a, b = servers
    at = time.time() + 1.0
    with_a = _post_async(f"{a.url}/tally/race/race", {"calls": 300, "at": at})
    with_b = _post_async(f"{b.url}/tally/race/race", {"calls": 300, "at": at})
    for result in (with_a.get(timeout=60), with_b.get(timeout=60)):
        assert result == {"ok": 300, "failed": 0, "errors": []}
    spaces = [requests.get(f"{s.url}/space", timeout=5).json() for s in servers]
    assert sum(s["activations"] for s in spaces) == 1, spaces

    keys = [f"k{n}" for n in range(24)]
    for n, key in enumerate(keys):  # each through the other server too: remote calls both ways
        for server in (servers[n % 2], servers[(n + 1) % 2]):
            assert requests.post(f"{server.url}/tally/{key}/add", json={"n": 1}, timeout=15).status_code == 200
    for key in keys:
        assert requests.post(f"{a.url}/tally/{key}/add", json={"n": 0}, timeout=15).json()["total"] == 2
    spaces = [requests.get(f"{s.url}/space", timeout=5).json() for s in servers]
    assert sum(s["activations"] for s in spaces) == 1 + len(keys), spaces
    assert all(s["remote_calls"] > 0 for s in spaces), spaces
    # Leases, fences and snapshots of the 25 actors, on every master (one hash tag per actor).
    held = redis_cluster.keys_per_master("{flamigo:actor:test-tally:*")
    assert len(held) == 3 and all(count > 0 for count in held.values()), held
    assert sum(held.values()) == 3 * (1 + len(keys)), held


def test_the_backplane_stream_s_master_killed_delivery_resumes_and_the_gap_is_counted(
    redis_cluster: RedisClusterServers, processes: list[ServerProcess]
) -> None:
    a, b = demo(redis_cluster, processes)
    alice = joined(a, "alice")
    bob = joined(b, "bob")
    say(alice, "before")
    everyone_receives([alice, bob], "before")

    acknowledged: list[str] = []
    stop = False

    def chatter() -> None:  # alice keeps talking through the failover; some are refused (503)
        n = 0
        while not stop:
            n += 1
            try:
                say(alice, f"m{n}")
                acknowledged.append(f"m{n}")
            except (ErrorReply, TimeoutError, OSError):
                pass
            gevent.sleep(0.05)

    talking = gevent.spawn(chatter)
    gevent.sleep(0.5)
    killed = redis_cluster.kill_master_of("flamigo:events")
    assert redis_cluster.master_of("flamigo:events") != killed
    eventually(lambda: backplane(a)["connected"] and backplane(b)["connected"], timeout=30)
    acked_after = len(acknowledged)
    eventually(lambda: len(acknowledged) >= acked_after + 5, timeout=30)  # the room takes messages again
    stop = True
    talking.join(10)

    received = drain(bob)
    drain(alice)
    assert len(received) == len(set(received)), "a message reached bob twice"
    assert set(received) <= set(acknowledged), set(received) - set(acknowledged)
    lost = set(acknowledged) - set(received)
    stats_a, stats_b = backplane(a), backplane(b)
    # Never silent: every acknowledged message bob did not get is counted by A (failed) or B (missed).
    assert len(lost) <= stats_a["failed"] + stats_b["missed"], (sorted(lost), stats_a, stats_b)
    assert stats_a["reconnects"] >= 1 or stats_b["reconnects"] >= 1, (stats_a, stats_b)
    # After the failover, delivery works both ways, once.
    eventually(lambda: said(bob, "after, from B"), timeout=30, interval=0.2)  # 503 until B's actor link is back
    everyone_receives([alice, bob], "after, from B")
    nothing_else_before([alice, bob], alice)
    alice.close()
    bob.close()


def test_recovery_on_the_whole_stream_backplane_refuses_to_start_on_a_cluster_naming_the_fix(
    redis_cluster: RedisClusterServers, processes: list[ServerProcess]
) -> None:
    server = ServerProcess.demo(free_port(), "--redis", redis_cluster.url, "--redis-cluster",
                                "--backplane", "stream")  # rooms recoverable
    processes.append(server)
    assert server.wait(30) != 0
    assert "cannot run on a Redis Cluster with the whole-stream backplane" in server.log
    assert "FLAMIGO_REDIS_BACKPLANE=interest" in server.log


def test_recovery_on_a_cluster_with_the_interest_backplane_a_resume_replays_what_was_missed(
    redis_cluster: RedisClusterServers, processes: list[ServerProcess]
) -> None:
    from tests.test_recovery import chat, offsets
    from tests.test_recovery_redis import killed_and_resumed

    a, b = (ServerProcess.demo(free_port(), "--redis", redis_cluster.url, "--redis-cluster", "--backplane", "interest",
                                 env={"FLAMIGO_INSPECT_ENABLED": "true"}) for _ in range(2))  # rooms recoverable (the demo's default)
    processes += [a, b]
    start_servers(a, b)
    back, _auth, _missed = killed_and_resumed(a, b)  # (the demo's rooms cross the cluster)
    post_message(b, "bob", "k1", "live")
    assert offsets(chat(back, 1)) == [9]
    # The room's history and its channel share the room's slot: one master holds them.
    master = redis_cluster.master_of("flamigo:t:{rooms/k1}")
    assert redis_cluster.keys_per_master("flamigo:rec:{rooms/k1}:*")[master] >= 1
    assert backplane(b)["mode"] == "interest" and backplane(b)["cluster"] is True
    back.close()


def test_the_cluster_setting_is_validated_and_set_by_the_cli_flag() -> None:
    from flamigo_actors.core.settings import Settings
    from flamigo_actors.serving.cli import _parser, _set_env

    def load(config: dict[str, Any]) -> Settings:
        return Settings.from_config(config, {}, environ={})

    assert load({"FLAMIGO_REDIS_URL": "redis://127.0.0.1:7000", "FLAMIGO_REDIS_CLUSTER": "yes"}).redis_cluster
    assert not load({"FLAMIGO_REDIS_URL": "redis://127.0.0.1:7000"}).redis_cluster
    with pytest.raises(ValueError, match="FLAMIGO_REDIS_CLUSTER is true but FLAMIGO_REDIS_URL is not set"):
        load({"FLAMIGO_REDIS_CLUSTER": True})
    with pytest.raises(ValueError, match="FLAMIGO_REDIS_CLUSTER must be true or false"):
        load({"FLAMIGO_REDIS_URL": "redis://127.0.0.1:7000", "FLAMIGO_REDIS_CLUSTER": "maybe"})
    args = _parser().parse_args(["run", "app:create_app", "--redis", "redis://127.0.0.1:7000", "--redis-cluster"])
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("FLAMIGO_REDIS_CLUSTER", raising=False)
        patch.delenv("FLAMIGO_REDIS_URL", raising=False)
        _set_env(args)
        assert os.environ["FLAMIGO_REDIS_CLUSTER"] == "true"


def test_an_actor_s_lease_master_killed_calls_fail_then_work_with_one_activation(
    redis_cluster: RedisClusterServers, processes: list[ServerProcess]
) -> None:
    servers = [ServerProcess(["-m", "flamigo_actors.serving.cli", "run", APP, "--port", str(port := free_port()),
                              "--redis", redis_cluster.url, "--redis-cluster"], port) for _ in range(2)]
    processes += servers
    start_servers(*servers)
    a, b = servers
    assert requests.post(f"{a.url}/tally/k0/add", json={"n": 1}, timeout=15).json()["total"] == 1
    assert requests.post(f"{b.url}/tally/k0/add", json={"n": 1}, timeout=15).json()["total"] == 2  # remote
    lease = "{flamigo:actor:test-tally:k0}:lease"
    owner = redis_cluster.node(redis_cluster.master_of(lease)).get(lease)
    redis_cluster.kill_master_of(lease)

    def added(server: ServerProcess) -> int | None:
        response = requests.post(f"{server.url}/tally/k0/add", json={"n": 1}, timeout=15)
        assert response.status_code in (200, 503, 504), response.text  # refused while the link is down
        return int(response.json()["total"]) if response.status_code == 200 else None

    totals: list[int] = []
    eventually(lambda: (t := added(b)) is not None and not totals.append(t), timeout=30, interval=0.2)
    eventually(lambda: (t := added(a)) is not None and not totals.append(t), timeout=30, interval=0.2)
    assert totals == sorted(totals) and totals[-1] - totals[0] == 1 and totals[0] >= 3, totals
    spaces = [requests.get(f"{s.url}/space", timeout=5).json() for s in servers]
    assert sum(s["activations"] for s in spaces) == 1, spaces  # the owner kept it through the failover
    assert redis_cluster.node(redis_cluster.master_of(lease)).get(lease) == owner  # renewed on the new master

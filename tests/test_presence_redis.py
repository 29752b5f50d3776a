"""Presence across processes: demo servers (child processes) sharing a real redis-server.

A short heartbeat (refresh 0.5 s, down-after 3 s) keeps the kill -9 test short;
the mechanism is the same as with the defaults (10 s / 30 s).
"""

from __future__ import annotations

import random
import signal
import time
from typing import Any


from tests.support import RedisServer, ServerProcess, WsClient, eventually, free_port

DOWN_AFTER = 3.0
ENV = {"FLAMIGO_PRESENCE_REFRESH": "0.5", "FLAMIGO_PRESENCE_DOWN_AFTER": str(DOWN_AFTER)}


def servers(redis_server: RedisServer, processes: list[ServerProcess], count: int) -> list[ServerProcess]:
    new = [ServerProcess.demo(free_port(), "--redis", redis_server.url, env=ENV) for _ in range(count)]
    processes.extend(new)
    for server in new:
        server.wait_ready()
    return new


def members(client: WsClient, room: str = "lobby") -> dict[str, int]:
    reply = client.request("app::rooms:members", {"room": room})
    return {key: len(metas) for key, metas in reply["members"].items()}


def joined(server: ServerProcess, username: str, room: str = "lobby") -> WsClient:
    client = server.client(username)
    client.request("app::rooms:join", {"room": room})
    return client


def diffs(client: WsClient, within: float) -> list[dict[str, Any]]:
    """The presence diffs reaching ``client`` within ``within`` seconds (after those kept aside)."""
    found = [m["payload"] for m in client.pushes("presence:diff", count=10**9, timeout=within)]
    return found


def changes(found: list[dict[str, Any]], kind: str) -> dict[str, int]:
    counted: dict[str, int] = {}
    for payload in found:
        for key, metas in payload[kind].items():
            counted[key] = counted.get(key, 0) + len(metas)
    return counted


def apply(view: dict[str, int], found: list[dict[str, Any]]) -> dict[str, int]:
    """A member's view of the room from diffs alone: leaves first, then joins (what flamigo.js does)."""
    view = dict(view)
    for payload in found:
        for key, metas in payload["leaves"].items():
            view[key] = view.get(key, 0) - len(metas)
        for key, metas in payload["joins"].items():
            view[key] = view.get(key, 0) + len(metas)
        assert all(count >= 0 for count in view.values()), payload  # never a leave of an unknown entry
    return {key: count for key, count in view.items() if count}


def test_two_servers_list_the_same_members_within_a_second(
    redis_server: RedisServer, processes: list[ServerProcess], backplane_mode: str
) -> None:
    a, b = servers(redis_server, processes, 2)
    ann = joined(a, "ann")
    watcher = a.client("wat")  # not a member: reads the list only
    ben = joined(b, "ben")
    start = time.monotonic()
    eventually(lambda: members(watcher) == {"ann": 1, "ben": 1} == members(ben), timeout=1.0)
    assert time.monotonic() - start <= 1.0
    # ann (on A) hears of ben's join (on B) once
    view = apply({}, diffs(ann, 1.0))
    assert view == {"ann": 1, "ben": 1}
    ben.request("app::rooms:leave", {"room": "lobby"})  # a graceful leave
    eventually(lambda: members(watcher) == {"ann": 1} == members(ben), timeout=1.0)
    ben.request("app::rooms:join", {"room": "lobby"})
    eventually(lambda: members(watcher) == {"ann": 1, "ben": 1}, timeout=1.0)
    ben.close()  # a graceful disconnect
    eventually(lambda: members(watcher) == {"ann": 1}, timeout=1.0)
    # the diffs (coalesced: a leave and a join again within one window may cancel out) add up
    assert apply(view, diffs(ann, 1.0)) == {"ann": 1}
    ann.close()
    watcher.close()


def test_a_killed_server_s_members_leave_once_each_and_never_come_back(
    redis_server: RedisServer, processes: list[ServerProcess]
) -> None:
    a, b, c = servers(redis_server, processes, 3)
    doomed = [joined(a, name) for name in ("ann", "ben", "cat")]
    on_b, on_c = joined(b, "wat"), joined(c, "vic")
    for watcher in (on_b, on_c):
        eventually(lambda w=watcher: members(w) == {"ann": 1, "ben": 1, "cat": 1, "wat": 1, "vic": 1})
        diffs(watcher, 0.3)  # the joins so far
    registered = redis_server.client().smembers("flamigo:presence:instances")
    assert len(registered) == 3
    a.signal(signal.SIGKILL)
    a.wait(10)
    killed = time.monotonic()
    for watcher in (on_b, on_c):
        eventually(lambda w=watcher: members(w) == {"wat": 1, "vic": 1}, timeout=DOWN_AFTER + 5)
    assert time.monotonic() - killed <= DOWN_AFTER + 5
    # one leave per entry, on each survivor's members: exactly one survivor did the clean-up
    for watcher in (on_b, on_c):
        found = diffs(watcher, DOWN_AFTER * 2)  # long enough for a second, duplicate reaper to show
        assert changes(found, "leaves") == {"ann": 1, "ben": 1, "cat": 1}
        assert changes(found, "joins") == {}
    (dead,) = registered - set(_live_instances(redis_server))
    left = [k for k in redis_server.client().keys("flamigo:presence:*") if dead in k]
    assert all(k == b"flamigo:presence:reaped:{" + dead + b"}" for k in left), left  # the reaper's mark at most
    # a server started afterwards (on the dead one's port) never revives them
    (d,) = servers(redis_server, processes, 1)
    fresh = d.client("new")
    eventually(lambda: members(fresh) == {"wat": 1, "vic": 1})  # it has joined the others
    for _ in range(3):
        assert members(fresh) == {"wat": 1, "vic": 1} == members(on_b)
        time.sleep(DOWN_AFTER / 2)
    for client in (*doomed, on_b, on_c, fresh):
        client.close()


def _live_instances(redis_server: RedisServer) -> list[bytes]:
    client = redis_server.client()
    return [k.rsplit(b":", 1)[1].strip(b"{}") for k in client.keys("flamigo:presence:alive:*")]


def test_random_joins_leaves_and_disconnects_on_two_servers_converge(
    redis_server: RedisServer, processes: list[ServerProcess]
) -> None:
    a, b = servers(redis_server, processes, 2)
    rng = random.Random(1414)
    live: dict[int, tuple[WsClient, str, bool]] = {}  # id -> (client, user, in the room)
    next_id = 0
    for _ in range(1000):
        roll = rng.random()
        if roll < 0.25 or not live:
            user = f"u{rng.randrange(25)}"
            live[next_id] = ((a if rng.random() < 0.5 else b).client(user), user, False)
            next_id += 1
            continue
        key = rng.choice(sorted(live))
        client, user, inside = live[key]
        if roll < 0.6:
            client.request("app::rooms:join", {"room": "mix"})
            live[key] = (client, user, True)
        elif roll < 0.85:
            client.request("app::rooms:leave", {"room": "mix"})
            live[key] = (client, user, False)
        else:
            client.close()
            del live[key]
    expected: dict[str, int] = {}
    for _client, user, inside in live.values():
        if inside:
            expected[user] = expected.get(user, 0) + 1
    probe_a, probe_b = a.client("probe"), b.client("probe")
    eventually(lambda: members(probe_a, "mix") == expected == members(probe_b, "mix"), timeout=10)
    for client, _user, _inside in live.values():
        client.close()
    eventually(lambda: members(probe_a, "mix") == {} == members(probe_b, "mix"), timeout=10)
    probe_a.close()
    probe_b.close()


def test_an_emptied_redis_gets_every_process_s_entries_back(
    redis_server: RedisServer, processes: list[ServerProcess], backplane_mode: str
) -> None:
    a, b = servers(redis_server, processes, 2)
    ann, ben = joined(a, "ann"), joined(b, "ben")
    eventually(lambda: members(ann) == {"ann": 1, "ben": 1} == members(ben))
    redis_server.client().flushall()  # Redis lost everything (a restart without persistence)
    eventually(lambda: members(ann) == {"ann": 1, "ben": 1} == members(ben), timeout=DOWN_AFTER + 5)
    # and cross-server diffs flow again
    cat = joined(b, "cat")
    eventually(lambda: members(ann) == {"ann": 1, "ben": 1, "cat": 1}, timeout=5)
    cat.close()
    eventually(lambda: members(ann) == {"ann": 1, "ben": 1}, timeout=5)
    ann.close()
    ben.close()


def test_presence_opens_no_redis_connection_until_it_is_used(
    redis_server: RedisServer, processes: list[ServerProcess]
) -> None:
    from tests.test_scale_out import redis_links

    quiet = ServerProcess.demo(free_port(), "--redis", redis_server.url, env={**ENV, "DEMO_PRESENCE": "0"})
    used = ServerProcess.demo(free_port(), "--redis", redis_server.url, env=ENV)
    processes.extend([quiet, used])
    for server in (quiet, used):
        server.wait_ready()
    redis = redis_server.client()

    def presence_keys() -> list[str]:
        return sorted(k.decode() if isinstance(k, bytes) else k for k in redis.keys("flamigo:presence:*"))

    idle = used.client("ivy")  # authenticated, in no room: nothing tracked or listed yet
    idle.request("app::echo", 1)
    # A whole room session on the server that never tracks: rooms, messages, history.
    ann = quiet.client("ann")
    ann.request("app::rooms:join", {"room": "solo"})
    ann.request("app::rooms:send", {"room": "solo", "text": "hi"})
    assert ann.request("app::rooms:members", {"room": "solo"}) == {"room": "solo", "members": {}}
    ann.request("app::rooms:history", {"room": "solo"})
    assert presence_keys() == []  # no heartbeat, no entry: presence never touched Redis
    # The backplane's (at most 3) and the domain actors' (inbox reader and sender): none for presence.
    # (The room's actor may live on either server.)
    for server in (quiet, used):
        assert redis_links(server.process.pid, redis_server.port) <= 5

    # The first track starts it: heartbeat, entries, diff subscription (its own connection).
    before = redis_links(used.process.pid, redis_server.port)
    bob = joined(used, "bob", "solo")
    eventually(lambda: any(":alive:" in k for k in presence_keys()), timeout=10)
    eventually(lambda: redis_links(used.process.pid, redis_server.port) >= before + 2, timeout=10)
    assert members(ann, "solo") == {}  # the quiet server still does not look
    assert members(bob, "solo") == {"bob": 1}
    for client in (idle, ann, bob):
        client.close()

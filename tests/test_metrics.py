"""Prometheus metrics: a real server scraped over loopback, every scrape parsed by prometheus_client.

Bounded cardinality (1,000 new topics and 1,000 users, each opted in to
recovery and tracked in a room of its own, add no series), recovery results
and presence entries, and the sum over two gunicorn workers (one scrape, ten
connections spread over both).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
import pytest
import requests
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from flamigo_actors import ClientMessage
from tests.support import (
    ErrorReply,
    LiveServer,
    RedisServer,
    ServerProcess,
    eventually,
    free_port,
    post_message,
    worker_holding,
)
from tests.test_recovery import ask, chat, cut, join, opted_in, resume, since

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: Any, **headers: str) -> Series:
    """Every sample of one scrape, by (sample name, sorted labels)."""
    response = requests.get(f"{server.url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    series: Series = {}
    for family in text_string_to_metric_families(response.text):
        assert family.name.startswith("flamigo_"), family.name
        for sample in family.samples:
            series[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return series


def value(series: Series, name: str, **labels: str) -> float:
    return series.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def metered(demo_app: Callable[..., Flask], live_server: Callable[[Flask], LiveServer]) -> LiveServer:
    return live_server(demo_app(FLAMIGO_METRICS=True))


def test_a_scrape_counts_connections_strategies_frames_and_closes(metered: LiveServer) -> None:
    alice, bob = metered.client("alice"), metered.client("bob")
    assert alice.request("app::echo", {"n": 1}) == {"n": 1}
    with pytest.raises(ErrorReply):
        alice.request("app::demo:fail")
    series = scrape(metered)
    assert value(series, "flamigo_connections") == 2
    assert value(series, "flamigo_connections_opened_total") == 2
    assert value(series, "flamigo_strategy_calls_total", strategy="app::echo", status="200") == 1
    assert value(series, "flamigo_strategy_calls_total", strategy="app::websocket:auth", status="200") == 2
    failed = [k for k in series if k[0] == "flamigo_strategy_calls_total" and ("strategy", "app::demo:fail") in k[1]]
    assert len(failed) == 1 and series[failed[0]] == 1 and ("status", "200") not in failed[0][1]
    assert value(series, "flamigo_strategy_duration_seconds_count", strategy="app::echo") == 1
    assert value(series, "flamigo_mailbox_wait_seconds_count") >= 4
    assert value(series, "flamigo_frames_total", direction="in") >= 4
    assert value(series, "flamigo_frames_total", direction="out") >= 4
    assert value(series, "flamigo_bytes_total", direction="in") > 0
    assert value(series, "flamigo_bytes_total", direction="out") > 0
    assert value(series, "flamigo_actors", kind="connection") == 2
    assert value(series, "flamigo_bus_events_total", outcome="published") >= 2  # connected events
    builds = [k for k in series if k[0] == "flamigo_build_info"]
    assert len(builds) == 1 and series[builds[0]] == 1

    bob.close()
    eventually(lambda: value(scrape(metered), "flamigo_connections") == 1, timeout=10)
    series = scrape(metered)
    assert value(series, "flamigo_connections_closed_total", reason="normal") == 1
    # Counters only grow between scrapes.
    assert value(series, "flamigo_strategy_calls_total", strategy="app::echo", status="200") == 1
    alice.close()


def test_metrics_are_off_by_default_and_nothing_is_measured(demo_server: LiveServer) -> None:
    assert requests.get(f"{demo_server.url}/metrics", timeout=5).status_code == 404
    assert demo_server.flamigo.hub.instruments is None
    client = demo_server.client("carol")
    client.request("app::echo", 1)
    assert demo_server.flamigo.stats.bytes_in == 0  # not counted when off
    client.close()


def test_metrics_are_refused_to_non_loopback_hosts_without_the_admin_token(
    demo_app: Callable[..., Flask], live_server: Callable[[Flask], LiveServer]
) -> None:
    server = live_server(demo_app(FLAMIGO_METRICS=True, FLAMIGO_ADMIN_TOKEN="s3cret-admin"))
    refused = requests.get(f"{server.url}/metrics", headers={"Host": "example.com"}, timeout=5)
    assert refused.status_code == 403 and "FLAMIGO_ADMIN_TOKEN" in refused.json()["error"]
    wrong = requests.get(f"{server.url}/metrics", headers={"Authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 403
    series = scrape(server, Host="example.com", Authorization="Bearer s3cret-admin")
    assert value(series, "flamigo_connections") == 0


@dataclass(frozen=True)
class Tick:
    topics: tuple[str, ...]

    @property
    def client_message(self) -> ClientMessage:
        return ClientMessage("tick", {})


def test_new_topics_and_users_add_no_series(metered: LiveServer) -> None:
    def activity(first: int, count: int) -> None:
        for n in range(first, first + count):
            metered.flamigo.publish(Tick((f"cardinality/topic-{n}",)))
        for start in range(first, first + count, 100):  # 100 open at a time
            clients = [opted_in(metered, f"user{n}")[0] for n in range(start, min(start + 100, first + count))]
            clients[0].request("app::echo", start)
            for n, client in enumerate(clients, start):  # tracked in presence, recoverable rooms
                client.request("app::rooms:join", {"room": f"room-{n}"})
            for client in clients:
                client.close()
        eventually(lambda: not metered.flamigo.connections, timeout=30)

    activity(0, 3)  # every kind of series this activity makes exists now
    before = scrape(metered)
    activity(3, 1000)
    after = scrape(metered)
    assert set(after) == set(before), sorted(set(after) ^ set(before))
    assert value(after, "flamigo_connections_opened_total") == 1003
    assert value(after, "flamigo_bus_events_total", outcome="published") >= 1003


def test_two_workers_report_the_sum_of_their_connections_in_one_scrape(
    redis_server: RedisServer, processes: list[ServerProcess]
) -> None:
    server = ServerProcess.demo(
        free_port(), "--workers", "2", "--redis", redis_server.url, env={"FLAMIGO_METRICS": "true"}
    )
    processes.append(server)
    server.wait_ready()
    arbiter = psutil.Process(server.process.pid)
    eventually(lambda: len(arbiter.children()) == 2, timeout=20)
    workers = arbiter.children()

    def worker_of(client: Any) -> int:
        return worker_holding(workers, client.ws.sock)

    # Connect until both workers serve some (the kernel spreads the accepts), then keep 10.
    clients: list[Any] = []
    served_by: dict[int, list[Any]] = {}
    for n in range(200):
        client = server.client(f"user{n}")
        served_by.setdefault(worker_of(client), []).append(client)
        clients.append(client)
        if len(served_by) == 2 and len(clients) >= 10:
            break
    assert set(served_by) == {w.pid for w in workers}, {pid: len(c) for pid, c in served_by.items()}
    while len(clients) > 10:  # close extras from the worker with more, keeping both in use
        pid = max(served_by, key=lambda p: len(served_by[p]))
        extra = served_by[pid].pop()
        clients.remove(extra)
        extra.close()

    # Each worker syncs its files every second: the scrape (answered by either) sums both.
    eventually(lambda: value(scrape(server), "flamigo_connections") == 10, timeout=15)
    series = scrape(server)
    assert value(series, "flamigo_strategy_calls_total", strategy="app::websocket:auth", status="200") >= 10
    assert value(series, "flamigo_actors", kind="connection") == 10
    for client in clients:
        client.close()
    eventually(lambda: value(scrape(server), "flamigo_connections") == 0, timeout=15)


def test_the_prometheus_client_internals_the_sync_uses_are_there() -> None:
    """Metrics.sync adds bucket counts through a Histogram's value objects (no public bulk call)."""
    from prometheus_client import CollectorRegistry, Histogram

    from flamigo_actors.ops.meter import WAIT_BUCKETS, Buckets

    histogram = Histogram("h", "h", registry=CollectorRegistry(), buckets=WAIT_BUCKETS)
    assert len(histogram._buckets) == len(WAIT_BUCKETS) + 1  # +Inf
    assert hasattr(histogram._sum, "inc") and all(hasattr(b, "inc") for b in histogram._buckets)
    mine = Buckets(WAIT_BUCKETS)
    for value in (0.0001, 0.0002, 3.0, 99.0):
        mine.observe(value)
        histogram.observe(value)
    assert mine.counts == [int(b.get()) for b in histogram._buckets]
    assert mine.total == histogram._sum.get()


def test_the_meter_bins_batches_exactly_as_prometheus_client_observes_one_by_one() -> None:
    """The meter appends per request and bins in batches: the counts a read sees are exact,
    bucket edges included, and a full batch is binned by the hub once the caller yields."""
    import random

    import gevent
    from prometheus_client import CollectorRegistry, Histogram

    from flamigo_actors.ops.meter import FLUSH_AT, STRATEGY_BUCKETS, WAIT_BUCKETS, Meter

    rng = random.Random(16)
    registry = CollectorRegistry()
    durations = Histogram("d", "d", registry=registry, buckets=STRATEGY_BUCKETS)
    failed = Histogram("f", "f", registry=registry, buckets=STRATEGY_BUCKETS)
    waits = Histogram("w", "w", registry=registry, buckets=WAIT_BUCKETS)
    meter = Meter()
    edges = list(STRATEGY_BUCKETS) + list(WAIT_BUCKETS) + [0.0, 60.0]
    for n in range(FLUSH_AT - 2):  # below the batch size: binned at the read
        seconds = edges[n % len(edges)] if n % 3 == 0 else rng.uniform(0, 0.02)
        status = 200 if n % 7 else 504
        meter.strategy_done("app::echo", status, seconds)
        (durations if status == 200 else failed).observe(seconds)
        meter.mailbox_wait(seconds / 2)
        waits.observe(seconds / 2)
    def count(histogram: Any) -> int:
        return sum(int(b.get()) for b in histogram._buckets)

    assert meter.strategy_calls() == {("app::echo", 200): count(durations), ("app::echo", 504): count(failed)}
    assert count(durations) + count(failed) == FLUSH_AT - 2
    assert meter.strategy_time[("app::echo", 200)].counts == [int(b.get()) for b in durations._buckets]
    assert meter.strategy_time[("app::echo", 504)].counts == [int(b.get()) for b in failed._buckets]
    assert meter.mailbox.counts == [int(b.get()) for b in waits._buckets]
    assert abs(meter.mailbox.total - waits._sum.get()) < 1e-9

    for _ in range(FLUSH_AT):  # a full batch: binned by a hub callback, after this greenlet yields
        meter.mailbox_wait(0.0003)
    assert meter._pending == FLUSH_AT
    gevent.sleep(0)
    assert meter._pending == 0
    assert meter.mailbox.counts[1] == [int(b.get()) for b in waits._buckets][1] + FLUSH_AT


def test_recovery_results_and_presence_entries_are_counted(metered: LiveServer) -> None:
    flamigo = metered.flamigo
    series = scrape(metered)
    for outcome in ("recovered", "not_recovered", "unknown_session", "forbidden"):  # there from the start
        assert (("flamigo_recovery_resumes_total", (("outcome", outcome),))) in series
    ann, auth = opted_in(metered, "ann")
    joined = join(ann, "m1")
    bob = metered.client("bob")
    join(bob, "m1")
    flamigo.presence.track("teams/blue", "svc", {})  # another namespace, owned by the process
    series = scrape(metered)
    assert value(series, "flamigo_recovery_sessions_total") == 1
    assert value(series, "flamigo_presence_entries", namespace="rooms") == 2
    assert value(series, "flamigo_presence_entries", namespace="teams") == 1
    eventually(lambda: value(scrape(metered), "flamigo_presence_diff_pushes_total") >= 1, timeout=10)
    assert value(scrape(metered), "flamigo_presence_diffs_total") >= 1

    # A retried request is answered from the cache; then a resume recovers two missed events.
    assert ask(ann, "m-1", "app::echo", "once")["payload"] == "once"
    cut(ann)
    post_message(metered, "bob", "m1", "missed-1")
    post_message(metered, "bob", "m1", "missed-2")
    back, reply = resume(metered, "ann", auth["session"], since("m1", joined["pos"]))
    assert reply["recovered"] is True and len(chat(back, 2)) == 2
    assert ask(back, "m-1", "app::echo", "once")["payload"] == "once"
    # Not recovered (a foreign epoch), unknown, and another user's session (403).
    cut(back)
    again, reply = resume(metered, "ann", auth["session"], {"rooms/m1": {"offset": 0, "epoch": "gone"}})
    assert reply["streams"]["rooms/m1"]["reason"] == "epoch_mismatch"
    lost, reply = resume(metered, "ann", "no-such-session", {})
    assert reply["reason"] == "unknown_session"
    with pytest.raises(ErrorReply):
        resume(metered, "bob", auth["session"], {})
    series = scrape(metered)
    assert value(series, "flamigo_recovery_resumes_total", outcome="recovered") == 1
    assert value(series, "flamigo_recovery_resumes_total", outcome="not_recovered") == 1
    assert value(series, "flamigo_recovery_resumes_total", outcome="unknown_session") == 1
    assert value(series, "flamigo_recovery_resumes_total", outcome="forbidden") == 1
    assert value(series, "flamigo_recovery_streams_total", result="recovered") == 1
    assert value(series, "flamigo_recovery_streams_total", result="epoch_mismatch") == 1
    assert value(series, "flamigo_recovery_replayed_total") == 2
    assert value(series, "flamigo_recovery_cached_replies_total") == 1
    assert value(series, "flamigo_recovery_sessions_total") == 2  # ann's, and the unknown one's new session

    # Entries follow the connections: bob's and ann's first ones ended (resumes do not re-track).
    for client in (bob, again, lost):
        client.close()
    flamigo.presence.untrack("teams/blue", "svc")
    eventually(lambda: value(scrape(metered), "flamigo_presence_entries", namespace="rooms") == 0, timeout=10)
    assert value(scrape(metered), "flamigo_presence_entries", namespace="teams") == 0


def test_presence_namespaces_beyond_the_bound_share_one_label(metered: LiveServer) -> None:
    from flamigo_actors.ops.metrics_state import MAX_NAMESPACES

    presence = metered.flamigo.presence
    for n in range(MAX_NAMESPACES + 8):
        presence.track(f"ns{n}/x", "k", {})
    series = scrape(metered)
    labels = {dict(k[1])["namespace"]: v for k, v in series.items() if k[0] == "flamigo_presence_entries"}
    assert len(labels) == MAX_NAMESPACES + 1 and labels["other"] == 8
    assert sum(labels.values()) == MAX_NAMESPACES + 8
    for n in range(MAX_NAMESPACES + 8):
        presence.untrack(f"ns{n}/x", "k")
    assert not any(v for k, v in scrape(metered).items() if k[0] == "flamigo_presence_entries")

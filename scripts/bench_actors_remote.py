"""Measure remote asks to domain actors through Redis, next to a plain Redis round trip (PING).

    python scripts/bench_actors_remote.py [--asks 2000] [--callers 50] [--per-caller 200]

Run from the repository root (it uses the test helpers in ``tests/support.py``).
It starts a real redis-server and an *owner* process: an actor space on that
Redis (``RedisActors``) that activates ``BenchCounter`` actors; this process is
the caller, with an actor space of its own on the same Redis, so each ask is
forwarded to the owner through Redis. In the same run:

* ``ping``: sequential ``PING`` round trips through the same Redis link (redis-py, a
  connection of its own, as the calls' reader and sender have);
* ``remote ask``: sequential ``space.get(BenchCounter, key).ask("add", 1).get()``
  (one caller, one actor): p50/p99 latency and the p50 ratio to the PING round
  trip (target <= 3x); ``transport only``: the same call through
  ``RedisRemoteCalls.call`` without this side's actor space;
* ``throughput``: ``--callers`` greenlets each asking ``--per-caller`` times
  (many callers, one actor per caller): calls/s.

Everything it started is stopped at the end. Figures depend on the machine:
printed (and written as JSON with ``--json``), never asserted.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from typing import Any  # noqa: E402

from flamigo_actors.backplane.actor_redis import RedisActors  # noqa: E402
from flamigo_actors.core.settings import Settings  # noqa: E402
from flamigo_actors.runtime.actor_space import ActorSpace  # noqa: E402
from flamigo_actors.runtime.domain import DomainActor  # noqa: E402
from flamigo_actors.runtime.futures import ActorFuture  # noqa: E402
from tests.support import RedisServer, free_port, need_binary  # noqa: E402

__all__ = ["BenchCounter", "main"]

OWNER = """
from gevent import monkey
monkey.patch_all()
import sys, gevent
sys.path.insert(0, sys.argv[3])
from flamigo_actors.backplane.actor_redis import RedisActors
from flamigo_actors.core.settings import Settings
from flamigo_actors.runtime.actor_space import ActorSpace
from flamigo_actors.runtime.futures import ActorFuture
from scripts.bench_actors_remote import BenchCounter

space = ActorSpace()
RedisActors.from_settings(Settings(redis_url=sys.argv[1]), future_factory=ActorFuture).attach(space)
space.start()
for key in ["one", "warm"] + [f"k{n}" for n in range(int(sys.argv[2]))]:  # owned here
    space.get(BenchCounter, key).ask("add", 0).get()
print(space.node_id, flush=True)
gevent.sleep(24 * 3600)  # until the benchmark terminates us
"""


class BenchCounter(DomainActor):
    """The actor both processes know; the owner process activates every key first."""

    kind = "bench-counter"
    idle_timeout = None

    def on_activate(self, key: str, state: Any) -> None:
        self.n = 0

    def snapshot(self) -> Any:
        return self.n

    def add(self, n: int) -> int:
        self.n += n
        return self.n


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6, 1)

    return {"p50_us": at(0.5), "p90_us": at(0.9), "p99_us": at(0.99), "n": len(ordered)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--asks", type=int, default=2000, help="sequential latency samples (and PINGs)")
    parser.add_argument("--callers", type=int, default=50, help="concurrent callers in the throughput run")
    parser.add_argument("--per-caller", type=int, default=200, help="asks per concurrent caller")
    parser.add_argument("--json", help="also write the results to this file")
    options = parser.parse_args()

    redis_server = RedisServer(need_binary("redis-server"), free_port()).start()
    owner = subprocess.Popen([sys.executable, "-c", OWNER, redis_server.url, str(options.callers), ROOT],
                             cwd=ROOT, text=True, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": ROOT})
    space = ActorSpace()
    parts = None
    try:
        assert owner.stdout is not None
        owner_node = owner.stdout.readline().strip()
        assert owner_node, "the owner process did not start"
        parts = RedisActors.from_settings(Settings(redis_url=redis_server.url), future_factory=ActorFuture)
        parts.attach(space)
        space.start()
        link = parts.link

        def ask(key: str) -> object:  # through this process's actor space: forwarded to the owner
            return space.get(BenchCounter, key).ask("add", 1).get(timeout=20)

        def transport(key: str) -> object:  # the Redis remote call alone (no actor space on this side)
            return parts.remote.call(owner_node, "bench-counter", key, "add", (1,), {},  # type: ignore[union-attr]
                                     want_reply=True, timeout=10).get(timeout=20)

        pinger = link.dedicated()  # one connection of its own, like the calls' reader and sender
        for _ in range(200):  # warm up both sides (scripts, connections, code paths)
            ask("warm")
            transport("warm")
            pinger.ping()
        pings, asks, bare = [], [], []
        for _ in range(options.asks):  # interleaved: all three see the same machine state
            started = time.perf_counter()
            pinger.ping()
            pings.append(time.perf_counter() - started)
            started = time.perf_counter()
            ask("one")
            asks.append(time.perf_counter() - started)
            started = time.perf_counter()
            transport("one")
            bare.append(time.perf_counter() - started)

        def caller(n: int) -> None:
            for _ in range(options.per_caller):
                ask(f"k{n}")

        started = time.perf_counter()
        gevent.joinall([gevent.spawn(caller, n) for n in range(options.callers)], raise_error=True)
        elapsed = time.perf_counter() - started
        total = options.callers * options.per_caller
        ping, remote, calls_only = summary(pings), summary(asks), summary(bare)
        results = {
            "ping": ping,
            "remote_ask": remote,
            "remote_call_transport_only": calls_only,
            "ratio_p50": round(remote["p50_us"] / ping["p50_us"], 2),
            "ratio_p99": round(remote["p99_us"] / ping["p99_us"], 2),
            "throughput": {"callers": options.callers, "asks": total,
                           "calls_per_s": round(total / elapsed), "seconds": round(elapsed, 3)},
            "target": "remote ask p50 <= 3x PING p50",
        }
        print(f"PING round trip      p50 {ping['p50_us']:8.1f} us  p99 {ping['p99_us']:8.1f} us")
        print(f"remote ask (1 -> 1)  p50 {remote['p50_us']:8.1f} us  p99 {remote['p99_us']:8.1f} us  "
              f"= {results['ratio_p50']}x PING at p50, {results['ratio_p99']}x at p99 (target <= 3x at p50)")
        print(f"(transport only)     p50 {calls_only['p50_us']:8.1f} us  p99 {calls_only['p99_us']:8.1f} us  "
              "(RedisRemoteCalls.call without the caller's actor space)")
        print(f"throughput           {results['throughput']['calls_per_s']} calls/s "
              f"({options.callers} callers x {options.per_caller} asks, {elapsed:.2f} s)")
        print(json.dumps(results))
        if options.json:
            with open(options.json, "w", encoding="utf-8") as handle:
                json.dump(results, handle, indent=2)
        return 0
    finally:
        space.stop(2.0)  # closes the Redis parts too (they are its remote)
        owner.terminate()
        try:
            owner.wait(10)
        except subprocess.TimeoutExpired:
            owner.kill()
            owner.wait()
        redis_server.stop()
        shutil.rmtree(redis_server.dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Measure remote asks to domain actors through Redis, next to a plain Redis round trip (PING).

    python scripts/bench_actors_remote.py [--asks 2000] [--callers 50] [--per-caller 200]

Run from the repository root (it uses the test helpers in ``tests/support.py``).
It starts a real redis-server and an *owner* process that serves remote calls
(``RedisRemoteCalls.serve``) for a counter actor; this process is the caller.
In the same run, over the same Redis:

* ``ping``: sequential ``PING`` round trips through the same Redis link (redis-py, a
  connection of its own, as the calls' reader and sender have);
* ``remote ask``: sequential asks (one caller, one actor), each waiting for its
  reply: p50/p99 latency and the p50 ratio to the PING round trip (target <= 3x);
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

from flamigo_actors.backplane.actor_calls import RedisRemoteCalls  # noqa: E402
from flamigo_actors.backplane.link import RedisLink  # noqa: E402
from tests.support import RedisServer, free_port, need_binary  # noqa: E402

OWNER = """
from gevent import monkey
monkey.patch_all()
import sys, gevent
from gevent.event import AsyncResult
from flamigo_actors.backplane.link import RedisLink
from flamigo_actors.backplane.actor_calls import RedisRemoteCalls

counters = {}

def handler(kind, key, method, args, kwargs, want_reply):
    result = AsyncResult()
    counters[key] = counters.get(key, 0) + args[0]
    result.set(counters[key])
    return result

link = RedisLink(sys.argv[1]); link.start()
calls = RedisRemoteCalls(link, "bench-owner")
calls.serve(handler)
print("ready", flush=True)
gevent.sleep(24 * 3600)  # until the benchmark terminates us
"""


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
    owner = subprocess.Popen([sys.executable, "-c", OWNER, redis_server.url], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": ROOT})
    link = RedisLink(redis_server.url)
    calls = None
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        link.start()
        calls = RedisRemoteCalls(link, "bench-caller")

        def ask(key: str) -> object:
            return calls.call("bench-owner", "counter", key, "add", (1,), {},  # type: ignore[union-attr]
                              want_reply=True, timeout=10).get(timeout=20)

        pinger = link.dedicated()  # one connection of its own, like the calls' reader and sender
        for _ in range(200):  # warm up both sides (scripts, connections, code paths)
            ask("warm")
            pinger.ping()
        pings, asks = [], []
        for _ in range(options.asks):  # interleaved: both see the same machine state
            started = time.perf_counter()
            pinger.ping()
            pings.append(time.perf_counter() - started)
            started = time.perf_counter()
            ask("one")
            asks.append(time.perf_counter() - started)

        def caller(n: int) -> None:
            for _ in range(options.per_caller):
                ask(f"k{n}")

        started = time.perf_counter()
        gevent.joinall([gevent.spawn(caller, n) for n in range(options.callers)], raise_error=True)
        elapsed = time.perf_counter() - started
        total = options.callers * options.per_caller
        ping, remote = summary(pings), summary(asks)
        results = {
            "ping": ping,
            "remote_ask": remote,
            "ratio_p50": round(remote["p50_us"] / ping["p50_us"], 2),
            "ratio_p99": round(remote["p99_us"] / ping["p99_us"], 2),
            "throughput": {"callers": options.callers, "asks": total,
                           "calls_per_s": round(total / elapsed), "seconds": round(elapsed, 3)},
            "target": "remote ask p50 <= 3x PING p50",
        }
        print(f"PING round trip      p50 {ping['p50_us']:8.1f} us  p99 {ping['p99_us']:8.1f} us")
        print(f"remote ask (1 -> 1)  p50 {remote['p50_us']:8.1f} us  p99 {remote['p99_us']:8.1f} us  "
              f"= {results['ratio_p50']}x PING at p50, {results['ratio_p99']}x at p99 (target <= 3x at p50)")
        print(f"throughput           {results['throughput']['calls_per_s']} calls/s "
              f"({options.callers} callers x {options.per_caller} asks, {elapsed:.2f} s)")
        print(json.dumps(results))
        if options.json:
            with open(options.json, "w", encoding="utf-8") as handle:
                json.dump(results, handle, indent=2)
        return 0
    finally:
        if calls is not None:
            calls.close()
        link.close()
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

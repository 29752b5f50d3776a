"""Domain-actor benchmark: memory per idle activated actor, and asks/s against Pykka.

Runs in one process under gevent (monkey-patched, like a server):

* ``--memory N``: activates N trivial domain actors (one message each, then
  idle), and reports the RSS growth per actor and activations per second.
  The issue's target: 1,000,000 activated idle actors at <= 2 KiB RSS each.
* ``--asks``: asks/s to local domain actors against plain
  ``pykka.ThreadingActor`` asks (``ref.ask(message)``) in the same run, for
  many callers x many actors and for 1 caller x 1 actor, reported as ratios
  (target >= 1.5x Pykka).

    python scripts/bench_actors.py                       # --memory 100000 --asks
    python scripts/bench_actors.py --memory 1000000
    python scripts/bench_actors.py --asks --json
    python scripts/bench_actors.py --remote [--asks 2000]  # two processes on Redis: scripts/bench_actors_remote.py
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gevent  # noqa: E402
import psutil  # noqa: E402
import pykka  # noqa: E402

from flamigo_actors import DomainActor  # noqa: E402
from flamigo_actors.runtime.actor_space import ActorSpace  # noqa: E402

BATCH = 1000


class Trivial(DomainActor):
    """The smallest useful actor: a counter."""

    kind = "bench-trivial"

    def on_activate(self, key: str, state: Any) -> None:
        self.n = state or 0

    def snapshot(self) -> Any:
        return self.n

    def touch(self) -> int:
        self.n += 1
        return self.n


class PykkaCounter(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def on_receive(self, message: Any) -> Any:
        self.n += 1
        return self.n


def rss() -> int:
    return int(psutil.Process(os.getpid()).memory_info().rss)


def memory(n: int) -> dict[str, Any]:
    space = ActorSpace()
    gc.collect()
    before = rss()
    started = time.perf_counter()
    for first in range(0, n, BATCH):
        for i in range(first, min(n, first + BATCH)):
            space.get(Trivial, f"actor-{i}").tell("touch")
        gevent.sleep(0)  # let the pooled runners activate this batch
    while space.stats.activations < n:
        gevent.sleep(0.001)
    elapsed = time.perf_counter() - started
    gc.collect()
    after = rss()
    assert len(space) == n
    result = {
        "actors": n,
        "rss_growth_bytes": after - before,
        "bytes_per_actor": round((after - before) / n, 1),
        "activations_per_second": round(n / elapsed),
        "seconds": round(elapsed, 2),
    }
    space._stopped = True  # drop without storing a million snapshots
    return result


def _domain_asks(callers: int, actors: int, per_caller: int) -> float:
    space = ActorSpace()
    refs = [space.get(Trivial, f"a{i}") for i in range(actors)]
    for ref in refs:
        ref.ask("touch").get()

    def caller(c: int) -> None:
        for i in range(per_caller):
            refs[(c + i) % actors].ask("touch").get()

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(caller, c) for c in range(callers)], raise_error=True)
    elapsed = time.perf_counter() - started
    space.stop()
    return callers * per_caller / elapsed


def _pykka_asks(callers: int, actors: int, per_caller: int) -> float:
    refs = [PykkaCounter.start() for _ in range(actors)]
    for ref in refs:
        ref.ask("touch")

    def caller(c: int) -> None:
        for i in range(per_caller):
            refs[(c + i) % actors].ask("touch")

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(caller, c) for c in range(callers)], raise_error=True)
    elapsed = time.perf_counter() - started
    for ref in refs:
        ref.stop()
    return callers * per_caller / elapsed


def asks(repeat: int, quick: bool) -> dict[str, Any]:
    cases = {
        "many_callers_many_actors": (100, 100, 100 if quick else 300),
        "one_caller_one_actor": (1, 1, 5000 if quick else 20000),
    }
    out: dict[str, Any] = {}
    for name, (callers, actors, per_caller) in cases.items():
        ours, theirs = [], []
        for _ in range(repeat):  # interleaved, so drift affects both alike
            ours.append(_domain_asks(callers, actors, per_caller))
            theirs.append(_pykka_asks(callers, actors, per_caller))
        mine, pykkas = statistics.median(ours), statistics.median(theirs)
        out[name] = {
            "callers": callers,
            "actors": actors,
            "asks": callers * per_caller,
            "domain_asks_per_second": round(mine),
            "pykka_asks_per_second": round(pykkas),
            "ratio": round(mine / pykkas, 2),
        }
    return out


def main() -> int:
    if "--remote" in sys.argv[1:]:  # remote asks through Redis, with that script's own options
        sys.argv.remove("--remote")
        from scripts.bench_actors_remote import main as remote

        return remote()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory", type=int, metavar="N", help="activate N idle actors and measure RSS")
    parser.add_argument("--asks", action="store_true", help="asks/s against pykka.ThreadingActor")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per asks case (median)")
    parser.add_argument("--quick", action="store_true", help="fewer asks (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    if args.memory is None and not args.asks:
        args.memory, args.asks = 100_000, True
    report: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    if args.asks:
        report["asks"] = asks(args.repeat, args.quick)
    if args.memory:
        report["memory"] = memory(args.memory)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for name, case in report.get("asks", {}).items():
        print(
            f"{name:26} domain {case['domain_asks_per_second']:>8}/s  pykka {case['pykka_asks_per_second']:>8}/s"
            f"  ratio {case['ratio']:.2f}x  ({case['callers']} callers x {case['actors']} actors)"
        )
    if "memory" in report:
        m = report["memory"]
        print(
            f"memory: {m['actors']} idle activated actors, {m['bytes_per_actor']} B RSS each, "
            f"{m['activations_per_second']} activations/s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What ``FLAMIGO_METRICS`` adds to one request, measured in-process (no sockets, no noise from them).

Times the work the request path does only with metrics on: the mailbox-wait
clock read in the reader, the two in the connection actor, the meter's two
observations, and the binning of those observations (amortized: the meter
bins in batches), against the same loop without them. CPU time
(``time.thread_time``), best of ``--repeat`` runs of ``--requests`` each.

    python scripts/bench_meter.py
    PYTHONPATH=/tmp/main python scripts/bench_meter.py   # another checkout's meter

It measures the instrumentation alone; the end-to-end figure is
``scripts/bench.py --metrics --servers flamigo`` (metrics on vs off).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from time import perf_counter
from typing import Any

import gevent

YIELD_EVERY = 16
"""Requests between two yields to the hub (a server yields at least once per request)."""


class _Inbound:
    __slots__ = ("binary", "data", "limited", "queued_at")

    def __init__(self, binary: bool, data: bytes, limited: bool) -> None:
        self.binary = binary
        self.data = data
        self.limited = limited


def _run(meter: Any, n: int) -> float:
    """CPU seconds for ``n`` requests' worth of the metrics-on work (binning included)."""
    name, status = "app::echo", 200
    flush = getattr(meter, "flush", None)  # a meter that bins per observation has none
    start = time.thread_time()
    for i in range(n):
        if not i % YIELD_EVERY:
            gevent.sleep(0)  # the hub runs its callbacks (the meter's batch binning)
        inbound = _Inbound(False, b"x", False)
        inbound.queued_at = perf_counter()  # the reader
        received = perf_counter()  # the actor: the wait's end, the strategy's start
        meter.mailbox_wait(received - inbound.queued_at)
        meter.strategy_done(name, status, perf_counter() - received)
    if flush is not None:
        flush()
    return time.thread_time() - start


def _run_off(n: int) -> float:
    """The same loop with metrics off (the Inbound alone)."""
    start = time.thread_time()
    for i in range(n):
        if not i % YIELD_EVERY:
            gevent.sleep(0)
        _Inbound(False, b"x", False)
    return time.thread_time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    import flamigo_actors.ops.meter as meter_module

    on, off = [], []
    for _ in range(args.repeat):
        meter = meter_module.Meter()
        on.append(_run(meter, args.requests))
        off.append(_run_off(args.requests))
        calls = meter.strategy_calls()
        assert sum(calls.values()) == args.requests, calls  # every observation counted
    best_on, best_off = min(on) / args.requests * 1e9, min(off) / args.requests * 1e9
    print(json.dumps({
        "meter": meter_module.__file__,
        "ns_per_request_on": round(best_on, 1),
        "ns_per_request_off": round(best_off, 1),
        "ns_added_by_metrics": round(best_on - best_off, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())

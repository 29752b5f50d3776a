"""Routing micro-benchmark: publish cost with 10 vs 100,000 unrelated subscriptions.

Runs in one process, through the real bus: a Flask app with the Flamigo
extension, its bus actor, and one in-process listener subscribed to
``rooms/bench``. Around it, N *unrelated* subscriptions (exact topics, middle
and trailing wildcards, on other branches of the trie) that never match.
Each repetition publishes ``events`` chat-like client events to
``rooms/bench`` (each is validated, encoded once, routed by the trie and
delivered to the listener's actor) and waits until the listener has them all.

Reported per case: microseconds per publish (median of the repetitions),
plus the cost of the trie lookup alone. The bus issue expects the
100,000-subscription case within 2x of the 10-subscription case.

    python scripts/bench_routing.py              # 10 vs 100,000
    python scripts/bench_routing.py --quick      # 10 vs 10,000, fewer events
    python scripts/bench_routing.py --json       # one JSON document on stdout
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gevent  # noqa: E402
from flask import Flask  # noqa: E402

from flamigo_actors import ClientMessageEvent, Flamigo  # noqa: E402
from flamigo_actors.core.topics import Topic  # noqa: E402


BATCH = 500


class Unrelated:
    """A subscriber that is never delivered to (its patterns never match the benchmark's topic)."""

    urn = "bench:unrelated"

    def deliver(self, event: object, frame: Any, identity: Any, waiter: Any) -> bool:
        raise AssertionError(f"an unrelated subscription received {event!r}: the trie is wrong")

    def describe(self) -> str:
        return "bench:unrelated"


def unrelated_patterns(n: int) -> list[str]:
    """``n`` patterns spread like a real app's: per-user, per-room, wildcard branches."""
    patterns = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            patterns.append(f"user/{i}")
        elif kind == 1:
            patterns.append(f"rooms/r{i}")  # a sibling of rooms/bench: same trie node
        elif kind == 2:
            patterns.append(f"tenants/{i}/*")
        else:
            patterns.append(f"*/x{i}")  # a middle wildcard on the root: visited by every lookup
    return patterns


def measure(subscriptions: int, events: int, repeats: int) -> dict[str, Any]:
    app = Flask(f"bench_routing_{subscriptions}")
    flamigo = Flamigo(app)
    bus = flamigo.bus
    bus.start()
    received = 0
    done = gevent.event.Event()
    target = 0

    def listener(ctx: Any, event: Any) -> None:
        nonlocal received
        received += 1
        if received >= target:
            done.set()

    bus.subscribe(listener, "rooms/bench", name="bench")
    sink = Unrelated()
    subscription = bus.subscription(sink)
    for pattern in unrelated_patterns(subscriptions):
        subscription.add(pattern)
    gc.collect()
    payload = {"room": "bench", "user": "bench", "text": "hello", "ts": 0.0}
    per_publish = []
    for _ in range(repeats + 1):  # the first round warms up and is not counted
        received = 0
        start = time.perf_counter()
        # Batches keep the listener's mailbox under its bound (a refusal would be logged).
        for first in range(0, events, BATCH):
            target = min(events, first + BATCH)
            done.clear()
            for _ in range(first, target):
                bus.publish(ClientMessageEvent(("rooms/bench",), "chat:message", payload))
            if not done.wait(timeout=60):
                break
        elapsed = time.perf_counter() - start
        if received != events:
            raise RuntimeError(f"the listener got {received} of {events} events")
        per_publish.append(1e6 * elapsed / events)
    per_publish = per_publish[1:]
    topic = Topic("rooms/bench")
    lookups = 20000
    start = time.perf_counter()
    for _ in range(lookups):
        bus._trie.match(topic)
    lookup_us = 1e6 * (time.perf_counter() - start) / lookups
    entries, nodes = bus.index_size()
    flamigo.shutdown(timeout=2)
    return {
        "subscriptions": subscriptions,
        "trie_entries": entries,
        "trie_nodes": nodes,
        "events": events,
        "repeats": repeats,
        "publish_us": statistics.median(per_publish),
        "publish_us_all": per_publish,
        "lookup_us": lookup_us,
    }


def run(quick: bool = False) -> dict[str, Any]:
    small, large = 10, (10_000 if quick else 100_000)
    events, repeats = (2_000, 1) if quick else (20_000, 3)
    few = measure(small, events, repeats)
    many = measure(large, events, repeats)
    return {
        "few": few,
        "many": many,
        "ratio": many["publish_us"] / few["publish_us"],
        "lookup_ratio": many["lookup_us"] / few["lookup_us"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 vs 10,000 subscriptions, fewer events")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    result = run(args.quick)
    if args.json:
        print(json.dumps(result))
        return 0
    for case in ("few", "many"):
        r = result[case]
        print(
            f"{r['subscriptions']:>7} unrelated subscriptions: {r['publish_us']:7.2f} us per publish "
            f"(trie lookup {r['lookup_us']:.2f} us)"
        )
    print(f"ratio many/few: {result['ratio']:.2f}x (target <= 2x); lookup {result['lookup_ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Counting what a server holds: actors, greenlets, connections, subscriptions, memory.

Leak tests take a :func:`quiet_census` before hammering a server and check
with :func:`back_to_baseline` that the countable things return to it once
every client is gone (memory is checked against a stated bound instead).
"""

from __future__ import annotations

import os
from typing import Any

import psutil
import pykka

from flamigo_actors.runtime.engine import live_greenlets
from tests.support import eventually

COUNTED = ("actors", "greenlets", "connections", "subscriptions", "trie_entries")
OWN = ("connections", "subscriptions", "trie_entries")
PROCESS_WIDE = ("actors", "greenlets")


def greenlet_count() -> int:
    """How many greenlets are alive in this thread."""
    return len(live_greenlets())


def greenlet_names() -> list[str]:
    """What each live greenlet runs (to name a leak)."""
    names = []
    for obj in live_greenlets():
        run = getattr(obj, "_run", None) or getattr(obj, "run", None)
        names.append(getattr(run, "__qualname__", None) or repr(obj))
    return sorted(names)


def rss() -> int:
    """This process's resident set size in bytes."""
    return int(psutil.Process(os.getpid()).memory_info().rss)


def census(flamigo: Any) -> dict[str, Any]:
    """Everything a server holds that must not grow with the clients it served."""
    entries, _nodes = flamigo.bus.index_size()
    return {
        "names": greenlet_names(),
        "actors": len(pykka.ActorRegistry.get_all()),
        "greenlets": greenlet_count(),
        "connections": len(flamigo.connections),
        "subscriptions": len(flamigo.bus.subscriptions()),
        "trie_entries": entries,
    }


def quiet_census(flamigo: Any, connections: int, timeout: float = 10.0) -> dict[str, Any]:
    """A baseline: once ``connections`` clients remain and nothing is still winding down.

    Connections that ended just before (their actors, handler greenlets)
    would otherwise inflate the baseline and hide a leak of the same size.
    """
    previous: dict[str, Any] = {}

    def quiet() -> bool:
        nonlocal previous
        current = census(flamigo)
        same = current["connections"] == connections and all(
            previous.get(key) == current[key] for key in COUNTED
        )
        previous = current
        return same

    try:
        eventually(quiet, timeout=timeout, interval=0.1)
    except AssertionError:
        # Something else in the process keeps churning: the latest census will do
        # (back_to_baseline only requires the process-wide counts not to grow).
        if previous.get("connections") != connections:
            raise
    return previous


def back_to_baseline(flamigo: Any, baseline: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Wait until every counted thing is back at ``baseline``; return the last census.

    Raises:
        AssertionError: naming what stayed above the baseline.
    """
    last: dict[str, Any] = {}

    def settled() -> bool:
        nonlocal last
        last = census(flamigo)
        # This server's own tables must be exactly back; the process-wide counts
        # (actors, greenlets) only must not have grown: a server left by an
        # earlier test may finish winding down meanwhile.
        return all(last[key] == baseline[key] for key in OWN) and all(
            last[key] <= baseline[key] for key in PROCESS_WIDE
        )

    try:
        eventually(settled, timeout=timeout, interval=0.05)
    except AssertionError:
        grown = {
            k: (baseline[k], last[k])
            for k in COUNTED
            if last[k] > baseline[k] or (k in OWN and last[k] != baseline[k])
        }
        raise AssertionError(
            f"not back to the baseline (before, after): {grown}; greenlets before: "
            f"{baseline.get('names')}, after: {greenlet_names()}"
        ) from None
    return last

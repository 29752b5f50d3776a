"""Snapshots of a running application: actors, connections, subscriptions, counters.

The same functions feed the debug shell, ``flask shell``, the JSON inspection
endpoint and the live dashboard. Each returns plain data (lists of dicts);
a :class:`Table` is a list that prints as a readable table in a REPL.
"""

from __future__ import annotations

import ipaddress
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import pykka

from ..runtime.engine import live_actor

if TYPE_CHECKING:
    from .host import Host

__all__ = [
    "Stats",
    "Table",
    "actors",
    "connections",
    "is_loopback",
    "stats",
    "subscriptions",
]


class Table(list):  # type: ignore[type-arg]
    """A list of row dicts that prints as an aligned text table."""

    def __init__(self, rows: Iterable[dict[str, Any]], columns: list[str] | None = None) -> None:
        super().__init__(rows)
        self.columns = columns

    def __repr__(self) -> str:
        if not self:
            return "(none)"
        columns = self.columns or list(self[0].keys())
        cells = [[_cell(row.get(c)) for c in columns] for row in self]
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
        lines.append("  ".join("-" * w for w in widths))
        lines.extend("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells)
        lines.append(f"({len(self)} rows)")
        return "\n".join(lines)

    __str__ = __repr__


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return str(value.get("username") or value.get("id") or value)
    return str(value)


def actors(flamigo: Host | None = None) -> Table:
    """Every live Pykka actor: kind, urn, alive, mailbox depth, age in seconds; then, given
    the application, its domain actors (see :func:`domain_actors`)."""
    now = time.time()
    rows = []
    for ref in pykka.ActorRegistry.get_all():
        actor = live_actor(ref.actor_urn)
        started = getattr(actor, "started_at", None)
        rows.append(
            {
                "kind": getattr(ref.actor_class, "kind", ref.actor_class.__name__),
                "urn": ref.actor_urn,
                "class": ref.actor_class.__name__,
                "alive": ref.is_alive(),
                "mailbox": ref.actor_inbox.qsize(),  # type: ignore[attr-defined]
                "age": round(now - started, 1) if started else None,
            }
        )
    rows.sort(key=lambda r: (r["kind"], -(r["age"] or 0)))
    if flamigo is None:
        return Table(rows, ["kind", "urn", "alive", "mailbox", "age"])
    rows.extend(domain_actors(flamigo))
    return Table(rows, ["kind", "urn", "alive", "mailbox", "age", "owner", "restarts", "idle"])


def domain_actors(flamigo: Host) -> Table:
    """Every domain-actor activation of this process: kind, key, owner node, mailbox depth,
    restarts, activated at and last message at (``time.time()`` values), age and idle seconds."""
    now = time.time()
    rows = []
    for row in flamigo.actors.describe():
        activated, last = row["activated_at"], row["last_message_at"]
        row.update(
            urn=f"{row['kind']}:{row['key']}",
            alive=activated is not None,
            age=round(now - activated, 1) if activated else None,
            idle=round(now - last, 1),
        )
        rows.append(row)
    rows.sort(key=lambda r: (r["kind"], r["key"]))
    return Table(rows, ["kind", "key", "owner", "mailbox", "restarts", "activated_at", "last_message_at"])


def domain_kinds(flamigo: Host) -> list[dict[str, Any]]:
    """Per domain-actor kind: activations, messages queued in all, the deepest mailbox."""
    kinds: dict[str, dict[str, Any]] = {}
    for name, count in flamigo.actors.counts().items():
        kinds[name] = {"kind": name, "count": count, "mailbox": 0, "max_mailbox": 0}
    for row in flamigo.actors.busiest(None):
        entry = kinds[row["kind"]]
        entry["mailbox"] += row["mailbox"]
        entry["max_mailbox"] = max(entry["max_mailbox"], row["mailbox"])
    return list(kinds.values())


def domain_summary(flamigo: Host, busiest: int = 10) -> dict[str, Any]:
    """Domain actors at a glance: counters, activations per kind, the busiest mailboxes."""
    space = flamigo.actors
    redis_parts = getattr(space.remote, "snapshot", None)  # with FLAMIGO_REDIS_URL: the Redis parts
    return {
        **space.stats.as_dict(),
        "active": len(space),
        "per_kind": space.counts(),
        "busiest": space.busiest(busiest),
        # With Redis: remote calls (counts, p50/p99 latency), leases, the link.
        "redis": redis_parts() if redis_parts is not None else None,
    }


def connections(flamigo: Host) -> Table:
    """Every connection: id, remote, user, subscriptions, mailbox and outbound depth, counters.

    ``mailbox`` counts the requests and pushes waiting behind the one being
    handled: a strategy that holds its connection's actor shows up here.
    ``age`` is seconds since ``connected_at`` (a ``time.time()`` value).
    """
    now = time.time()
    rows = []
    for connection in list(flamigo.connections.values()):
        row = connection.client.info()
        row["age"] = round(now - row["connected_at"], 1)
        rows.append(row)
    rows.sort(key=lambda r: r["connected_at"])
    return Table(
        rows,
        ["id", "remote", "user", "state", "subscriptions", "mailbox", "outbound",
         "messages_in", "messages_out", "age"],
    )


def subscriptions(flamigo: Host) -> Table:
    """Every pattern with its subscribers."""
    rows = [{"pattern": p, "subscribers": subs} for p, subs in flamigo.bus.patterns()]
    return Table(rows, ["pattern", "subscribers"])


class Stats(dict):  # type: ignore[type-arg]
    """The counters of :func:`stats`: a plain dict that prints as a readable list."""

    def __repr__(self) -> str:
        rates = self.get("rates_per_second") or {}
        shown = [(k, _cell(v)) for k, v in self.items() if k not in ("rates_per_second", "rate_window")]
        if not shown:
            return "(none)"
        key_width = max(len(k) for k, _ in shown)
        value_width = max(len(v) for _, v in shown)
        lines = []
        for key, value in shown:
            line = f"{key.ljust(key_width)}  {value.rjust(value_width)}"
            if key in rates:
                line += f"  {rates[key]:.1f}/s"
            lines.append(line)
        if "rate_window" in self:
            lines.append(f"(rates over the last {self['rate_window']:.1f} s)")
        return "\n".join(lines)

    __str__ = __repr__


class _Rates:
    """Per-second rates of growing counters, over the last second or more.

    Several readers (a shell, the dashboard polling every second) share one
    history of samples, so one reader's calls do not shorten another's
    window. The first reading is the average since the application started.
    """

    MIN_WINDOW = 1.0
    """Rates are measured over at least this many seconds when history allows."""
    SPACING = 0.25
    """Samples closer together than this are not kept (bounds the history)."""

    def __init__(self, started: float, clock: Callable[[], float] = time.monotonic) -> None:
        # (clock time, totals), oldest first; counters were all zero at start.
        self._samples: deque[tuple[float, dict[str, int]]] = deque([(started, {})])
        self._clock = clock

    def __call__(self, totals: dict[str, int]) -> tuple[dict[str, float], float]:
        """Rates of ``totals`` and the window in seconds they were measured over."""
        now = self._clock()
        samples = self._samples
        # Start the window at the newest sample that is at least MIN_WINDOW old;
        # older ones are no longer needed (so at most ~MIN_WINDOW/SPACING remain).
        while len(samples) > 1 and now - samples[1][0] >= self.MIN_WINDOW:
            samples.popleft()
        since, before = samples[0]
        if now - samples[-1][0] >= self.SPACING:
            samples.append((now, dict(totals)))
        window = now - since
        if window <= 0:
            return {k: 0.0 for k in totals}, 0.0
        rates = {k: round((v - before.get(k, 0)) / window, 1) for k, v in totals.items()}
        return rates, round(window, 1)


_rates: weakref.WeakKeyDictionary[Host, _Rates] = weakref.WeakKeyDictionary()


def stats(flamigo: Host) -> Stats:
    """Counts and rates: connections, messages in/out per second, events published/delivered/refused.

    ``"backplane"`` holds the Redis backplane's state and counters (``None`` without one).
    """
    bus, own = flamigo.bus.stats, flamigo.stats
    totals = {
        "messages_in": own.messages_in,
        "messages_out": own.messages_out,
        "events_published": bus.published,
        "events_delivered": bus.delivered,
        "events_refused": bus.refused,
    }
    sampler = _rates.get(flamigo)
    if sampler is None:
        uptime = max(0.0, time.time() - flamigo.started_at)
        sampler = _rates[flamigo] = _Rates(time.monotonic() - uptime)
    rates, window = sampler(totals)
    entries, nodes = flamigo.bus.index_size()
    live = list(flamigo.connections.values())
    return Stats(
        {
            "connections": len(live),
            "authenticated": sum(1 for c in live if c.client.user),
            "actors": len(pykka.ActorRegistry.get_all()),
            **totals,
            "listener_errors": bus.listener_errors,
            "deadlocks_refused": bus.deadlocks,
            "bus_restarts": bus.restarts,
            "bus_mailbox": flamigo.bus.mailbox_depth(),
            "remote_events_received": bus.remote_received,
            "subscription_entries": entries,
            "trie_nodes": nodes,
            "connections_opened": own.connections_opened,
            "connections_closed": own.connections_closed,
            "connections_refused": own.connections_refused,
            "slow_consumers": own.slow_consumers,
            "frames_dropped": own.frames_dropped,
            "rate_limited": own.rate_limited,
            "rates_per_second": rates,
            "rate_window": window,
            "backplane": None if flamigo.bus.backplane is None else flamigo.bus.backplane.snapshot(),
            "domain_actors": domain_summary(flamigo),
            "uptime": round(time.time() - flamigo.started_at, 1),
        }
    )


def is_loopback(address: str | None) -> bool:
    """Whether ``address`` is a loopback address.

    Accepts an IP (``127.0.0.1``, ``::1``), an IP with a port
    (``127.0.0.1:5001``, ``[::1]:5001``) or ``localhost``. IPv4-mapped IPv6
    addresses (``::ffff:127.0.0.1``) count as their IPv4 address; any other
    host name does not count (it could resolve anywhere).
    """
    if not address:
        return False
    host = address.strip()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool((mapped or ip).is_loopback)


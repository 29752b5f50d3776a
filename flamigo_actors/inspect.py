"""Snapshots of a running application: actors, connections, subscriptions, counters.

The same functions feed the debug shell, ``flask shell``, the JSON inspection
endpoint and the live dashboard. Each returns plain data (lists of dicts);
a :class:`Table` is a list that prints as a readable table in a REPL.
"""

from __future__ import annotations

import ipaddress
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pykka

from .engine import live_actor

if TYPE_CHECKING:
    from flask import Flask

    from .extension import Flamigo

__all__ = [
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


def actors() -> Table:
    """Every live Pykka actor: kind, urn, alive, mailbox depth, age in seconds."""
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
                "mailbox": ref.actor_inbox.qsize(),
                "age": round(now - started, 1) if started else None,
            }
        )
    rows.sort(key=lambda r: (r["kind"], -(r["age"] or 0)))
    return Table(rows, ["kind", "urn", "alive", "mailbox", "age"])


def connections(flamigo: Flamigo) -> Table:
    """Every connection: id, remote, user, subscriptions, mailbox and outbound depth, counters."""
    rows = [connection.client.info() for connection in list(flamigo.connections.values())]
    rows.sort(key=lambda r: r["connected_at"])
    return Table(
        rows,
        ["id", "remote", "user", "subscriptions", "mailbox", "outbound",
         "messages_in", "messages_out", "connected_at"],
    )


def subscriptions(flamigo: Flamigo) -> Table:
    """Every pattern with its subscribers."""
    rows = [{"pattern": p, "subscribers": subs} for p, subs in flamigo.bus.patterns()]
    return Table(rows, ["pattern", "subscribers"])


class _Rates:
    """Turns monotonically growing counters into per-second rates between calls."""

    def __init__(self) -> None:
        self._last: tuple[float, dict[str, int]] | None = None

    def __call__(self, totals: dict[str, int]) -> dict[str, float]:
        now = time.monotonic()
        last, self._last = self._last, (now, totals)
        if last is None or now - last[0] <= 0:
            return {k: 0.0 for k in totals}
        elapsed = now - last[0]
        return {k: round((v - last[1].get(k, 0)) / elapsed, 1) for k, v in totals.items()}


_rates: weakref.WeakKeyDictionary[Flamigo, _Rates] = weakref.WeakKeyDictionary()


def stats(flamigo: Flamigo) -> dict[str, Any]:
    """Counts and rates: connections, messages in/out per second, events published/delivered/refused.

    ``"backplane"`` holds the Redis backplane's state and counters (``None`` without one).
    """
    bus, own = flamigo.bus.stats, flamigo.stats
    totals = {
        "messages_in": own.messages_in,
        "messages_out": own.messages_out,
        "events_published": bus.published,
        "events_delivered": bus.delivered,
    }
    rates = _rates.setdefault(flamigo, _Rates())(totals)
    entries, nodes = flamigo.bus.index_size()
    return {
        "connections": len(flamigo.connections),
        "authenticated": sum(1 for c in list(flamigo.connections.values()) if c.client.user),
        "actors": len(pykka.ActorRegistry.get_all()),
        **totals,
        "events_refused": bus.refused,
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
        "rate_limited": own.rate_limited,
        "rates_per_second": rates,
        "backplane": None if flamigo.bus.backplane is None else flamigo.bus.backplane.snapshot(),
        "uptime": round(time.time() - flamigo.started_at, 1),
    }


def is_loopback(address: str | None) -> bool:
    """Whether ``address`` (an IP, maybe with a port) is a loopback address."""
    if not address:
        return False
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 else address
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def shell_namespace(flamigo: Flamigo, *, live: bool) -> dict[str, Any]:
    """Names offered by ``flask shell`` (``live=False``) and the debug shell."""
    from .shell import namespace

    return namespace(flamigo, live=live)


def register_inspection(flamigo: Flamigo, app: Flask) -> None:
    """Mount the JSON endpoint and the dashboard when ``FLAMIGO_INSPECT_ENABLED`` is set."""
    if not flamigo.settings.inspect_enabled:
        return
    from .dashboard import register

    register(flamigo, app)

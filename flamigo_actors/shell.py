"""The debug shell's namespace: the app, its extension, the bus, the registry and helpers.

Used by ``flask shell`` (offline: no live connections) and by the backdoor
shell attached to a running server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pykka

from . import inspect
from .events import ClientMessageEvent
from .identity import BackendIdentity

if TYPE_CHECKING:
    from .extension import Flamigo

__all__ = ["namespace"]


def namespace(flamigo: Flamigo, *, live: bool) -> dict[str, Any]:
    """The names a debug shell offers for ``flamigo``'s application.

    Args:
        live: True inside a running server (adds ``connections`` and ``kick``).
    """

    def actors() -> inspect.Table:
        """Every live Pykka actor: kind, urn, alive, mailbox depth, age."""
        return inspect.actors()

    def subscriptions() -> inspect.Table:
        """Every topic pattern with its subscribers."""
        return inspect.subscriptions(flamigo)

    def stats() -> dict[str, Any]:
        """Counts and per-second rates of connections, messages and events."""
        return inspect.stats(flamigo)

    def call(name: str, payload: Any = None) -> Any:
        """Run strategy ``name`` as the backend identity and return its result."""
        return flamigo.call(name, payload, identity=BackendIdentity("shell"))

    def publish(client_topic: str, payload: Any, topic: str | list[str] = "*") -> None:
        """Push a client event ``(client_topic, payload)`` to subscribers of ``topic``."""
        topics = (topic,) if isinstance(topic, str) else tuple(topic)
        if "*" in topics:
            raise ValueError("publish needs a concrete topic such as 'rooms/lobby' (not '*')")
        flamigo.publish(
            ClientMessageEvent(topics, client_topic, payload), identity=BackendIdentity("shell")
        )

    names: dict[str, Any] = {
        "app": flamigo.app,
        "flamigo": flamigo,
        "bus": flamigo.bus,
        "ActorRegistry": pykka.ActorRegistry,
        "actors": actors,
        "subscriptions": subscriptions,
        "stats": stats,
        "call": call,
        "publish": publish,
    }
    if live:

        def connections() -> inspect.Table:
            """Every connection: id, remote, user, subscriptions, mailbox, outbound, counters."""
            return inspect.connections(flamigo)

        def kick(conn_id: str, reason: str = "kicked") -> bool:
            """Close connection ``conn_id``; its disconnected event fires. False if unknown."""
            return flamigo.kick(conn_id, reason)

        names["connections"] = connections
        names["kick"] = kick
    return names

"""The connection-facing half of the :class:`~flamigo_actors.Flamigo` extension.

:class:`ConnectionsMixin` is what an app sees of its live WebSocket
connections: lifecycle hooks, the registry, counters, admission, kick. Each
member delegates to the extension's :class:`~flamigo_actors.websocket.hub.Hub`
(``self.hub``), which owns the behaviour and documents its guarantees; this
module only keeps the extension class small enough to read.
"""

from __future__ import annotations

from typing import Any

from ..websocket.client import WebsocketClient
from ..websocket.connection import Connection
from ..websocket.hub import KICKED, FlamigoStats, Hook, Hub
from ..websocket.transport import SocketTransport

__all__ = ["ConnectionsMixin"]


class ConnectionsMixin:
    """Hooks and live connections of a :class:`~flamigo_actors.Flamigo` (needs ``self.hub``)."""

    hub: Hub

    def on_connect(self, hook: Hook) -> Hook:
        """Run ``hook(client)`` in the connection's actor when a client connects.

        A hook that raises closes the connection with 1011; its ``Connected``
        event is then never published, and no ``Disconnected`` either
        (``on_disconnect`` hooks still run).
        """
        self.hub.hooks["connect"].append(hook)
        return hook

    def on_authenticated(self, hook: Hook) -> Hook:
        """Run ``hook(client)`` when a client authenticates (e.g. subscribe it to ``user/<id>``)."""
        self.hub.hooks["authenticated"].append(hook)
        return hook

    def on_disconnect(self, hook: Hook) -> Hook:
        """Run ``hook(client)`` once when a client's connection has ended, however it ended."""
        self.hub.hooks["disconnect"].append(hook)
        return hook



    @property
    def connections(self) -> dict[str, Any]:
        """The live connections by id (the hub's registry)."""
        return self.hub.connections

    @property
    def stats(self) -> FlamigoStats:
        """Counters of the WebSocket interface (the hub's)."""
        return self.hub.stats

    @property
    def heartbeat_frames(self) -> tuple[bytes, bytes] | None:
        """The heartbeat a connection's reader answers itself (``None``: the app's own ping)."""
        return self.hub.heartbeat_frames

    def admit(self, environ: dict[str, Any]) -> tuple[int, str] | None:
        """Decide on an upgrade before the handshake: ``None`` or ``(status, message)``."""
        return self.hub.admit(environ)

    def serve_websocket(self, transport: SocketTransport) -> None:
        """Serve an upgraded WebSocket until it ends.

        The WebSocket handler calls this directly for upgrades at
        ``FLAMIGO_WS_PATH`` (unless ``FLAMIGO_WS_DIRECT`` is false, when the
        Flask route's view does).
        """
        Connection(self.hub, transport).run()

    def clients(self) -> list[WebsocketClient]:
        """Every connected client."""
        return self.hub.clients()

    def kick(self, conn_id: str, reason: str = "kicked", code: int = KICKED) -> bool:
        """Close connection ``conn_id`` (close code 4000 by default); False if unknown."""
        return self.hub.kick(conn_id, reason, code)


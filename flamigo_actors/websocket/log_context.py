"""The log context of the WebSocket layer: which connection, user, strategy and ackId a log line is about.

:func:`connection_fields` is the provider :func:`flamigo_actors.core.logs.set_context_provider`
takes. It runs only when a JSON log line is written (never per message): a
line logged by a connection's actor gets that connection's id, its user's id,
the strategy being served and its ``ackId``; other lines get nothing. It
never raises.
"""

from __future__ import annotations

from typing import Any

from ..runtime.engine import current_actor

__all__ = ["connection_fields"]


def connection_fields() -> dict[str, Any] | None:
    """The fields of the connection whose actor runs in this greenlet, or ``None``."""
    actor = current_actor()
    connection = getattr(actor, "connection", None)
    client = getattr(connection, "client", None)
    if client is None:
        return None
    user = client.user
    return {
        "conn_id": client.conn_id,
        "user_id": user.id if user is not None else None,
        "strategy": getattr(actor, "strategy", None),
        "ack_id": client.ack_id,
    }

"""The client of a WebSocket connection: its state and its identity.

:class:`WebsocketClient` is what strategies and hooks see as ``ctx.identity``
for a request that came over WebSocket. It holds the connection's user and
counters; its :attr:`~WebsocketClient.state` is read from the connection's
:class:`~flamigo_actors.websocket.lifecycle.Lifecycle` (the one owner of that
state). Operations (subscribe, authenticate, close) are forwarded to the
connection through the small :class:`ClientConnection` Protocol.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any, Protocol

from ..core.errors import FlamigoError
from ..core.events import UserAuthenticated
from ..core.identity import WEBSOCKET, User
from ..core.topics import Topic
from .lifecycle import Lifecycle, State

__all__ = ["ClientConnection", "WebsocketClient"]

# Connection ids: short, unique in this process, and unique across processes
# sharing a backplane (the pid prefix).
_ids = itertools.count(1)
_ID_PREFIX = f"{os.getpid():x}"


def _new_conn_id() -> str:
    return f"c{_ID_PREFIX}-{next(_ids)}"


class ClientConnection(Protocol):
    """What a :class:`WebsocketClient` needs from its connection."""

    lifecycle: Lifecycle
    subscription: Any
    session: Any
    outbound: Any
    hub: Any

    def close(self, code: int, reason: str, *, flush: bool) -> None: ...

    def mailbox_depth(self) -> int: ...


class WebsocketClient:
    """A WebSocket client: the connection's state and its identity (type ``"websocket"``).

    This is ``ctx.identity`` in a strategy served over WebSocket and the
    argument of the ``on_connect`` / ``on_authenticated`` / ``on_disconnect``
    hooks, where an application subscribes clients to its topics.

    Attributes:
        conn_id: unique id of the connection (``c1f2a-17``).
        remote_addr: the peer's ``host:port``.
        connected_at: ``time.time()`` of the upgrade.
        state: ``"connected"``, ``"closing"`` or ``"closed"``.
        messages_in: frames received.
        messages_out: frames sent (replies, errors, pushes).
        ack_id: the ``ackId`` of the request being served, if it had one.
    """

    __slots__ = (
        "_connection", "conn_id", "remote_addr", "connected_at", "_user",
        "messages_in", "messages_out", "ack_id", "close_code", "close_reason", "__weakref__",
    )

    def __init__(self, connection: ClientConnection, remote_addr: str) -> None:
        self._connection = connection
        self.conn_id = _new_conn_id()
        self.remote_addr = remote_addr
        self.connected_at = time.time()
        self._user: User | None = None
        self.messages_in = 0
        self.messages_out = 0
        self.ack_id: Any = None
        self.close_code: int | None = None
        self.close_reason: str | None = None

    def __repr__(self) -> str:
        user = f" user={self._user.id}" if self._user else ""
        return f"<WebsocketClient {self.conn_id} {self.remote_addr}{user} {self.state}>"

    @property
    def state(self) -> str:
        """``"connected"``, ``"closing"`` or ``"closed"`` (read from the connection's lifecycle)."""
        return self._connection.lifecycle.coarse

    @property
    def type(self) -> str:
        """Always ``"websocket"``."""
        return WEBSOCKET

    @property
    def user(self) -> User | None:
        """The authenticated user, or ``None`` before ``app::websocket:auth`` succeeds."""
        return self._user

    @property
    def authenticated(self) -> bool:
        """Whether a user is authenticated on this connection."""
        return self._user is not None

    @property
    def subscriptions(self) -> list[str]:
        """The topic patterns this client receives pushes for."""
        sub = self._connection.subscription
        return sorted(sub.patterns) if sub is not None else []

    def subscribe(self, *patterns: str) -> None:
        """Receive the client events published to ``patterns`` (``"rooms/lobby"``, ``"user/42"``).

        Raises:
            TopicError: a pattern is malformed.
            RuntimeError: the connection has ended.
        """
        connection = self._connection
        if connection.lifecycle.state is State.CLOSED:
            raise RuntimeError(f"connection {self.conn_id} has ended; cannot subscribe")
        validated = [Topic(p) for p in patterns]
        if connection.subscription is None:
            connection.subscription = connection.hub.subscription(connection)
        connection.subscription.add(*validated)
        if connection.session is not None:  # opted in to recovery: record recoverable topics
            connection.session.subscribed([str(t) for t in validated])

    def unsubscribe(self, *patterns: str) -> None:
        """Stop receiving pushes for ``patterns``; unknown ones are ignored."""
        sub = self._connection.subscription
        if sub is not None:
            sub.remove(*patterns)
        if self._connection.session is not None:
            self._connection.session.unsubscribed(patterns)

    def stream_position(self, topic: str) -> dict[str, Any] | None:
        """``{"stream", "offset", "epoch"}`` of a recoverable ``topic`` this client is subscribed
        to, when it opted in to recovery (``"recover": true``); else None.

        What a subscribe strategy returns so that a client that disconnects
        before its first push can still resume (the demo's ``app::rooms:join``).
        """
        session = self._connection.session
        return session.position(topic) if session is not None else None

    def authenticate(self, user: User) -> None:
        """Mark the connection as ``user`` (done by ``app::websocket:auth``).

        Runs the ``on_authenticated`` hooks and publishes
        :class:`~flamigo_actors.core.events.UserAuthenticated` the first time.

        Raises:
            FlamigoError: 409 when another user is already authenticated here.
        """
        current = self._user
        if current is not None and current.id != user.id:
            raise FlamigoError(
                f"authenticate: already user {current.id}",
                public="already authenticated as another user: reconnect to switch users",
                status=409,
            )
        self._user = user
        if current is not None:
            return  # the same user refreshed their token
        connection = self._connection
        try:
            connection.hub.run_hooks("authenticated", self)
        except BaseException:
            self._user = None
            raise
        connection.lifecycle.authenticated()
        connection.hub.publish(UserAuthenticated(user.id, user.username, self.conn_id), identity=self)

    def close(self, code: int = 1000, reason: str = "closed by the server") -> None:
        """Close the connection after the frames already queued are sent."""
        self._connection.close(code, reason, flush=True)

    def info(self) -> dict[str, Any]:
        """Plain data describing the client (for the shell and the dashboard)."""
        conn = self._connection
        return {
            "id": self.conn_id,
            "remote": self.remote_addr,
            "user": self._user.public() if self._user else None,
            "state": self.state,
            "subscriptions": self.subscriptions,
            "mailbox": conn.mailbox_depth(),
            "outbound": conn.outbound.depth,
            "outbound_bytes": conn.outbound.pending_bytes,
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "connected_at": self.connected_at,
        }

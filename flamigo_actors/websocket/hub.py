"""The hub: every live connection of one application, and what is done to them all.

The hub owns the connection registry, admission (draining, origin
allow-list, connection rate per address), the keepalive loop (one greenlet
pings every connection and ends silent ones), kick, and the connection part
of the shutdown drain. Connections talk to it through this module's public
methods (:meth:`Hub.register`, :meth:`Hub.unregister`, :meth:`Hub.run_hooks`,
:meth:`Hub.publish`, :meth:`Hub.subscription`); the hub talks to connections
through theirs (``request_close``, ``close``, ``abort``, ``send_ping``,
``cleanup``). Package-internal: applications use the
:class:`~flamigo_actors.Flamigo` extension, which delegates here.

The hub reaches the application through a :class:`HubHost` (the extension),
a Protocol defined here so this layer never imports the Flask integration.

Guarantees: an upgrade refused by :meth:`Hub.admit` never becomes a
connection and is counted in ``connections_refused``; after :meth:`Hub.drain`
returns, every connection has ended and run its cleanup (disconnected events
fired) - a strategy that outlives the drain is logged and its connection
cleaned up from here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import gevent

from ..core.identity import Identity
from ..core.ratelimit import AddressLimiter
from ..runtime.context import ContextHost
from ..runtime.instruments import Instruments
from .client import WebsocketClient

__all__ = ["GOING_AWAY", "KICKED", "FlamigoStats", "Hook", "Hub", "HubConnection", "HubHost"]

_log = logging.getLogger("flamigo_actors")

Hook = Callable[[WebsocketClient], Any]

GOING_AWAY = 1001
"""Close code of a ping timeout and of the shutdown drain."""
KICKED = 4000
"""Default close code of :meth:`Hub.kick`."""


@dataclass
class FlamigoStats:
    """Counters of the WebSocket interface (see also :attr:`Bus.stats`)."""

    connections_opened: int = 0
    connections_closed: int = 0
    messages_in: int = 0
    """Frames received from clients."""
    messages_out: int = 0
    """Frames sent to clients (replies, errors, pushes)."""
    slow_consumers: int = 0
    """Connections closed (1013) because they did not read fast enough."""
    frames_dropped: int = 0
    """Frames (replies, pushes) that ended connections could not deliver: refused
    once closing or discarded for a slow client (see also ``Bus.stats.refused``)."""
    rate_limited: int = 0
    """Requests answered 429."""
    connections_refused: int = 0
    """Upgrades refused before the handshake (origin, rate, draining)."""
    bytes_in: int = 0
    """Bytes of the frames' payloads received (counted only with ``FLAMIGO_METRICS``)."""
    bytes_out: int = 0
    """Bytes of frames sent, headers included (counted only with ``FLAMIGO_METRICS``)."""
    refused_by_status: dict[int, int] = field(default_factory=dict)
    """``connections_refused`` by HTTP status (503 draining, 403 origin, 429 rate)."""
    closed_by_code: dict[int, int] = field(default_factory=dict)
    """``connections_closed`` by close code."""


class HubHost(ContextHost, Protocol):
    """What the hub and its connections need from the application (the extension):
    what a strategy's context needs (bus, strategies, settings, call), and more."""

    @property
    def app(self) -> Any: ...

    @property
    def auth_required(self) -> bool: ...

    @property
    def debug(self) -> bool: ...

    def publish(self, event: object, identity: Identity | None = None) -> None: ...


class HubConnection(Protocol):
    """What the hub needs from a connection (:class:`~flamigo_actors.websocket.connection.Connection`)."""

    client: WebsocketClient
    reader_paused: bool
    last_activity: float
    last_ping: float

    def close(self, code: int, reason: str, *, flush: bool) -> None: ...

    def request_close(self, code: int, reason: str) -> None: ...

    def abort(self, code: int, reason: str) -> None: ...

    def send_ping(self) -> None: ...

    def cleanup(self) -> None: ...


class Hub:
    """The live connections of one application (see the module docstring).

    Args:
        host: the application side (settings, strategies, bus, publish, call).
    """

    def __init__(self, host: HubHost) -> None:
        self.host = host
        self.connections: dict[str, HubConnection] = {}
        self.stats = FlamigoStats()
        self.hooks: dict[str, list[Hook]] = {"connect": [], "authenticated": [], "disconnect": []}
        self.heartbeat_frames: tuple[bytes, bytes] | None = None
        """The heartbeat request a connection's reader answers itself, and its reply
        (``None`` when the app registered its own ``websocket:ping``)."""
        self.draining = False
        self.instruments: Instruments | None = None
        """Histogram observation points (``FLAMIGO_METRICS``); ``None`` measures nothing."""
        self._keepalive: gevent.Greenlet | None = None
        self._address_limiter: AddressLimiter | None = None

    def configure(self, settings: Any) -> None:
        """Apply the settings that shape admission (the connect rate limit)."""
        if settings.connect_rate_limit:
            self._address_limiter = AddressLimiter(
                settings.connect_rate_limit, settings.connect_rate_burst
            )

    # -- what connections use -----------------------------------------------------

    @property
    def app(self) -> Any:
        """The Flask application (strategies and hooks run in its app context)."""
        return self.host.app

    @property
    def settings(self) -> Any:
        return self.host.settings

    @property
    def strategies(self) -> Any:
        return self.host.strategies

    @property
    def auth_required(self) -> bool:
        return self.host.auth_required

    @property
    def debug(self) -> bool:
        return self.host.debug

    def publish(self, event: object, identity: Identity | None = None) -> None:
        """Publish a lifecycle event (``Connected``, ``Disconnected``...) on the app's bus."""
        self.host.publish(event, identity=identity)

    def subscription(self, connection: HubConnection) -> Any:
        """A new bus subscription delivering client events to ``connection``."""
        return self.host.bus.subscription(connection, client_only=True)

    def register(self, connection: HubConnection) -> None:
        """Count ``connection`` in (its reader starts); starts the keepalive loop."""
        self.connections[connection.client.conn_id] = connection
        self.stats.connections_opened += 1
        if self._keepalive is None or self._keepalive.dead:
            self._keepalive = gevent.spawn(self._keepalive_loop)

    def unregister(self, connection: HubConnection) -> None:
        """Count ``connection`` out (its cleanup runs)."""
        if self.connections.pop(connection.client.conn_id, None) is not None:
            stats = self.stats
            stats.connections_closed += 1
            code = connection.client.close_code or 1006
            stats.closed_by_code[code] = stats.closed_by_code.get(code, 0) + 1

    def run_hooks(self, name: str, client: WebsocketClient) -> None:
        """Run the ``connect`` / ``authenticated`` / ``disconnect`` hooks for ``client``.

        Raises:
            Exception: a ``connect`` or ``authenticated`` hook's error (the
                caller closes or refuses). ``disconnect`` hooks all run; their
                errors are logged.
        """
        for hook in self.hooks[name]:
            if name == "disconnect":
                try:
                    hook(client)
                except (Exception, SystemExit):  # every hook runs; the event still fires
                    _log.exception("on_disconnect hook %s failed for %s", hook, client.conn_id)
            else:
                hook(client)

    # -- admission -----------------------------------------------------------------

    def admit(self, environ: dict[str, Any]) -> tuple[int, str] | None:
        """Decide on an upgrade before the handshake: ``None`` or ``(status, message)``."""
        refusal = self._refusal(environ)
        if refusal is not None:
            stats = self.stats
            stats.connections_refused += 1
            stats.refused_by_status[refusal[0]] = stats.refused_by_status.get(refusal[0], 0) + 1
            _log.info("refused WebSocket from %s: %s", environ.get("REMOTE_ADDR"), refusal[1])
        return refusal

    def _refusal(self, environ: dict[str, Any]) -> tuple[int, str] | None:
        if self.draining:
            return 503, "server is shutting down"
        origin = environ.get("HTTP_ORIGIN")
        if origin and not self._origin_allowed(origin, environ.get("HTTP_HOST", "")):
            return 403, f"origin {origin} is not allowed"
        limiter = self._address_limiter
        if limiter is not None and not limiter.allow(environ.get("REMOTE_ADDR", "")):
            return 429, "too many connection attempts from this address"
        return None

    def _origin_allowed(self, origin: str, host: str) -> bool:
        allowed = self.settings.allowed_origins
        if "*" in allowed or origin in allowed:
            return True
        try:
            netloc = urlsplit(origin).netloc
        except ValueError:
            return False
        return bool(netloc) and netloc.lower() == host.lower()

    # -- operations ----------------------------------------------------------------

    def clients(self) -> list[WebsocketClient]:
        """Every connected client."""
        return [connection.client for connection in self.connections.values()]

    def kick(self, conn_id: str, reason: str = "kicked", code: int = KICKED) -> bool:
        """Close connection ``conn_id`` (close code 4000 by default); False if unknown."""
        connection = self.connections.get(conn_id)
        if connection is None:
            return False
        connection.close(code, reason, flush=True)
        return True

    def _keepalive_loop(self) -> None:
        # One greenlet pings every connection (not one timer per connection).
        settings = self.settings
        tick = max(0.05, min(1.0, settings.ping_interval / 4, settings.pong_timeout / 8))
        while self.connections or self._address_limiter is not None:
            gevent.sleep(tick)
            now = time.monotonic()
            for connection in list(self.connections.values()):
                if connection.reader_paused:
                    connection.last_activity = now  # busy on our side, not silent
                    continue
                if now - connection.last_activity > settings.pong_timeout:
                    connection.abort(GOING_AWAY, "ping timeout")
                elif now - connection.last_ping >= settings.ping_interval:
                    connection.send_ping()
            if self._address_limiter is not None:
                self._address_limiter.prune()
            if not self.connections and self._address_limiter is None:
                break
        self._keepalive = None

    def drain(self, timeout: float) -> None:
        """Refuse new connections and end every live one with 1001, its cleanup done.

        In-flight requests and deferred replies get ``timeout`` seconds to
        answer; then connections are closed without waiting, and those whose
        actor is still inside a strategy are cleaned up from here.
        """
        self.draining = True
        reason = "server shutting down"
        deadline = time.monotonic() + timeout
        for connection in list(self.connections.values()):
            connection.request_close(GOING_AWAY, reason)
        while self.connections and time.monotonic() < deadline:
            gevent.sleep(0.02)
        for connection in list(self.connections.values()):
            connection.close(GOING_AWAY, reason, flush=False)
        # Let the actors run their cleanup (disconnected events) before the bus stops.
        grace = time.monotonic() + min(2.0, max(0.1, timeout))
        while self.connections and time.monotonic() < grace:
            gevent.sleep(0.02)
        for connection in list(self.connections.values()):
            # Its actor is still inside a strategy that outlived the drain: clean
            # up from here, or its disconnected event would never fire.
            _log.warning(
                "connection %s: a strategy is still running after the drain; closing it anyway",
                connection.client.conn_id,
            )
            connection.cleanup()
        if self._keepalive is not None:
            self._keepalive.kill(block=False)
            self._keepalive = None

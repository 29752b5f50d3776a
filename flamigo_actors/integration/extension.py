"""The Flask extension: one object per application owning strategies, bus and connections.

Usage, with the application-factory pattern::

    strategies = Registry()

    @strategies.strategy("app::echo")
    def echo(ctx):
        return ctx.payload

    def create_app():
        app = Flask(__name__)
        flamigo = Flamigo(app, strategies=strategies, auth=verify_token)
        return app

``init_app`` reads the ``FLAMIGO_*`` settings, mounts the WebSocket endpoint
(a route declared ``websocket=True``), serves the browser client, registers
``app::websocket:auth`` when an auth verifier is given, and stores itself in
``app.extensions["flamigo"]``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import gevent
import pydantic
from gevent.event import AsyncResult
from flask import Flask, Response, request

from ..runtime.bus import Bus
from .publishing import push_frame
from ..websocket.connection import GOING_AWAY, KICKED, Connection, WebsocketClient
from ..core.errors import FlamigoError
from ..core.identity import BackendIdentity, Identity, User
from ..websocket.protocol import HEARTBEAT_ACTION, HEARTBEAT_PAYLOAD, heartbeat_frames
from ..core.ratelimit import AddressLimiter
from ..core.settings import Settings
from ..runtime.strategies import Registry, Request, StrategyContext, run_strategy
from ..websocket.transport import PING_FRAME, SocketTransport

__all__ = ["Flamigo", "FlamigoStats", "TokenVerifier"]

_log = logging.getLogger("flamigo_actors")

TokenVerifier = Callable[[str], "User | None"]
"""Checks a client's token; returns the user, or ``None`` (or raises) when it is not valid."""

Hook = Callable[[WebsocketClient], Any]

AUTH_STRATEGY = "websocket:auth"


class AuthPayload(pydantic.BaseModel):
    """Payload of ``app::websocket:auth``."""

    token: str = pydantic.Field(min_length=1)


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


class Flamigo:
    """The flamigo_actors extension of one Flask application.

    Args:
        app: the application (or call :meth:`init_app` later).
        strategies: the registry whose strategies are served; strategies can
            also be added with :meth:`strategy`.
        auth: a token verifier; enables ``app::websocket:auth`` and, unless
            ``FLAMIGO_AUTH_REQUIRED`` says otherwise, refuses other strategies
            (401) until a connection authenticates.
        options: any setting by its lowercase name (overrides ``app.config``).
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        strategies: Registry | None = None,
        auth: TokenVerifier | None = None,
        **options: Any,
    ) -> None:
        self.app: Flask | None = None
        self._options = options
        # An app-local registry: a module-level Registry shared by several apps
        # (one per test, say) is copied, never changed by what an app adds.
        self._registry = Registry(options.get("namespace", "app"))
        if strategies is not None:
            self._registry.include(strategies)
        self._verifier = auth
        self._hooks: dict[str, list[Hook]] = {"connect": [], "authenticated": [], "disconnect": []}
        self._listeners: list[tuple[Callable[..., Any], tuple[str, ...], dict[str, Any]]] = []
        self.connections: dict[str, Connection] = {}
        self.stats = FlamigoStats()
        self.started_at = time.time()
        self._draining = False
        self._keepalive: gevent.Greenlet | None = None
        self._address_limiter: AddressLimiter | None = None
        self.heartbeat_frames: tuple[bytes, bytes] | None = None
        """The heartbeat request a connection's reader answers itself, and its reply
        (``None`` when the app registered its own ``websocket:ping``)."""
        self.settings: Settings = Settings()
        self.bus: Bus = Bus(self, encoder=push_frame)  # the bus never imports the wire format
        if app is not None:
            self.init_app(app)

    # -- set-up ----------------------------------------------------------------

    def init_app(self, app: Flask) -> None:
        """Bind to ``app``: settings, routes, auth strategy, bus, ``app.extensions``.

        Raises:
            ValueError: a setting is unknown or invalid.
            RuntimeError: the extension is already bound to another app.
        """
        if self.app is not None and self.app is not app:
            raise RuntimeError(
                "this Flamigo object is already bound to another app: create one per app "
                "in your application factory"
            )
        self.app = app
        self.settings = settings = Settings.from_config(app.config, self._options)
        if self._registry.namespace != settings.namespace:
            raise ValueError(
                f"the strategy registry's namespace {self._registry.namespace!r} differs from "
                f"FLAMIGO_NAMESPACE {settings.namespace!r}"
            )
        if self._verifier is not None:
            self._register_auth_strategy()
        self._register_heartbeat_strategy()
        if settings.connect_rate_limit:
            self._address_limiter = AddressLimiter(
                settings.connect_rate_limit, settings.connect_rate_burst
            )
        app.extensions["flamigo"] = self
        app.add_url_rule(
            settings.ws_path, "flamigo_websocket", self._websocket_view, websocket=True
        )
        if settings.serve_client_js:
            app.add_url_rule("/_flamigo/flamigo.js", "flamigo_client_js", self._client_js)
        self.bus.bind(app)
        for listener, patterns, options in self._listeners:
            self.bus.subscribe(listener, *patterns, **options)
        app.shell_context_processor(self._shell_context)
        from ..ops.dashboard import register_inspection

        register_inspection(self, app)

    def _register_auth_strategy(self) -> None:
        name = f"{self.strategies.namespace}::{AUTH_STRATEGY}"
        if name in self.strategies:
            return  # the application customised it
        verify = self._verifier
        assert verify is not None

        def authenticate(ctx: StrategyContext) -> dict[str, Any]:
            """Verify a token and mark this connection as its user."""
            token = ctx.request.data.token
            try:
                user = verify(token)
            except FlamigoError:
                raise
            except Exception as err:  # the verifier said no in its own way
                raise FlamigoError(f"verify token: {err}", public="invalid token", status=401) from err
            if user is None:
                raise FlamigoError("verify token: refused", public="invalid token", status=401)
            if isinstance(ctx.identity, WebsocketClient):
                ctx.identity.authenticate(user)
            return {"success": True, "user": user.public()}

        self.strategies.register(name, authenticate, payload=AuthPayload, public=True)

    def _register_heartbeat_strategy(self) -> None:
        # Browsers answer the server's pings without telling page scripts, so a
        # client proves its connection alive with this application-level ping
        # (public: it works before authentication). The exact frame
        # {"topic":"<ns>::websocket:ping"} is answered by the connection's reader
        # without queuing in the mailbox (see Connection.run); any other form
        # (e.g. with an ackId) comes here.
        name = f"{self.strategies.namespace}::{HEARTBEAT_ACTION}"
        if name in self.strategies:
            return  # the application customised it: every ping goes to its strategy
        self.heartbeat_frames = heartbeat_frames(self.strategies.namespace)

        def ping(ctx: StrategyContext) -> dict[str, bool]:
            """Answer a client's heartbeat: ``{"pong": true}``."""
            return dict(HEARTBEAT_PAYLOAD)

        self.strategies.register(name, ping, public=True)

    @property
    def strategies(self) -> Registry:
        """The strategy registry served by this app (its own copy of the one given)."""
        return self._registry

    @property
    def auth_required(self) -> bool:
        """Whether connections must authenticate before calling strategies."""
        if self.settings.auth_required is not None:
            return self.settings.auth_required
        return self._verifier is not None

    @property
    def debug(self) -> bool:
        """Whether error traces are sent to clients."""
        if self.settings.debug is not None:
            return self.settings.debug
        return bool(self.app is not None and self.app.debug)

    def strategy(self, name: str, **options: Any) -> Callable[[Any], Any]:
        """Register a strategy on this app's registry (see :meth:`Registry.strategy`)."""
        return self.strategies.strategy(name, **options)

    def listen(
        self, *patterns: str, event_type: type[Any] | None = None, client_only: bool = False
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: subscribe an in-process listener ``fn(ctx, event)`` to ``patterns``."""

        def decorate(listener: Callable[..., Any]) -> Callable[..., Any]:
            options: dict[str, Any] = {"event_type": event_type, "client_only": client_only}
            if self.app is None:
                self._listeners.append((listener, patterns, options))
            else:
                self.bus.subscribe(listener, *patterns, **options)
            return listener

        return decorate

    def on_connect(self, hook: Hook) -> Hook:
        """Run ``hook(client)`` in the connection's actor when a client connects."""
        self._hooks["connect"].append(hook)
        return hook

    def on_authenticated(self, hook: Hook) -> Hook:
        """Run ``hook(client)`` when a client authenticates (e.g. subscribe it to ``user/<id>``)."""
        self._hooks["authenticated"].append(hook)
        return hook

    def on_disconnect(self, hook: Hook) -> Hook:
        """Run ``hook(client)`` once when a client's connection has ended, however it ended."""
        self._hooks["disconnect"].append(hook)
        return hook

    def _run_hooks(self, name: str, client: WebsocketClient) -> None:
        for hook in self._hooks[name]:
            if name == "disconnect":
                try:
                    hook(client)
                except (Exception, SystemExit):  # every hook runs; the event still fires
                    _log.exception("on_disconnect hook %s failed for %s", hook, client.conn_id)
            else:
                hook(client)

    # -- calling and publishing ------------------------------------------------

    def call(
        self,
        name: str,
        payload: Any = None,
        *,
        identity: Identity | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> Any:
        """Run strategy ``name`` in this greenlet and return its result.

        Usable anywhere: HTTP views, listeners, jobs, tests, the debug shell.
        A strategy that defers its reply is waited for.

        Args:
            identity: who calls (default: ``BackendIdentity("call")``).
            timeout: seconds before a 504 error (default: none for direct calls).
            deadline: an absolute ``time.monotonic()`` limit (nested calls pass theirs).

        Raises:
            FlamigoError: 403 outside the namespace, 404 unknown, 422 invalid
                payload, 504 timeout, or the strategy's own error.
        """
        strategy = self.strategies.resolve(name)
        if timeout is not None:
            limit = time.monotonic() + timeout
            deadline = limit if deadline is None else min(deadline, limit)
        ctx = StrategyContext(
            self,
            identity if identity is not None else BackendIdentity("call"),
            Request(name, payload),
            deadline=deadline,
        )
        remaining = ctx.remaining()
        try:
            with gevent.Timeout(remaining):
                result = run_strategy(strategy, ctx)
                if ctx.deferred is not None:
                    return self._wait_deferred(ctx)
                return result
        except gevent.Timeout:
            raise FlamigoError(
                f"strategy({name}): deadline exceeded", public="timed out", status=504
            ) from None

    @staticmethod
    def _wait_deferred(ctx: StrategyContext) -> Any:
        outcome: AsyncResult = AsyncResult()
        reply = ctx.deferred
        assert reply is not None

        def settle(value: Any, error: BaseException | None) -> None:
            if error is not None:
                outcome.set_exception(error)
            else:
                outcome.set(value)

        reply.attach(settle)
        try:
            return outcome.get()
        finally:
            if not reply.settled:
                reply.cancel()

    def publish(self, event: object, identity: Identity | None = None) -> None:
        """Publish ``event`` on this app's bus (works inside or outside a request).

        Raises:
            NoBusError: the bus is closed (after :meth:`shutdown`) or the app not bound yet.
        """
        self.bus.publish(event, identity=identity)

    def publish_sync(
        self, event: object, identity: Identity | None = None, timeout: float | None = None
    ) -> None:
        """Publish ``event`` and wait until every subscriber handled it (see :meth:`Bus.publish_sync`)."""
        self.bus.publish_sync(event, identity=identity, timeout=timeout)

    # -- connections -----------------------------------------------------------

    def admit(self, environ: dict[str, Any]) -> tuple[int, str] | None:
        """Decide on an upgrade before the handshake: ``None`` or ``(status, message)``."""
        refusal = self._refusal(environ)
        if refusal is not None:
            self.stats.connections_refused += 1
            _log.info(
                "refused WebSocket from %s: %s", environ.get("REMOTE_ADDR"), refusal[1]
            )
        return refusal

    def _refusal(self, environ: dict[str, Any]) -> tuple[int, str] | None:
        if self._draining:
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

    def _websocket_view(self) -> Response:
        transport = request.environ.get("wsgi.websocket")
        if not isinstance(transport, SocketTransport):
            return Response(
                "WebSocket upgrade not handled: serve the app with flamigo_actors.serve() "
                "or `flamigo-actors run` (gevent-websocket with flamigo_actors.websocket.transport.Handler)",
                status=500,
            )
        # The connection is served while the WSGI server iterates this body,
        # after Flask has popped the request context: a connection can last
        # for hours and need not hold a request, its session and URL adapter
        # (memory per connection, and objects for the garbage collector to
        # walk). Strategies and hooks run with the actor's own app context.
        # (Status 200: Werkzeug never iterates the body of a 204. A mimetype:
        # without one, Werkzeug looks for a content-type by raising and
        # catching a KeyError.)
        return Response(_serve(Connection(self, transport)), status=200, mimetype="text/plain")

    def serve_websocket(self, transport: SocketTransport) -> None:
        """Serve an upgraded WebSocket until it ends.

        The WebSocket handler calls this directly for upgrades at
        ``FLAMIGO_WS_PATH`` (unless ``FLAMIGO_WS_DIRECT`` is false, when the
        Flask route's view does).
        """
        Connection(self, transport).run()

    def _register(self, connection: Connection) -> None:
        self.connections[connection.client.conn_id] = connection
        self.stats.connections_opened += 1
        self._ensure_keepalive()

    def _unregister(self, connection: Connection) -> None:
        if self.connections.pop(connection.client.conn_id, None) is not None:
            self.stats.connections_closed += 1

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

    def _ensure_keepalive(self) -> None:
        if self._keepalive is None or self._keepalive.dead:
            self._keepalive = gevent.spawn(self._keepalive_loop)

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
                    connection.last_ping = now
                    connection.outbound.push(PING_FRAME)
            if self._address_limiter is not None:
                self._address_limiter.prune()
            if not self.connections and self._address_limiter is None:
                break
        self._keepalive = None

    # -- running -----------------------------------------------------------------

    def start(self) -> None:
        """Start the runtime eagerly (the server calls this; otherwise it starts on first use).

        With ``FLAMIGO_REDIS_URL`` set, this also starts the Redis backplane.

        Raises:
            RedisUnavailable: Redis cannot be reached and ``FLAMIGO_REDIS_REQUIRED`` is true.
        """
        if self.app is None:
            raise RuntimeError("call init_app(app) before start()")
        if self.settings.redis_url and self.bus.backplane is None:
            from ..backplane.streams import RedisBackplane

            RedisBackplane.from_settings(self.bus, self.settings).start()
        self.bus.start()

    # -- shutdown --------------------------------------------------------------

    def shutdown(self, timeout: float | None = None) -> None:
        """Drain and stop: refuse new connections, let in-flight requests answer,
        close every connection with 1001, fire every disconnected event, stop the bus.

        Args:
            timeout: seconds to wait for in-flight work (default ``FLAMIGO_DRAIN_TIMEOUT``).
        """
        from ..websocket.connection import _Close

        self._draining = True
        drain = self.settings.drain_timeout if timeout is None else timeout
        deadline = time.monotonic() + drain
        for connection in list(self.connections.values()):
            try:
                connection.ref.tell(_Close(GOING_AWAY, "server shutting down"))
            except Exception:  # noqa: BLE001 - already ended
                connection.close(GOING_AWAY, "server shutting down", flush=False)
        while self.connections and time.monotonic() < deadline:
            gevent.sleep(0.02)
        for connection in list(self.connections.values()):
            connection.close(GOING_AWAY, "server shutting down", flush=False)
        # Let the actors run their cleanup (disconnected events) before the bus stops.
        grace = time.monotonic() + min(2.0, max(0.1, drain))
        while self.connections and time.monotonic() < grace:
            gevent.sleep(0.02)
        for connection in list(self.connections.values()):
            # Its actor is still inside a strategy that outlived the drain: clean
            # up from here, or its disconnected event would never fire.
            _log.warning(
                "connection %s: a strategy is still running after the drain; closing it anyway",
                connection.client.conn_id,
            )
            connection._cleanup()
        if self._keepalive is not None:
            self._keepalive.kill(block=False)
            self._keepalive = None
        if self.bus.backplane is not None:  # after the disconnected events, before the bus
            self.bus.backplane.close()
        self.bus.close()

    # -- tools -----------------------------------------------------------------

    def test_client(self, **options: Any) -> Any:
        """A client driving the real connection code path without a network.

        See :class:`flamigo_actors.integration.testing.TestClient`.
        """
        from .testing import TestClient

        return TestClient(self, **options)

    def _client_js(self) -> Response:
        body = resources.files("flamigo_actors").joinpath("static/flamigo.js").read_bytes()
        response = Response(body, mimetype="text/javascript")
        response.headers["Cache-Control"] = "no-cache"
        return response

    def _shell_context(self) -> dict[str, Any]:
        from ..ops.shell import namespace

        return namespace(self, live=False)


def _serve(connection: Connection) -> Any:
    """A response body that serves ``connection`` when iterated, and yields nothing."""
    connection.run()
    yield from ()

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

The extension is the Flask glue only. What it offers is done elsewhere and
delegated to: the live connections (registry, admission, keepalive, kick,
the shutdown drain) by :class:`~flamigo_actors.websocket.hub.Hub`; the
built-in strategies by :mod:`flamigo_actors.websocket.builtins`; ``call`` by
:mod:`flamigo_actors.runtime.calls`; events by the bus.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from flask import Flask, Response, request

from ..runtime.actor_space import ActorSpace
from ..runtime.bus import Bus
from .publishing import push_frame
from ..runtime.calls import call as call_strategy
from ..websocket.builtins import TokenVerifier, register_auth, register_heartbeat
from ..websocket.connection import Connection
from ..core.identity import Identity
from ..websocket.hub import FlamigoStats, Hub
from .connections import ConnectionsMixin
from .contract import enable_output_checks, install_contract
from .presence import install_presence, start_presence
from .recovery import close_recovery, configure_recovery, make_recoverable, new_recovery, start_redis_recovery
from ..core.settings import Settings
from ..runtime.strategies import Registry
from ..websocket.transport import SocketTransport

__all__ = ["Flamigo", "FlamigoStats", "TokenVerifier"]

class Flamigo(ConnectionsMixin):
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
        self._listeners: list[tuple[Callable[..., Any], tuple[str, ...], dict[str, Any]]] = []
        self.started_at = time.time()
        self.settings: Settings = Settings()
        self.hub = Hub(self)  # the live connections: registry, admission, keepalive, kick, drain
        self.bus: Bus = Bus(self, encoder=push_frame)  # the bus never imports the wire format
        self.actors = ActorSpace(publisher=self.publish)  # the app's domain actors: flamigo.actors.get(Room, "lobby")
        self.presence = install_presence(self)  # who is in a topic: flamigo.presence.list("rooms/lobby")
        self.recovery = new_recovery()  # connection-state recovery (integration/recovery.py)
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
            register_auth(self._registry, self._verifier)
        self.hub.heartbeat_frames = register_heartbeat(self._registry)
        self.hub.configure(settings)
        self.actors.call_timeout, self.actors.mailbox_max = settings.actor_call_timeout, settings.actor_mailbox_max
        self.presence.batch = settings.presence_batch
        app.extensions["flamigo"] = self
        app.add_url_rule(
            settings.ws_path, "flamigo_websocket", lambda: _websocket_view(self.hub), websocket=True
        )
        if settings.serve_client_js:
            app.add_url_rule("/_flamigo/flamigo.js", "flamigo_client_js", _client_js)
        configure_recovery(self.recovery, self.bus, settings)
        self.bus.bind(app)
        for listener, patterns, options in self._listeners:
            self.bus.subscribe(listener, *patterns, **options)
        app.shell_context_processor(self._shell_context)
        from ..ops import operations

        install_contract(self, app)  # output checks, /_flamigo/asyncapi.json
        operations.install(self, app)  # /readyz, inspection and dashboard, /metrics

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

    def recoverable(self, *patterns: str) -> None:
        """Make the client events of ``patterns`` (``"rooms/*"``) recoverable: see the README."""
        make_recoverable(self.recovery, self.bus, *patterns)

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

        Usable anywhere: HTTP views, listeners, jobs, tests, the debug shell;
        a deferred reply is waited for. Arguments and errors: see
        :func:`flamigo_actors.runtime.calls.call` (403, 404, 422, 504, or the
        strategy's own error, as :class:`FlamigoError`).
        """
        return call_strategy(
            self, name, payload, identity=identity, timeout=timeout, deadline=deadline
        )

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

    # -- running -----------------------------------------------------------------

    def start(self) -> None:
        """Start the runtime eagerly (the server calls this; otherwise it starts on first use).

        With ``FLAMIGO_REDIS_URL`` set, this also starts the Redis backplane and domain actors in Redis.

        Raises:
            RedisUnavailable: Redis cannot be reached and ``FLAMIGO_REDIS_REQUIRED`` is true.
        """
        if self.app is None:
            raise RuntimeError("call init_app(app) before start()")
        if self.settings.redis_url:
            _start_redis(self.bus, self.actors, self.settings)
            start_redis_recovery(self.recovery, self.bus, self.settings)
        start_presence(self.presence, self.settings)
        self.bus.start()
        self.actors.start()
        from ..ops import operations

        operations.start(self)  # metrics sync, dashboard history

    # -- shutdown --------------------------------------------------------------

    def shutdown(self, timeout: float | None = None) -> None:
        """Drain and stop: refuse new connections, let in-flight requests answer,
        close every connection with 1001, fire every disconnected event, stop the bus.

        Args:
            timeout: seconds to wait for in-flight work (default ``FLAMIGO_DRAIN_TIMEOUT``).
        """
        drain = self.settings.drain_timeout if timeout is None else timeout
        from ..ops import operations

        operations.stop(self)
        self.hub.drain(drain)
        self.actors.stop(drain)  # snapshots stored
        self.presence.close()  # after the connections' untracks: their leaves go out
        if self.bus.backplane is not None:  # after the disconnected events, before the bus
            self.bus.backplane.close()
        self.bus.close()
        close_recovery(self.recovery)

    # -- tools -----------------------------------------------------------------

    def test_client(self, **options: Any) -> Any:
        """A client driving the real connection code path without a network.

        See :class:`flamigo_actors.integration.testing.TestClient`.
        """
        from .testing import TestClient

        enable_output_checks(self)  # tests check replies and pushes (unless FLAMIGO_CHECK_OUTPUT=false)
        return TestClient(self, **options)

    def _shell_context(self) -> dict[str, Any]:
        from ..ops.shell import namespace

        return namespace(self, live=False)


def _serve(connection: Connection) -> Any:
    """A response body that serves ``connection`` when iterated, and yields nothing."""
    connection.run()
    yield from ()



def _start_redis(bus: Bus, space: ActorSpace, settings: Settings) -> None:
    """The events backplane, and one actor space for every process on the Redis: leases,
    snapshots and remote calls in Redis (closed with the space: ``space.stop()`` closes its
    ``remote``). Each only once."""
    from ..backplane.actor_redis import RedisActors
    from ..backplane.streams import RedisBackplane
    from ..runtime.futures import ActorFuture

    if bus.backplane is None and settings.redis_backplane == "interest":
        from ..backplane.interest import InterestBackplane

        InterestBackplane.from_settings(bus, settings).start()
    elif bus.backplane is None:
        RedisBackplane.from_settings(bus, settings).start()
    if space.remote is None:
        RedisActors.from_settings(settings, future_factory=ActorFuture).attach(space)


def _websocket_view(hub: Hub) -> Response:
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
    return Response(_serve(Connection(hub, transport)), status=200, mimetype="text/plain")


def _client_js() -> Response:
    body = resources.files("flamigo_actors").joinpath("static/flamigo.js").read_bytes()
    response = Response(body, mimetype="text/javascript")
    response.headers["Cache-Control"] = "no-cache"
    return response

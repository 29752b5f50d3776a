"""Serving: gevent's WSGI server with the WebSocket handler, signals and a graceful drain."""

from __future__ import annotations

import gc
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event
from gevent.pywsgi import WSGIServer

from ..ops.readiness import announce_shutdown, grace_period
from ..runtime.engine import gevent_patched
from ..websocket.transport import Handler
from .limits import raise_open_files_limit

__all__ = ["make_server", "serve", "tune_gc"]

_log = logging.getLogger("flamigo_actors.server")

SERVER_GC_THRESHOLDS = (700, 10, 100)
"""Python's default young thresholds, and full collections at most every 100 middle ones."""


def tune_gc() -> None:
    """The garbage-collector policy of a long-running server (``serve`` applies it).

    * ``gc.freeze()`` after start-up: the application's modules, routes and
      models move to a permanent generation that collections never walk again.
    * Full collections need 100 middle-generation collections (Python's
      default is 10) on top of Python's own rule (25% growth of the long-lived
      heap). With ten thousand connections of about 100 tracked objects each,
      a full collection walks a million objects; while connections pour in,
      the default made collections more than a quarter of the server's CPU
      (measured with scripts/bench.py: 2.0 of 7.5 CPU seconds for 8,000
      connects; 0.6 s with this policy). Garbage
      cycles (a closed connection's objects) are still reclaimed, by the next
      full collection: at most about 700,000 allocations later.

    Call it yourself if you build the server with :func:`make_server`.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVER_GC_THRESHOLDS)


def make_server(app: Any, host: str = "127.0.0.1", port: int = 8080, **kwargs: Any) -> WSGIServer:
    """A (not yet started) gevent ``WSGIServer`` for ``app`` with the WebSocket handler.

    Raises:
        RuntimeError: gevent's monkey-patching is not in effect, or the app has
            no Flamigo extension.
    """
    if not gevent_patched():
        raise RuntimeError(
            "flamigo_actors needs gevent's monkey-patching before anything else is imported: "
            "put `from gevent import monkey; monkey.patch_all()` at the very top of your "
            "entry point (or start with `flamigo-actors run`)"
        )
    flamigo = getattr(app, "extensions", {}).get("flamigo")
    if flamigo is None:
        raise RuntimeError("the app has no Flamigo extension: call Flamigo(app) in create_app()")
    kwargs.setdefault("log", None)  # access logs: opt in with log=sys.stderr
    kwargs.setdefault("error_log", "default")
    server = WSGIServer((host, port), app, handler_class=Handler, **kwargs)
    server.flamigo = flamigo  # type: ignore[attr-defined]
    return server


def serve(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    ready: Callable[[WSGIServer], None] | None = None,
    stop: Event | None = None,
    backdoor: tuple[str, int] | None = None,
    gc_policy: bool = True,
    **kwargs: Any,
) -> None:
    """Serve ``app`` until SIGTERM/SIGINT (or ``stop`` is set), then drain gracefully.

    On SIGTERM, ``/readyz`` answers 503 at once and the server keeps serving for
    ``FLAMIGO_READINESS_GRACE`` seconds (out of the drain timeout) before the drain.
    At start the soft open-files limit is raised to the hard limit and the
    connection ceiling that follows is logged (:mod:`flamigo_actors.serving.limits`).

    The drain refuses new connections, lets in-flight requests answer, closes
    every connection with 1001 "going away", fires every disconnected event,
    and returns within ``FLAMIGO_DRAIN_TIMEOUT`` seconds (plus a short grace).

    Args:
        ready: called once the server listens (e.g. to print the address).
        stop: an event that stops the server when set (for embedding and tests).
        backdoor: ``(host, port)`` of a debug shell to open (loopback only; see
            :mod:`flamigo_actors.ops.shell`); none by default.
        gc_policy: apply :func:`tune_gc` (the default; False keeps Python's).

    Raises:
        BackdoorError: ``backdoor`` is not a loopback address or cannot be bound.
    """
    raise_open_files_limit()
    server = make_server(app, host, port, **kwargs)
    if gc_policy:
        tune_gc()
    flamigo = server.flamigo  # type: ignore[attr-defined]
    stop = stop or Event()
    shell = None
    if backdoor is not None:
        from ..ops.shell import require_loopback

        require_loopback(backdoor[0])  # before anything listens
    # Bound and listening now; accepting only once the app has started: a request that
    # arrives meanwhile waits in the backlog instead of meeting a half-started app (e.g.
    # a domain actor placed in this process alone before the Redis placement is attached).
    server.init_socket()
    try:
        if backdoor is not None:
            from ..ops.shell import start_backdoor

            shell = start_backdoor(flamigo, backdoor)
        flamigo.start()
        server.start()
    except BaseException:  # e.g. Redis unreachable, backdoor port busy: do not keep the port open
        if shell is not None:
            shell.stop()
        server.stop(timeout=0)
        raise
    terminated = []

    def on_sigterm() -> None:
        terminated.append(True)
        stop.set()

    handlers = [gevent.signal_handler(signal.SIGTERM, on_sigterm), gevent.signal_handler(signal.SIGINT, stop.set)]
    try:
        if ready is not None:
            ready(server)
        stop.wait()
        drain = flamigo.settings.drain_timeout
        if terminated:  # a load balancer's cue: /readyz 503 while still serving, then drain
            grace = grace_period(flamigo.settings)
            announce_shutdown(flamigo)
            if grace:
                _log.info("SIGTERM: /readyz answers 503; draining in %ss", grace)
                gevent.sleep(grace)
                drain -= grace
        _log.info("shutting down: draining connections (up to %ss)", drain)
        server.close()  # stop accepting; handlers keep running
        flamigo.shutdown(drain)
        server.stop(timeout=1)
    finally:
        for handler in handlers:
            handler.cancel()
        if shell is not None:
            shell.stop(timeout=1)  # ends open sessions
        sys.stderr.flush()

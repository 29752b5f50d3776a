"""Multi-worker serving: N worker processes on one port, sharing the Redis backplane.

    flamigo-actors run MODULE:FACTORY --workers N --redis URL
    python -m app --workers N --redis URL

gunicorn (the ecosystem's process manager, with gevent-websocket's worker
class) runs the workers. The command replaces itself (``exec``) with
``python -m flamigo_actors.serving.workers ...``: a fresh interpreter *without*
gevent's monkey-patching runs gunicorn's arbiter (it binds the port, forks the
workers, restarts a crashed one, forwards signals), and each worker patches
itself right after the fork, before it imports the application (gunicorn's
gevent worker does this). Each worker then:

* serves with our WebSocket handler (:class:`FlamigoWorker` is gevent-websocket's
  worker class with ``wsgi_handler = Handler``, so origin checks, rate limits
  and draining work as in the single-process server);
* loads the app itself and calls ``flamigo.start()``: its own bus, connections,
  and link to the Redis backplane, through which the workers share events;
* raises its soft open-files limit to the hard limit and logs its connection
  ceiling (:mod:`flamigo_actors.serving.limits`), and holds at most that many
  connections: a full worker stops accepting (gevent's pool is full) and the
  kernel hands new connections to the others, instead of failing ``accept``
  with "too many open files";
* drains on SIGTERM (what the arbiter forwards on its own SIGTERM), and also on
  SIGINT/SIGQUIT, exactly like ``serve()``: in-flight requests answer, every
  connection closes with 1001, every disconnected event fires.

This module is imported by the unpatched arbiter: it imports only gunicorn,
:mod:`flamigo_actors.websocket.transport` and :mod:`flamigo_actors.ops.multiprocess`
(prometheus_client's directory, made fresh at arbiter start) at module level,
never Flask, Pykka or the app.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import gevent
from gunicorn.app.base import BaseApplication

from ..ops import multiprocess
from . import logs
from ..websocket.transport import Handler, gunicorn_worker_base
from .limits import raise_open_files_limit
from .loading import load_app, search_current_directory

__all__ = ["FlamigoWorker", "WorkersApplication", "exec_arbiter", "main"]

_log = logging.getLogger("flamigo_actors.workers")

# gunicorn's arbiter stops (instead of respawning forever) on these exit statuses.
WORKER_BOOT_ERROR = 3
APP_LOAD_ERROR = 4

WORKER_CONNECTIONS = 100_000
"""Concurrent connections per worker (gunicorn's default of 1000 would cap WebSockets)."""


class FlamigoWorker(gunicorn_worker_base()):  # type: ignore[misc]
    """A gunicorn worker serving one Flamigo app with :class:`~flamigo_actors.websocket.transport.Handler`."""

    wsgi_handler = Handler
    flamigo: Any = None
    _terminated = False

    def load_wsgi(self) -> None:
        """Load the app (after the fork, already patched), then start its runtime."""
        limits = raise_open_files_limit()  # this worker's own limit, and the ceiling it sets
        if limits is not None:  # a full worker stops accepting and leaves new connections to the others
            self.worker_connections = min(int(self.cfg.worker_connections), limits.ceiling)
        super().load_wsgi()
        logs.setup(self.cfg.loglevel)  # gunicorn's own handlers too (set up before the fork)
        logs.watch_app(self.wsgi)
        flamigo = getattr(self.wsgi, "extensions", {}).get("flamigo")
        if flamigo is None:
            self.log.error("error: the app has no Flamigo extension: call Flamigo(app) in the factory")
            sys.exit(APP_LOAD_ERROR)
        if self.cfg.workers > 1 and not flamigo.settings.redis_url:
            self.log.error(
                "error: --workers %d needs the Redis backplane (--redis URL or FLAMIGO_REDIS_URL): "
                "without it an event published in one worker never reaches the clients of the others",
                self.cfg.workers,
            )
            sys.exit(APP_LOAD_ERROR)
        from ..backplane.streams import RedisUnavailable

        try:
            flamigo.start()
        except RedisUnavailable as err:
            self.log.error("error: %s", err)
            sys.exit(WORKER_BOOT_ERROR)
        self.flamigo = flamigo

    def run(self) -> None:
        drain = gevent.spawn(self._drain_when_told)
        try:
            super().run()  # returns once stopped and every handler (connection) ended
        finally:
            self.alive = False
            drain.join()

    def _drain_when_told(self) -> None:
        while self.alive and not self._terminated:
            gevent.sleep(0.1)
        drain = self.flamigo.settings.drain_timeout
        if self._terminated and self.alive:
            # SIGTERM: /readyz answers 503 while this worker still serves, then the drain.
            from ..ops.readiness import announce_shutdown, grace_period

            grace = grace_period(self.flamigo.settings)
            announce_shutdown(self.flamigo)
            gevent.sleep(grace)
            drain -= grace
            self.alive = False  # gunicorn stops accepting
        # gunicorn stops accepting; we close every connection gracefully (1001),
        # which ends their handlers, which lets gunicorn's graceful wait finish.
        self.flamigo.shutdown(drain)

    def handle_exit(self, sig: int, frame: Any) -> None:
        # SIGTERM (also what the arbiter sends on its own SIGTERM): drain after the readiness grace.
        self._terminated = True

    def handle_quit(self, sig: int, frame: Any) -> None:
        # gunicorn's SIGINT/SIGQUIT exit at once; drain like the single-process server.
        self.alive = False


class WorkersApplication(BaseApplication):  # type: ignore[misc]
    """gunicorn's application object: configuration in, the Flask app out (in each worker)."""

    def __init__(self, target: str, options: dict[str, Any]) -> None:
        self.target = target
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:  # settings vary a little across gunicorn versions
                self.cfg.set(key, value)

    def load(self) -> Any:
        try:
            return load_app(self.target)
        except SystemExit as err:  # load_app's clear message; make the arbiter stop
            print(err, file=sys.stderr, flush=True)
            sys.exit(APP_LOAD_ERROR)


def gunicorn_options(
    target: str, host: str, port: int, workers: int, log_level: str = "info"
) -> dict[str, Any]:
    """gunicorn settings for ``workers`` workers of ``target`` on ``host:port``."""
    drain = float(os.environ.get("FLAMIGO_DRAIN_TIMEOUT", "10"))
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def when_ready(arbiter: Any) -> None:
        print(
            f"flamigo_actors: serving {target} on http://{bind} with {workers} workers "
            f"(gunicorn arbiter pid {os.getpid()})",
            file=sys.stderr, flush=True,
        )

    return {
        "bind": [bind],
        "workers": workers,
        "worker_class": FlamigoWorker,
        "worker_connections": WORKER_CONNECTIONS,
        # The arbiter kills a worker still running after this: leave room for the drain.
        "graceful_timeout": int(drain) + 5,
        "loglevel": log_level.lower(),
        "accesslog": None,
        "errorlog": "-",
        "proc_name": f"flamigo-actors {target}",
        "when_ready": when_ready,
        # prometheus_client's multiprocess mode: the workers' values summed (FLAMIGO_METRICS).
        "child_exit": lambda arbiter, worker: multiprocess.worker_exited(worker.pid),
        "on_exit": lambda arbiter: multiprocess.cleanup(),
        # gunicorn >= 24's control socket runs a thread and a shared ~/.gunicorn socket.
        "control_socket_disable": True,
    }


def exec_arbiter(target: str, host: str, port: int, workers: int, log_level: str = "INFO") -> int:
    """Replace this process with gunicorn's arbiter (an unpatched interpreter).

    Returns only when ``exec`` fails (status 1). ``FLAMIGO_*`` environment
    variables (the command's flags) are inherited by the arbiter and workers.
    """
    argv = [
        sys.executable, "-m", "flamigo_actors.serving.workers", target,
        "--host", host, "--port", str(port), "--workers", str(workers), "--log-level", log_level,
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, argv)
    except OSError as err:
        print(f"error: cannot start the gunicorn arbiter: {err}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """``python -m flamigo_actors.serving.workers MODULE:FACTORY --workers N``: run the arbiter."""
    parser = argparse.ArgumentParser(prog="python -m flamigo_actors.serving.workers")
    parser.add_argument("target")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    try:
        logs.setup(str(args.log_level))  # FLAMIGO_LOG_FORMAT; secrets never written
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    search_current_directory()  # the app module is looked up from here, as with `python -m`
    multiprocess.prepare()  # before any worker forks: every worker writes its metrics there
    options = gunicorn_options(args.target, args.host, args.port, args.workers, args.log_level)
    WorkersApplication(args.target, options).run()  # exits with the arbiter's status
    return 0


if __name__ == "__main__":
    # Run as the importable module, so gunicorn and the workers see one FlamigoWorker class.
    from flamigo_actors.serving.workers import main as _main

    sys.exit(_main())

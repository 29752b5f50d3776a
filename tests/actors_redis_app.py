"""A small app whose domain actors are shared by every process on one Redis (tests only).

Serve it in child processes with
``python -m flamigo_actors.serving.cli run tests.actors_redis_app:create_app --redis URL``.
HTTP endpoints (JSON):

* ``POST /tally/<key>/add`` ``{"n": 1}``: ``Tally(key).add(n)`` (persisted), its reply
  ``{"total", "node"}``; 503/504 with the error when the actor is unavailable;
* ``POST /tally/<key>/bump``: like ``add(1)`` without ``persist()`` (in memory only);
* ``POST /tally/<key>/race`` ``{"calls": 1000, "at": unix time}``: at ``at``,
  ``calls`` greenlets each ask ``add(1)`` at once; answers ``{"ok", "failed", "errors"}``;
* ``POST /relay/<key>`` ``{"path": [key, ...]}``: ``Relay(key)`` asks ``Relay(path[0])``
  to relay ``path[1:]`` and so on; answers the ``key@node`` of each actor on the way;
* ``GET /space``: this process's node id and actor-space counters;
* ``GET /healthz``.
"""

from __future__ import annotations

import time
from typing import Any

import gevent
from flask import Flask, jsonify, request

from flamigo_actors import DomainActor, Flamigo, FlamigoError, status_of


class Tally(DomainActor):
    kind = "test-tally"
    idle_timeout = None

    def on_activate(self, key: str, state: Any) -> None:
        self.total = (state or {}).get("total", 0)

    def snapshot(self) -> Any:
        return {"total": self.total}

    def add(self, n: int) -> dict[str, Any]:
        self.total += n
        self.persist()
        return {"total": self.total, "node": self.node}

    def bump(self) -> dict[str, Any]:
        self.total += 1
        return {"total": self.total, "node": self.node}

    @property
    def node(self) -> str:
        return str(flamigo.actors.node_id)


class Relay(DomainActor):
    """Asks the actor named first in ``path`` to relay the rest, and waits for its answer."""

    kind = "test-relay"
    idle_timeout = None

    def relay(self, path: list[str]) -> list[str]:
        if not path:
            return [f"{self.key}@{flamigo.actors.node_id}"]
        rest = flamigo.actors.get(Relay, path[0]).ask("relay", path[1:]).get()
        return [f"{self.key}@{flamigo.actors.node_id}", *rest]


flamigo = Flamigo()


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(config or {})
    flamigo.init_app(app)

    def answer(call: Any) -> Any:
        try:
            return jsonify(call())
        except FlamigoError as err:
            return jsonify({"error": type(err).__name__, "message": str(err)}), status_of(err)

    @app.post("/tally/<key>/add")
    def add(key: str) -> Any:
        n = (request.get_json(silent=True) or {}).get("n", 1)
        return answer(lambda: flamigo.actors.get(Tally, key).ask("add", n).get())

    @app.post("/tally/<key>/bump")
    def bump(key: str) -> Any:
        return answer(lambda: flamigo.actors.get(Tally, key).ask("bump").get())

    @app.post("/tally/<key>/race")
    def race(key: str) -> Any:
        body = request.get_json()
        gevent.sleep(max(0.0, body["at"] - time.time()))
        def first_call() -> None:  # each greenlet gets its own ref: nothing shared but the key
            flamigo.actors.get(Tally, key).ask("add", 1).get(timeout=30)

        jobs = [gevent.spawn(first_call) for _ in range(body["calls"])]
        gevent.joinall(jobs)
        errors = [f"{type(j.exception).__name__}: {j.exception}" for j in jobs if j.exception is not None]
        return jsonify({"ok": len(jobs) - len(errors), "errors": errors[:5], "failed": len(errors)})

    @app.post("/relay/<key>")
    def relay(key: str) -> Any:
        path = (request.get_json(silent=True) or {}).get("path", [])
        return answer(lambda: flamigo.actors.get(Relay, key).ask("relay", path).get())

    @app.get("/space")
    def space() -> Any:
        actors = flamigo.actors
        return jsonify({"node": actors.node_id, **actors.stats.as_dict(),
                        "leases": [[l.kind, l.key, l.fence] for l in actors.leases()]})

    @app.get("/healthz")
    def healthz() -> Any:
        return "ok"

    return app

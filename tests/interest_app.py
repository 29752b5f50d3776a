"""A small app for the interest-based backplane's tests (tests only).

Serve it in child processes with
``python -m flamigo_actors.serving.cli run tests.interest_app:create_app --redis URL --backplane interest``.
``INTEREST_PATTERNS`` (comma-separated) subscribes a recording listener at start. HTTP (JSON):

* ``POST /subscribe`` ``{"patterns": [...]}``: one more recording listener; answers once
  ``Subscription.add`` returned (the interest is effective);
* ``POST /publish`` ``{"topics": [...], "first": 1, "count": 10}``: publishes ``Ping``
  events numbered ``first``, ``first + 1``...;
* ``GET /received``: ``[[listener, topics, n], ...]`` in arrival order;
* ``GET /backplane``: the backplane's snapshot.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from flask import Flask, jsonify, request

from flamigo_actors import Flamigo, serializable


@serializable("test.interest.ping")
@dataclass(frozen=True)
class Ping:
    topics: tuple[str, ...]
    n: int


flamigo = Flamigo()
received: list[list[Any]] = []


def recorder(name: str) -> Any:
    def listener(ctx: Any, event: Ping) -> None:
        received.append([name, list(event.topics), event.n])

    return listener


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(config or {})
    flamigo.init_app(app)
    patterns = [p for p in os.environ.get("INTEREST_PATTERNS", "").split(",") if p]
    if patterns:
        flamigo.bus.subscribe(recorder("start"), *patterns, event_type=Ping)

    @app.post("/subscribe")
    def subscribe() -> Any:
        body = request.get_json()
        flamigo.bus.subscribe(recorder(body.get("name", "http")), *body["patterns"], event_type=Ping)
        return jsonify({"subscribed": body["patterns"]})

    @app.post("/publish")
    def publish() -> Any:
        body = request.get_json()
        first = int(body.get("first", 1))
        for n in range(first, first + int(body.get("count", 1))):
            flamigo.bus.publish(Ping(tuple(body["topics"]), n))
        return jsonify({"published": body.get("count", 1)})

    @app.get("/received")
    def got() -> Any:
        return jsonify(received)

    @app.get("/backplane")
    def backplane() -> Any:
        return jsonify(flamigo.bus.backplane.snapshot() if flamigo.bus.backplane is not None else None)

    @app.get("/healthz")
    def healthz() -> Any:
        return "ok"

    return app

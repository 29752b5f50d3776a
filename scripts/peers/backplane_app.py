"""The demo app plus one benchmark view that publishes straight onto the bus.

``scripts/bench_capacity.py`` measures the Redis backplane with it: the
demo's rooms (login, ``app::websocket:auth``, ``app::rooms:join``) give the
load generator its subscribers, and ``POST /bench/fire`` publishes ``count``
``chat:message`` client events (text ``e<first>``, ``e<first+1>``...) to
``rooms/<room>`` in this process, without the ``Room`` actor (its snapshot
write per message would be measured too). Loopback only: the view refuses a
caller that is not 127.0.0.1. Not part of the demo.

    python -m flamigo_actors.serving.cli run backplane_app:create_app --redis URL   # PYTHONPATH=scripts/peers
"""

from __future__ import annotations

from typing import Any

import gevent
from flask import jsonify, request

from app import create_app as create_demo_app
from app.room import room_topic
from flamigo_actors import ClientMessageEvent, publish


def create_app(config: dict[str, Any] | None = None) -> Any:
    """The demo app with ``POST /bench/fire`` ``{"room", "first", "count", "pace"}`` added."""
    app = create_demo_app(config)

    @app.post("/bench/fire")
    def fire() -> Any:
        if request.remote_addr != "127.0.0.1":
            return jsonify({"error": "loopback only"}), 403
        body = request.get_json(silent=True) or {}
        room, first, count = body.get("room"), body.get("first", 0), body.get("count")
        pace = body.get("pace", 0)
        if not isinstance(room, str) or not isinstance(first, int) or not isinstance(count, int) or count < 0 \
                or not isinstance(pace, (int, float)) or pace < 0:
            return jsonify({"error": "body must be {room: str, first: int, count: int >= 0, pace: seconds >= 0 "
                                     "(optional)}"}), 400
        topics = (room_topic(room),)
        for k in range(first, first + count):
            publish(ClientMessageEvent(topics, "chat:message", {"room": room, "user": "bench", "text": f"e{k}"}))
            if pace:
                gevent.sleep(pace)  # a trickle: the backplane writes about one event at a time
            elif k % 64 == 63:
                gevent.sleep(0)  # let the bus and the backplane's sender run: a burst, not a stall
        return jsonify({"room": room, "published": count}), 202

    return app

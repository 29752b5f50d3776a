"""Peer 3 of the benchmark: Flask-SocketIO, what Python users pick today.

``async_mode="gevent"`` served by ``socketio.run`` (gevent's WSGIServer with
gevent-websocket's handler: the WebSocket transport, no long-polling):

* event ``echo``: returns its data, which Socket.IO sends back as the ack;
* ``POST /broadcast`` with ``{"text": ...}``: ``socketio.emit("chat:message", ...)``
  to every connected client, from a Flask view;
* ``GET /healthz``: 200.

    python scripts/peers/socketio_server.py --port 8082
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from flask import Flask, jsonify, request  # noqa: E402
from flask_socketio import SocketIO  # noqa: E402

app = Flask(__name__)
socketio = SocketIO(app, async_mode="gevent", logger=False, engineio_logger=False)


@socketio.on("echo")
def echo(data):  # type: ignore[no-untyped-def]
    return data


@app.post("/broadcast")
def broadcast():  # type: ignore[no-untyped-def]
    body = request.get_json(silent=True) or {}
    socketio.emit(
        "chat:message",
        {"room": "bench", "user": "http", "text": body.get("text"), "ts": time.time()},
    )
    return jsonify({"accepted": True}), 202


@app.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
    return jsonify({"status": "ok"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    print(f"Flask-SocketIO (gevent) on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    # SIGTERM ends the process (gevent's default handling); nothing to drain here.
    socketio.run(app, host=args.host, port=args.port, log_output=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

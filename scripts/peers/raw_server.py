"""Peer 2 of the benchmark: bare gevent-websocket, no framework (the limit of the stack).

A gevent ``WSGIServer`` with gevent-websocket's ``WebSocketHandler`` and a
plain WSGI function, speaking the same JSON envelope as flamigo_actors:

* ``/ws``: every request ``{"topic", "payload", "ackId"}`` is answered with
  ``{"topic", "payload", "ackId"}`` (an echo); ``app::rooms:join`` also adds
  the socket to the one broadcast set. No auth, no registry, no actor.
* ``POST /broadcast`` with ``{"text": ...}``: the chat-message push
  (``{"topic": "chat:message", "payload": {...}}``), encoded once, written to
  every joined socket in turn from the view's greenlet.
* ``GET /healthz``: 200.

orjson is used here too, so the peer is not handicapped by a slower encoder.

    python scripts/peers/raw_server.py --port 8081
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import orjson  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402
from geventwebsocket.exceptions import WebSocketError  # noqa: E402
from geventwebsocket.handler import WebSocketHandler  # noqa: E402

members: set = set()


def serve_socket(ws) -> None:  # type: ignore[no-untyped-def]
    try:
        while True:
            message = ws.receive()
            if message is None:
                return
            request = orjson.loads(message)
            topic = request.get("topic")
            if topic == "app::rooms:join":
                members.add(ws)
            reply = {"topic": topic, "payload": request.get("payload")}
            if "ackId" in request:
                reply["ackId"] = request["ackId"]
            ws.send(orjson.dumps(reply).decode())  # str: a text frame
    except (WebSocketError, OSError, orjson.JSONDecodeError):
        return
    finally:
        members.discard(ws)


def broadcast(environ) -> int:  # type: ignore[no-untyped-def]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = orjson.loads(environ["wsgi.input"].read(length) or b"{}")
    frame = orjson.dumps(
        {
            "topic": "chat:message",
            "payload": {"room": "bench", "user": "http", "text": body.get("text"), "ts": time.time()},
        }
    ).decode()  # encoded once; a str makes gevent-websocket send text frames
    sent = 0
    for ws in list(members):
        try:
            ws.send(frame)
            sent += 1
        except (WebSocketError, OSError):
            members.discard(ws)
    return sent


def application(environ, start_response):  # type: ignore[no-untyped-def]
    ws = environ.get("wsgi.websocket")
    if ws is not None:
        serve_socket(ws)
        return []
    path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
    if path == "/broadcast" and method == "POST":
        sent = broadcast(environ)
        body = orjson.dumps({"accepted": True, "sent": sent})
        start_response("202 Accepted", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/healthz":
        body = orjson.dumps({"status": "ok", "connections": len(members)})
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    start_response("404 Not Found", [("Content-Length", "0")])
    return [b""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    server = WSGIServer((args.host, args.port), application, handler_class=WebSocketHandler, log=None)
    server.start()
    print(f"raw gevent-websocket on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    stop = gevent.event.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, stop.set)
    stop.wait()
    server.stop(timeout=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

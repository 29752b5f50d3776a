"""An echo endpoint for the Autobahn TestSuite, built from the product's own wire code.

    python scripts/autobahn_echo.py --port 9001 [--host 127.0.0.1]

Every WebSocket on any path is served by the same classes a Flamigo
connection uses: gevent's ``WSGIServer`` with the product's ``Handler``
(gevent-websocket's upgrade handshake), its ``SocketTransport`` reading frames
with :class:`~flamigo_actors.websocket.framing.MessageReader`, and an
:class:`~flamigo_actors.websocket.outbound.Outbound` writing every frame
(echoes, pongs, the close frame) in order. Only the application differs: each
text or binary message (up to 16 MiB) is sent back as it came.

Text messages must be valid UTF-8 (checked by the framing for messages that
arrive in pieces, here for whole ones, as the product's protocol layer does):
otherwise the connection closes with 1007. The close handshake is the
product's: the peer's close code is echoed after the messages read before it,
a protocol violation closes with its code (1002, 1007, 1009), then the server
drops the TCP connection.

Loopback only: it is a test fixture, not a server to expose. Prints
``listening on ws://HOST:PORT`` once it accepts connections; stops on SIGINT
or SIGTERM.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402 - after monkey-patching, on purpose
import ipaddress  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from flamigo_actors.websocket.framing import (  # noqa: E402
    CLOSE_INVALID_PAYLOAD,
    CloseRequired,
    ConnectionEnded,
    binary_frame,
    close_frame,
    text_frame,
)
from flamigo_actors.websocket.outbound import Outbound  # noqa: E402
from flamigo_actors.websocket.transport import Handler, SocketTransport  # noqa: E402

MAX_MESSAGE = 16 * 1024 * 1024
"""Autobahn's largest messages (section 9) are 16 MiB."""

CLOSE_TIMEOUT = 5.0
"""How long queued echoes and the close frame may take to drain (the product's default)."""


def serve_echo(transport: SocketTransport) -> None:
    """Echo every message of one connection until it ends."""
    outbound = Outbound(
        transport,
        max_messages=100_000,
        max_bytes=4 * MAX_MESSAGE,
        on_overflow=transport.abort,
        on_failure=transport.abort,
    )
    transport.max_message_size = MAX_MESSAGE
    transport.on_control = outbound.push  # pongs in order with the echoes

    def close(code: int, reason: str) -> None:
        if outbound.finish(close_frame(code, reason), flush=True):
            outbound.wait_drained(CLOSE_TIMEOUT)

    try:
        while True:
            binary, data = transport.receive()
            if binary:
                outbound.push(binary_frame(data))
                continue
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                raise CloseRequired(CLOSE_INVALID_PAYLOAD, "text message is not valid UTF-8") from None
            outbound.push(text_frame(data))
    except ConnectionEnded as ended:
        if ended.answer is not None:  # the peer's close frame: echo its code
            close(ended.answer, "")
    except CloseRequired as required:
        close(required.code, required.reason)
    finally:
        transport.abort()


def echo_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The WSGI application: WebSocket upgrades are echoed, plain HTTP gets a 400."""
    transport = environ.get("wsgi.websocket")
    if not isinstance(transport, SocketTransport):
        body = b"a WebSocket echo endpoint: connect with ws://\n"
        start_response(
            "400 Bad Request",
            [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
        )
        return [body]
    serve_echo(transport)
    return []


def _loopback(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise SystemExit(f"autobahn_echo: --host must be a loopback address (127.0.0.1, ::1), not {host!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="port to listen on (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    args = parser.parse_args(argv)
    host = _loopback(args.host)
    server = WSGIServer((host, args.port), echo_app, handler_class=Handler, log=None)
    server.start()
    stopped = gevent.event.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, stopped.set)
    port = server.server_port
    shown = f"[{host}]" if ":" in host else host
    print(f"listening on ws://{shown}:{port}", flush=True)
    stopped.wait()
    server.stop(timeout=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

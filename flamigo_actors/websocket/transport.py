"""The one module that knows gevent-websocket.

gevent-websocket (0.10.1) performs the HTTP upgrade handshake for us. Frames
are read and written here instead of by its ``WebSocket`` class, because that
class reads a frame of any announced length into memory, unmasks payloads one
byte at a time in Python, validates UTF-8 in Python, and writes pongs directly
to the socket where they could interleave with a half-written message.

Everything else in the package speaks to a :class:`Transport` (receive a
message, try a non-blocking send, send all, close, abort), so swapping
gevent-websocket for another handshake library touches only this file.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any, Protocol

from geventwebsocket.handler import WebSocketHandler

__all__ = [
    "CloseRequired",
    "ConnectionEnded",
    "Handler",
    "SocketTransport",
    "Transport",
    "close_frame",
    "gunicorn_worker_base",
    "text_frame",
]

_log = logging.getLogger("flamigo_actors.transport")

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

PING_FRAME = b"\x89\x00"

_OPCODES = frozenset((OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))


class ConnectionEnded(Exception):
    """The peer closed or the connection was lost; nothing more will be read.

    Attributes:
        code, reason: what the disconnected event reports.
        answer: the close code owed to the peer (its close frame is echoed once
            the requests read before it are answered), or ``None`` when the
            peer is gone and nothing can be sent.
    """

    def __init__(self, code: int, reason: str, answer: int | None = None) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason
        self.answer = answer


class CloseRequired(Exception):
    """The peer broke a rule: the server must close with ``code`` (1002, 1009...).

    Nothing after the offending frame is read; requests read before it are
    still answered, then the close frame follows.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason
        self.answer = code


def text_frame(payload: bytes) -> bytes:
    """A complete, unmasked server-to-client text frame carrying ``payload``."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame with ``code`` and a reason (truncated to fit a control frame)."""
    body = struct.pack("!H", code) + reason.encode("utf-8")[:123]
    return bytes((0x88, len(body))) + body


def _unmask(payload: bytes, mask: bytes) -> bytes:
    # XOR as one big integer: linear time in C instead of a Python loop per byte.
    n = len(payload)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        n, "little"
    )


class Transport(Protocol):
    """What a connection needs from the wire."""

    remote_addr: str

    def receive(self) -> tuple[bool, bytes]:
        """Block until a whole message arrives; return ``(is_binary, data)``.

        Raises:
            ConnectionEnded: the peer closed or vanished.
            CloseRequired: the peer broke the protocol or a limit.
        """
        ...

    def try_send(self, data: bytes | memoryview) -> int:
        """Write without blocking; return how many bytes left (0 when the buffer is full)."""
        ...

    def send_all(self, data: bytes | memoryview) -> None:
        """Write everything, yielding to other greenlets while the peer is slow."""
        ...

    def abort(self) -> None:
        """Tear the connection down now; a blocked :meth:`receive` returns at once."""
        ...


class SocketTransport:
    """A WebSocket over a gevent socket, after gevent-websocket's handshake.

    Args:
        handler: the gevent-websocket handler that performed the upgrade.

    The connection sets three attributes after creation:

    * ``max_message_size``: largest inbound message (all fragments together);
      a larger one raises :class:`CloseRequired` (1009) before it is read;
    * ``on_control``: called with each pong to send, so it goes through the
      same ordered outbound path as messages;
    * ``on_activity``: called whenever a frame arrives (keepalive bookkeeping).
    """

    closed: bool

    def __init__(self, handler: WebSocketHandler) -> None:
        self.handler = handler
        self._socket = handler.socket
        self._read = handler.rfile.read
        peer = handler.client_address
        self.remote_addr = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.environ = handler.environ
        self.closed = False
        self.max_message_size = 65536
        self.on_control: Callable[[bytes], Any] = self.send_all
        self.on_activity: Callable[[], None] = _nothing

    # -- reading -------------------------------------------------------------

    def _exactly(self, n: int) -> bytes:
        try:
            data = self._read(n)
        except OSError as err:
            raise ConnectionEnded(1006, f"connection lost ({err.strerror or err})") from None
        if data is None or len(data) != n:
            raise ConnectionEnded(1006, "connection lost")
        return data

    def receive(self) -> tuple[bool, bytes]:
        opcode = 0
        # Fragments of one message: never more than max_message_size bytes,
        # however many (possibly empty) fragments a peer sends.
        fragments: bytearray | None = None
        size = 0
        limit = self.max_message_size
        while True:
            b0, b1 = self._exactly(2)
            self.on_activity()
            fin, op, length = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if b0 & 0x70:
                raise CloseRequired(1002, "reserved bits set without an extension")
            if not b1 & 0x80:
                raise CloseRequired(1002, "client frames must be masked")
            if op not in _OPCODES:
                raise CloseRequired(1002, f"unknown opcode {op}")
            if length == 126:
                (length,) = struct.unpack("!H", self._exactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._exactly(8))
            # The whole header is checked before a byte of payload is read.
            if op >= 0x8:
                if not fin or length > 125:
                    raise CloseRequired(1002, "control frames must be whole and under 126 bytes")
            else:
                if op == OP_CONT:
                    if not opcode:
                        raise CloseRequired(1002, "continuation frame without a message")
                elif opcode:
                    raise CloseRequired(1002, "new message before the previous one ended")
                if size + length > limit:
                    raise CloseRequired(1009, f"message larger than {limit} bytes")
            mask = self._exactly(4)
            payload = _unmask(self._exactly(length), mask) if length else b""
            if op == OP_PING:
                self.on_control(bytes((0x8A, len(payload))) + payload)
                continue
            if op == OP_PONG:
                continue
            if op == OP_CLOSE:
                self._on_close_frame(payload)
            if op != OP_CONT:
                opcode = op
            size += length
            if fin:
                if fragments is None:
                    return opcode == OP_BINARY, payload
                fragments += payload
                return opcode == OP_BINARY, bytes(fragments)
            if fragments is None:
                fragments = bytearray(payload)
            else:
                fragments += payload

    def _on_close_frame(self, payload: bytes) -> None:
        code = 1005
        if len(payload) == 1:
            raise CloseRequired(1002, "malformed close frame")
        if len(payload) >= 2:
            (code,) = struct.unpack("!H", payload[:2])
            if code < 1000 or 1004 <= code <= 1006 or 1015 <= code < 3000 or code >= 5000:
                raise CloseRequired(1002, f"invalid close code {code}")
            try:
                payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise CloseRequired(1007, "close reason is not valid UTF-8") from None
        # Report the peer's code; the connection echoes it (RFC 6455 5.5.1)
        # after answering the requests it read before the close.
        raise ConnectionEnded(code, "client closed", answer=1000 if code == 1005 else code)

    # -- writing -------------------------------------------------------------

    def try_send(self, data: bytes | memoryview) -> int:
        try:
            return self._socket.send(data, 0, 0.0)  # gevent: timeout 0.0 never waits
        except BlockingIOError:
            return 0
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return 0
            raise

    def send_all(self, data: bytes | memoryview) -> None:
        self._socket.sendall(data)

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self, code: int = 1000, message: Any = b"") -> None:
        """Called by gevent-websocket once the view returns: make sure the socket ends."""
        self.abort()


def _nothing() -> None:
    pass


def _discard(data: bytes) -> None:
    pass


Admission = Callable[[dict[str, Any]], "tuple[int, str] | None"]
"""Decides before the upgrade: ``None`` to accept, or ``(status, message)`` to refuse."""

_REASONS = {400: "Bad Request", 403: "Forbidden", 429: "Too Many Requests", 503: "Service Unavailable"}


class WebsocketHost(Protocol):
    """What the :class:`Handler` needs from the served app's extension (``app.extensions["flamigo"]``)."""

    @property
    def settings(self) -> Any:
        """``header_timeout``, ``ws_direct`` and ``ws_path`` are read."""

    def admit(self, environ: dict[str, Any]) -> tuple[int, str] | None:
        """``None`` to accept the upgrade, or ``(status, message)`` to refuse it."""

    def serve_websocket(self, transport: SocketTransport) -> None:
        """Serve an upgraded WebSocket until it ends."""


class Handler(WebSocketHandler):
    """gevent-websocket's handler with an admission check before the upgrade.

    The check (origin allow-list, connection rate per address, draining) comes
    from the :class:`~flamigo_actors.Flamigo` extension of the served app, so
    a refused request never becomes a WebSocket. The request line and headers
    must arrive within ``FLAMIGO_HEADER_TIMEOUT``.
    """

    def _flamigo(self) -> WebsocketHost | None:
        found = getattr(self.server, "flamigo", None)
        if found is None:
            extensions = getattr(self.application, "extensions", None)
            if isinstance(extensions, dict):
                found = extensions.get("flamigo")
        return found

    def read_requestline(self) -> str:
        # A client that trickles its request in (or idles on a keep-alive
        # connection) would hold a greenlet and a socket forever: time it.
        flamigo = self._flamigo()
        if flamigo is not None:
            self.socket.settimeout(flamigo.settings.header_timeout)
        return super().read_requestline()  # a timeout ends the connection quietly

    def read_request(self, raw_requestline: str) -> Any:
        try:
            return super().read_request(raw_requestline)
        except socket.timeout:
            return False  # headers not complete in time: 400, then the connection ends
        finally:
            self.socket.settimeout(None)  # the application and the WebSocket are not timed

    def upgrade_websocket(self) -> Any:
        if self.environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            flamigo = self._flamigo()
            if flamigo is not None:
                refusal = flamigo.admit(self.environ)
                if refusal is not None:
                    status, message = refusal
                    body = message.encode("utf-8")
                    self.start_response(
                        f"{status} {_REASONS.get(status, 'Refused')}",
                        [("Content-Type", "text/plain; charset=utf-8"),
                         ("Content-Length", str(len(body)))],
                    )
                    return [body]
        return super().upgrade_websocket()

    def run_websocket(self) -> Any:
        flamigo = self._flamigo()
        transport = self.environ.get("wsgi.websocket")
        if (
            flamigo is not None
            and flamigo.settings.ws_direct
            and isinstance(transport, SocketTransport)
            and self.environ.get("PATH_INFO") == flamigo.settings.ws_path
        ):
            # Serve the connection here rather than through Flask's dispatch
            # of the /ws route. The 101 is already sent, so Flask's hooks could
            # not refuse the upgrade anyway (admission does, before it), and
            # strategies run with the actor's own app context; what Flask
            # would add per connection (request and app contexts, session,
            # URL matching, hooks, signals, the response) was about 45% of
            # the server CPU of a connect (scripts/bench.py, conns10000).
            try:
                flamigo.serve_websocket(transport)
            finally:
                transport.close()
                self.environ["wsgi.websocket"] = None
                self.websocket = None
            return None
        return super().run_websocket()

    def upgrade_connection(self) -> Any:
        result = super().upgrade_connection()
        replaced = self.environ.get("wsgi.websocket")
        if replaced is not None:
            # gevent-websocket's own object would write a close frame from its
            # __del__ when discarded, before our 101 response: disarm it by
            # giving it a writer that writes nothing. (Marking it closed also
            # disarms it, but then close() builds a class and raises and
            # catches an error twice: py-spy put that at up to a fifth of the
            # server CPU of a connect.)
            replaced.raw_write = _discard
            transport = SocketTransport(self)
            self.websocket = transport  # type: ignore[assignment]
            self.environ["wsgi.websocket"] = transport
        return result


def gunicorn_worker_base() -> type[Any]:
    """gevent-websocket's gunicorn worker class, to subclass with ``wsgi_handler = Handler``.

    Imported on demand: it imports gunicorn, which only multi-worker serving
    needs (``pip install 'flamigo-actors[workers]'``).
    """
    from geventwebsocket.gunicorn.workers import GeventWebSocketWorker

    return GeventWebSocketWorker

"""The one module that knows gevent-websocket.

gevent-websocket (0.10.1) performs the HTTP upgrade handshake for us. Frames
are read and written here instead of by its ``WebSocket`` class, because that
class reads a frame of any announced length into memory, unmasks payloads one
byte at a time in Python, validates UTF-8 in Python, and writes pongs directly
to the socket where they could interleave with a half-written message. The
RFC 6455 parsing and building itself lives in
:mod:`flamigo_actors.websocket.framing`; this module adds the socket I/O.

Over a plain socket the transport keeps its own receive buffer: it waits
until the socket is readable, takes what has arrived with one ``recv``, and
parses a whole unfragmented frame of up to 64 KiB in place (anything else,
or a frame not all here yet, goes through the general parser, which checks
every rule). :meth:`SocketTransport.has_buffered` tells the reader whether
more has arrived than it has parsed, i.e. whether the client has more
requests in flight. Bytes already buffered by the handshake (frames sent
with the upgrade request) are taken over first. TLS sockets keep the
handler's buffered reader (decrypted bytes may wait inside the TLS layer
while the socket looks quiet) and always report more as possibly buffered.

Everything else in the package speaks to a
:class:`~flamigo_actors.websocket.framing.Transport` (receive a message, try a
non-blocking send, send all, close, abort), so swapping gevent-websocket for
another handshake library touches only this file. The handler learns what to
admit and how to serve an upgrade from a :class:`Host` (the ``Flamigo``
extension), never by importing it.

``CloseRequired``, ``ConnectionEnded``, ``Transport``, ``PING_FRAME``,
``close_frame`` and ``text_frame`` are still importable from here for one
release; import them from :mod:`flamigo_actors.websocket.framing`.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from typing import Any, Protocol

from gevent.socket import socket as gevent_socket
from geventwebsocket.handler import WebSocketHandler

from .framing import (  # the names this module used to define, re-exported for one release
    PING_FRAME,
    CloseRequired,
    ConnectionEnded,
    MessageReader,
    Transport,
    close_frame,
    text_frame,
    unmask,
)

__all__ = [
    "PING_FRAME",
    "Admission",
    "CloseRequired",
    "ConnectionEnded",
    "Handler",
    "Host",
    "HostSettings",
    "SocketTransport",
    "Transport",
    "close_frame",
    "gunicorn_worker_base",
    "text_frame",
]

_log = logging.getLogger("flamigo_actors.transport")

_RECV_SIZE = 65536
"""Bytes asked for per ``recv`` (a pipelining client's burst in one system call)."""
_MAX_RECV = 1 << 20
"""Most bytes asked for at once while a large frame arrives."""
_RECEIVED = bytearray(_RECV_SIZE)
_RECEIVED_VIEW = memoryview(_RECEIVED)


class SocketTransport(MessageReader):
    """A WebSocket over a gevent socket, after gevent-websocket's handshake.

    Args:
        handler: the gevent-websocket handler that performed the upgrade.

    Frames are parsed by :class:`~flamigo_actors.websocket.framing.MessageReader`
    straight from the handler's buffered reader. The connection sets three
    attributes after creation: ``max_message_size``, ``on_control`` (pongs go
    through its ordered outbound path; until then they are written directly)
    and ``on_activity`` (see :class:`~flamigo_actors.websocket.framing.MessageReader`).
    """

    closed: bool

    def __init__(self, handler: WebSocketHandler) -> None:
        rfile = handler.rfile
        self._buf = b""  # bytes received and not yet parsed, from _pos on
        self._pos = 0
        self._wait: Any = None  # with _event and _recv: set when we read the socket ourselves
        sock = _plain_socket(rfile)
        if sock is not None:
            # Our own receive buffer: one recv per burst, the frame parsed in
            # place, and we know whether more requests are already here.
            self._buf = _take_buffered(rfile)
            self._wait, self._event, self._recv = sock._wait, sock._read_event, sock.recv
            self._recv_into = sock.recv_into
            super().__init__(self._read_exactly, self._read_some)
        else:
            # TLS and the like: decrypted bytes may wait in the TLS layer while
            # the socket is quiet, so the buffered reader does the reading.
            self.has_buffered = _always  # type: ignore[method-assign]
            super().__init__(rfile.read, getattr(rfile, "read1", None))
        self.handler = handler
        self._socket = handler.socket
        peer = handler.client_address
        self.remote_addr = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.environ = handler.environ
        self.closed = False
        self.on_control = self.send_all

    # -- reading -------------------------------------------------------------

    def has_buffered(self) -> bool:
        """Whether bytes of a next message are here already (received, not yet parsed).

        Always True when the handler's buffered reader does the reading (TLS):
        it cannot tell, so the caller must assume more is coming.
        """
        return len(self._buf) > self._pos

    def receive(self) -> tuple[bool, bytes]:
        """The next whole message (see :meth:`MessageReader.receive`).

        A frame that is already here whole, unfragmented text or binary and
        under 64 KiB, is taken from the buffer in place (the common case:
        one request per frame); anything else, or anything not here yet,
        goes through the general parser, which checks every rule.
        """
        buf = self._buf
        pos = self._pos
        size = len(buf)
        if pos == size and self._wait is not None:  # nothing here: wait for the next burst
            try:
                buf = self._fill(_RECV_SIZE)
            except OSError as err:
                raise ConnectionEnded(1006, f"connection lost ({err.strerror or err})") from None
            if not buf:
                raise ConnectionEnded(1006, "connection lost")
            self._buf = buf
            pos = self._pos = 0
            size = len(buf)
        if size - pos >= 6:
            b0 = buf[pos]
            length = buf[pos + 1] - 0x80  # negative: unmasked (the general path refuses it)
            if (b0 == 0x81 or b0 == 0x82) and 0 <= length <= 126:
                start = pos + 2
                if length == 126:
                    if size - pos < 8:
                        return super().receive()
                    length = (buf[start] << 8) | buf[start + 1]
                    start += 2
                end = start + 4 + length
                if end <= size and length <= self.max_message_size:
                    if end == size:  # all parsed: hold no bytes while idle
                        self._buf = b""
                        self._pos = 0
                    else:
                        self._pos = end
                    self.on_activity()
                    return b0 == 0x82, unmask(buf[start + 4:end], buf[start:start + 4])
        return super().receive()

    def _read_exactly(self, n: int) -> bytes:
        # ``n`` bytes, fewer only at the end of the stream (MessageReader's ``read``).
        buf = self._buf
        pos = self._pos
        end = pos + n
        if end <= len(buf):
            self._pos = end
            return buf[pos:end]
        parts = [buf[pos:]]
        have = len(buf) - pos
        self._buf, self._pos = b"", 0
        while have < n:
            need = n - have
            chunk = self._fill(need)
            if not chunk:
                break  # the stream ended
            if len(chunk) > need:
                self._buf, self._pos = chunk, need
                chunk = chunk[:need]
            parts.append(chunk)
            have += len(chunk)
        return b"".join(parts)

    def _read_some(self, n: int) -> bytes:
        # Between 1 and ``n`` bytes as soon as any are here, b"" at the end (``read1``).
        buf = self._buf
        pos = self._pos
        if pos < len(buf):
            end = min(pos + n, len(buf))
            self._pos = end
            return buf[pos:end]
        chunk = self._fill(n)
        if len(chunk) > n:
            self._buf, self._pos = chunk, n
            return chunk[:n]
        self._buf, self._pos = b"", 0
        return chunk

    def _fill(self, wanted: int) -> bytes:
        # Wait until the socket is readable, then one recv. Waiting first
        # matters with one request in flight: asking at once would fail with
        # EAGAIN between every request and its reply (a system call and a
        # raised exception each time; strace -c of rt1x1 showed 2 recvfrom
        # per request before). Raises socket.timeout past the socket's timeout.
        self._wait(self._event)
        if wanted > _RECV_SIZE:  # a large frame: straight into its own bytes
            return self._recv(min(wanted, _MAX_RECV))  # type: ignore[no-any-return]
        # Into one shared buffer, then copied out: recv(65536) would allocate
        # and shrink 64 KiB per call (about 0.9 µs more than this, measured).
        # Shared safely: nothing yields between the recv and the copy.
        received = self._recv_into(_RECEIVED)
        return _RECEIVED_VIEW[:received].tobytes()

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


def _plain_socket(rfile: Any) -> Any:
    """The gevent socket under ``rfile`` (the handler's buffered reader), if it is a plain one."""
    raw: Any = getattr(rfile, "raw", None)
    sock: Any = getattr(raw, "_sock", None)
    if type(sock) is not gevent_socket or not hasattr(raw, "__dict__"):
        return None
    return sock


def _take_buffered(rfile: Any) -> bytes:
    """The bytes ``rfile`` holds already (frames sent with the upgrade request), without waiting.

    A raw reader that has nothing (``None``, as a non-blocking one would)
    makes ``read1`` hand over what is buffered, or ``b""``, and never block.
    """
    raw = rfile.raw
    raw.readinto = _nothing_yet
    try:
        parts = []
        while True:
            chunk = rfile.read1(_RECV_SIZE)
            if not chunk:
                break
            parts.append(chunk)
        return b"".join(parts)
    finally:
        del raw.readinto


def _nothing_yet(buffer: Any) -> None:
    return None


def _always() -> bool:
    return True


def _discard(data: bytes) -> None:
    pass


Admission = Callable[[dict[str, Any]], "tuple[int, str] | None"]
"""Decides before the upgrade: ``None`` to accept, or ``(status, message)`` to refuse."""


class HostSettings(Protocol):
    """The settings the handler reads (a :class:`~flamigo_actors.core.settings.Settings`)."""

    @property
    def header_timeout(self) -> float: ...

    @property
    def ws_direct(self) -> bool: ...

    @property
    def ws_path(self) -> str: ...


class Host(Protocol):
    """What the handler needs from the app it serves (the ``Flamigo`` extension)."""

    @property
    def settings(self) -> HostSettings: ...

    def admit(self, environ: dict[str, Any]) -> tuple[int, str] | None:
        """``None`` to accept the upgrade, or ``(status, message)`` to refuse it."""
        ...

    def serve_websocket(self, transport: SocketTransport) -> None:
        """Serve an upgraded connection until it ends."""
        ...


_REASONS = {400: "Bad Request", 403: "Forbidden", 429: "Too Many Requests", 503: "Service Unavailable"}


class Handler(WebSocketHandler):
    """gevent-websocket's handler with an admission check before the upgrade.

    The check (origin allow-list, connection rate per address, draining) comes
    from the :class:`~flamigo_actors.Flamigo` extension of the served app, so
    a refused request never becomes a WebSocket. The request line and headers
    must arrive within ``FLAMIGO_HEADER_TIMEOUT``.
    """

    def _flamigo(self) -> Host | None:
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

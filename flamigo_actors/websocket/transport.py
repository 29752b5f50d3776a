"""The one module that knows gevent-websocket.

gevent-websocket (0.10.1) performs the HTTP upgrade handshake for us. Frames
are read and written here instead of by its ``WebSocket`` class, because that
class reads a frame of any announced length into memory, unmasks payloads one
byte at a time in Python, validates UTF-8 in Python, and writes pongs directly
to the socket where they could interleave with a half-written message. The
RFC 6455 parsing and building itself lives in
:mod:`flamigo_actors.websocket.framing`; this module adds the socket I/O.

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
        _read_when_readable(rfile)
        super().__init__(rfile.read, getattr(rfile, "read1", None))
        self.handler = handler
        self._socket = handler.socket
        peer = handler.client_address
        self.remote_addr = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.environ = handler.environ
        self.closed = False
        self.on_control = self.send_all

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


def _read_when_readable(rfile: Any) -> None:
    """Make ``rfile`` wait until its socket is readable before it asks the kernel for bytes.

    ``rfile`` (gevent's buffered reader over the socket) refills its buffer
    with ``recv_into``, which on a quiet socket fails with EAGAIN and only
    then waits. The reader asks for the next frame right after telling the
    actor about the last one, so with one request in flight that failed
    ``recv`` ran between the request and its reply, every time: a system call
    and a raised exception of latency and CPU per request (py-spy and
    ``strace -c`` of ``rt1x1``: 2 ``recvfrom`` per request, one failing).
    Waiting first lets the actor answer, then reads once the bytes are there.
    Bytes already buffered (a frame sent with the upgrade request) are read
    as before. Only plain gevent sockets are changed; others (TLS, whose
    decrypted bytes may wait in the TLS layer while the socket is quiet) keep
    the default.
    """
    raw: Any = getattr(rfile, "raw", None)
    sock: Any = getattr(raw, "_sock", None)
    if type(sock) is not gevent_socket or not hasattr(raw, "__dict__"):
        return
    wait, event = sock._wait, sock._read_event
    recv_into = sock.recv_into

    def readinto(buffer: Any) -> int:
        wait(event)  # raises socket.timeout past the socket's timeout, like recv_into
        return int(recv_into(buffer))  # gevent's: waits again after a spurious wake-up

    raw.readinto = readinto


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

"""A test client for application authors: the real connection code path, no network.

Like Flask-SocketIO's ``test_client``: it runs the same
:class:`~flamigo_actors.websocket.connection.Connection` (reader, actor, outbound
queue, strategies, bus subscriptions) over an in-memory transport, after the
same admission checks as the server (draining, origin allow-list, connection
rate per address: a refused client raises :class:`TestClientRefused`)::

    def test_echo(app):
        with app.extensions["flamigo"].test_client() as client:
            client.authenticate(token)
            assert client.request("app::echo", {"x": 1}) == {"x": 1}
"""

from __future__ import annotations

import itertools
import struct
import time
from typing import Any, Protocol

import gevent
import orjson
from gevent.queue import Empty, Queue

from ..websocket.connection import Connection
from ..core.errors import FlamigoError
from ..websocket.framing import CloseRequired, ConnectionEnded
from ..websocket.hub import Hub

__all__ = ["MemoryTransport", "TestClient", "TestClientError", "TestClientRefused"]

_CLOSED = object()


class TestClientError(FlamigoError):
    """An ``error`` reply received by :meth:`TestClient.request`."""

    __test__ = False  # not a pytest test class

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(
            f"error reply: {payload.get('status')} {payload.get('message')}",
            public=payload.get("message"),
            status=payload.get("status"),
            field_errors=payload.get("fieldErrors"),
        )
        self.payload = payload


class TestClientRefused(TestClientError):
    """The upgrade was refused by admission (403 origin, 429 rate, 503 draining)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__({"status": status, "message": message})


class TestHost(Protocol):
    """What the test client needs from the extension."""

    @property
    def hub(self) -> Hub: ...

    @property
    def strategies(self) -> Any: ...


class MemoryTransport:
    """A :class:`~flamigo_actors.websocket.framing.Transport` whose peer is a :class:`TestClient`."""

    def __init__(self, remote_addr: str) -> None:
        self.remote_addr = remote_addr
        self.closed = False
        self.max_message_size = 65536
        self.on_control: Any = None
        self.on_activity: Any = None
        self.inbound: Queue = Queue()
        self.received: Queue = Queue()
        self.close_code: int | None = None
        self.close_reason: str | None = None

    # the connection's side

    def receive(self) -> tuple[bool, bytes]:
        item = self.inbound.get()
        if item is _CLOSED:
            raise ConnectionEnded(self.close_code or 1006, self.close_reason or "connection lost")
        binary, data = item
        self.on_activity()
        if len(data) > self.max_message_size:
            raise CloseRequired(1009, f"message larger than {self.max_message_size} bytes")
        return binary, data

    def try_send(self, data: bytes | memoryview) -> int:
        if self.closed:
            raise OSError("transport closed")
        frames = bytes(data)
        for opcode, payload in _unframe(frames):  # several when the outbound queue was corked
            if opcode == 0x1:
                self.received.put(orjson.loads(payload))
            elif opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.close_code = code
                self.close_reason = payload[2:].decode("utf-8", "replace")
        return len(frames)

    def send_all(self, data: bytes | memoryview) -> None:
        self.try_send(data)

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.inbound.put(_CLOSED)
            self.received.put(_CLOSED)


def _unframe(frames: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of each whole, unmasked frame in ``frames`` (one send's bytes)."""
    out = []
    start = 0
    while start < len(frames):
        opcode, length = frames[start] & 0x0F, frames[start + 1] & 0x7F
        offset = start + 2
        if length == 126:
            length, offset = struct.unpack("!H", frames[offset:offset + 2])[0], offset + 2
        elif length == 127:
            length, offset = struct.unpack("!Q", frames[offset:offset + 8])[0], offset + 8
        out.append((opcode, frames[offset:offset + length]))
        start = offset + length
    return out


class TestClient:
    """Drives one connection of ``flamigo`` in memory.

    Args:
        flamigo: the extension of the app under test.
        remote_addr: what the connection reports as the peer address (its
            host part is the address the connection rate limit counts).
        timeout: default seconds to wait for a reply.
        origin: the ``Origin`` header to present (checked against
            ``FLAMIGO_ALLOWED_ORIGINS``); ``None`` sends none, as non-browser clients do.
        host: the ``Host`` header (a same-host origin is always allowed).

    Raises:
        TestClientRefused: admission refused the connection, as the server would.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        flamigo: TestHost,
        *,
        remote_addr: str = "test:0",
        timeout: float = 5.0,
        origin: str | None = None,
        host: str = "localhost",
    ) -> None:
        environ: dict[str, Any] = {
            "REMOTE_ADDR": remote_addr.rsplit(":", 1)[0],
            "HTTP_HOST": host,
            "HTTP_UPGRADE": "websocket",
        }
        if origin is not None:
            environ["HTTP_ORIGIN"] = origin
        refusal = flamigo.hub.admit(environ)
        if refusal is not None:
            raise TestClientRefused(*refusal)
        self.flamigo = flamigo
        self.transport = MemoryTransport(remote_addr)
        self.connection = Connection(flamigo.hub, self.transport)
        self.timeout = timeout
        self._acks = itertools.count(1)
        self._backlog: list[dict[str, Any]] = []
        self._reader = gevent.spawn(self.connection.run)
        gevent.sleep(0)  # let the connection start its actor

    def __enter__(self) -> TestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def conn_id(self) -> str:
        """The connection id the server assigned."""
        return self.connection.client.conn_id

    @property
    def closed(self) -> bool:
        """Whether the connection has ended."""
        return self.transport.closed

    @property
    def close_code(self) -> int | None:
        """The close code the server sent, if it closed the connection."""
        return self.transport.close_code

    def send_raw(self, data: str | bytes, *, binary: bool = False) -> None:
        """Send one frame as it is (text unless ``binary``)."""
        if self.transport.closed:
            raise RuntimeError("the test connection is closed")
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        self.transport.inbound.put((binary, payload))

    def send(self, topic: str, payload: Any = None, ack_id: Any = None) -> None:
        """Send a request envelope (with ``ackId`` when ``ack_id`` is given)."""
        envelope: dict[str, Any] = {"topic": topic, "payload": payload}
        if ack_id is not None:
            envelope["ackId"] = ack_id
        self.send_raw(orjson.dumps(envelope))

    def receive(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message from the server (reply, error or push).

        Raises:
            TimeoutError: nothing arrived in time.
            ConnectionError: the connection closed.
        """
        if self._backlog:
            return self._backlog.pop(0)
        return self._next(timeout)

    def _next(self, timeout: float | None) -> dict[str, Any]:
        try:
            item = self.transport.received.get(timeout=self.timeout if timeout is None else timeout)
        except Empty:
            raise TimeoutError("no message from the server in time") from None
        if item is _CLOSED:
            self.transport.received.put(_CLOSED)
            raise ConnectionError(f"connection closed ({self.close_code} {self.close_reason})")
        return item  # type: ignore[no-any-return]

    @property
    def close_reason(self) -> str | None:
        """The close reason the server sent, if any."""
        return self.transport.close_reason

    def request(self, topic: str, payload: Any = None, *, timeout: float | None = None) -> Any:
        """Call a strategy and return its reply payload.

        Messages that arrive meanwhile (pushes) are kept for :meth:`receive`.

        Raises:
            TestClientError: the server answered with an ``error`` message.
        """
        ack_id = f"t{next(self._acks)}"
        self.send(topic, payload, ack_id)
        skipped: list[dict[str, Any]] = []
        try:
            while True:
                message = self._next(timeout)
                if message.get("ackId") == ack_id:
                    if message["topic"] == "error":
                        raise TestClientError(message["payload"])
                    return message["payload"]
                skipped.append(message)
        finally:
            self._backlog.extend(skipped)

    def authenticate(self, token: str) -> dict[str, Any]:
        """Call ``app::websocket:auth`` with ``token``; returns the reply payload."""
        namespace = self.flamigo.strategies.namespace
        return self.request(f"{namespace}::websocket:auth", {"token": token})  # type: ignore[no-any-return]

    def pushes(
        self, client_topic: str | None = None, *, count: int = 1, wait: float = 0.0
    ) -> list[dict[str, Any]]:
        """Pushes received so far (only ``client_topic`` if given), removed from the backlog.

        Waits up to ``wait`` seconds until at least ``count`` have arrived.
        """
        deadline = time.monotonic() + wait
        while True:
            self._drain_now()
            found = [
                m for m in self._backlog
                if "ackId" not in m and m.get("topic") != "error"
                and (client_topic is None or m.get("topic") == client_topic)
            ]
            remaining = deadline - time.monotonic()
            if len(found) >= count or remaining <= 0:
                break
            try:
                self._backlog.append(self._next(remaining))
            except (TimeoutError, ConnectionError):
                break
        for message in found:
            self._backlog.remove(message)
        return found

    def _drain_now(self) -> None:
        received = self.transport.received
        while True:
            try:
                item = received.get_nowait()
            except Empty:
                return
            if item is _CLOSED:
                received.put(_CLOSED)
                return
            self._backlog.append(item)

    def close(self, code: int = 1000) -> None:
        """Close from the client side and wait until the server has cleaned up."""
        if not self.transport.closed:
            self.transport.close_code = self.transport.close_code or code
            self.transport.close_reason = self.transport.close_reason or "client closed"
            self.transport.abort()
        self._reader.join(timeout=self.timeout)
        ref = self.connection.ref
        if ref is not None:
            ref.actor_stopped.wait(timeout=self.timeout)

"""A raw WebSocket client that speaks the framing itself, so it can send anything.

Libraries refuse to send unmasked frames, reserved bits, bad opcodes, lengths
that lie or invalid UTF-8 in text frames; hostile clients do not. This client
does the HTTP upgrade over a plain socket and then writes whatever bytes a
test builds with :func:`frame`. It reads the server's frames back (server
frames are never masked) so tests can check every reply and close code.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from typing import Any

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
    mask: bytes | None = None,
) -> bytes:
    """A client frame; ``length`` may announce a size other than the payload's."""
    announced = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | ((rsv & 0x7) << 4) | (opcode & 0xF)
    mask_bit = 0x80 if masked else 0
    if announced < 126:
        head = bytes((b0, mask_bit | announced))
    elif announced < 65536:
        head = struct.pack("!BBH", b0, mask_bit | 126, announced)
    else:
        head = struct.pack("!BBQ", b0, mask_bit | 127, announced)
    if not masked:
        return head + payload
    key = mask if mask is not None else os.urandom(4)
    return head + key + _xor(payload, key)


def _xor(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


def text(message: Any) -> bytes:
    """A masked text frame carrying ``message`` (JSON-encoded unless bytes or str)."""
    if isinstance(message, bytes):
        data = message
    elif isinstance(message, str):
        data = message.encode("utf-8")
    else:
        data = json.dumps(message).encode("utf-8")
    return frame(OP_TEXT, data)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


class Refused(Exception):
    """The server answered the upgrade request with something other than 101."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


class RawWs:
    """One raw WebSocket connection to ``127.0.0.1:port``.

    Args:
        port: the server's port.
        path: the WebSocket endpoint.
        headers: extra request headers (``Origin``...).
        timeout: seconds any single read may wait.
        rcvbuf: a small ``SO_RCVBUF`` makes a client that stops reading fill up fast.
        source: the local address to connect from (``127.0.0.2``...: one address
            can open only about 28,000 connections to one server port).
    """

    def __init__(
        self,
        port: int,
        path: str = "/ws",
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
        rcvbuf: int | None = None,
        source: str | None = None,
    ) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source is not None:
            sock.bind((source, 0))
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        self.sock = sock
        self.timeout = timeout
        self._buffer = b""
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = self._until(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            body = self._buffer
            sock.close()
            raise Refused(status, body)

    # -- writing ---------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write raw bytes (frames built with :func:`frame`, or anything at all)."""
        self.sock.sendall(data)

    def send_json(self, message: Any) -> None:
        self.send(text(message))

    def request(self, topic: str, payload: Any = None, ack: Any = 1) -> dict[str, Any]:
        """Send one request and return the next text message (assumed to be its reply)."""
        self.send_json({"topic": topic, "payload": payload, "ackId": ack})
        return self.recv_json()

    def close(self, code: int = 1000) -> None:
        """Send a close frame and wait for the server's answer (or EOF)."""
        try:
            self.send(frame(OP_CLOSE, close_payload(code)))
            self.read_until_close(timeout=5)
        except OSError:
            pass
        self.drop()

    def drop(self) -> None:
        """Close the socket without a WebSocket close frame (a network drop)."""
        try:
            self.sock.close()
        except OSError:
            pass

    # -- reading ---------------------------------------------------------------

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from the server in time")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no data from the server in time") from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return False
        self._buffer += chunk
        return True

    def _until(self, marker: bytes) -> bytes:
        deadline = time.monotonic() + self.timeout
        while marker not in self._buffer:
            if not self._fill(deadline):
                raise ConnectionError("server closed during the handshake")
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def read_frame(self, timeout: float | None = None) -> tuple[int, bytes] | None:
        """The next server frame as ``(opcode, payload)``; None at EOF.

        A frame is taken from the buffer only once it is whole: a ``TimeoutError`` in the
        middle of one leaves it there for the next read (the stream stays in step).
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            parsed = _parse_frame(self._buffer)
            if parsed is not None:
                opcode, payload, used = parsed
                self._buffer = self._buffer[used:]
                return opcode, payload
            if not self._fill(deadline):
                return None

    def recv_json(self, timeout: float | None = None) -> dict[str, Any]:
        """The next text message, decoded (pings are answered, as a browser would)."""
        while True:
            got = self.read_frame(timeout)
            if got is None:
                raise ConnectionError("server closed the connection")
            opcode, payload = got
            if opcode == OP_TEXT:
                return json.loads(payload)  # type: ignore[no-any-return]
            if opcode == OP_PING:
                self.send(frame(OP_PONG, payload))
            if opcode == OP_CLOSE:
                raise ConnectionError(f"server closed: {close_code(payload)}")

    def read_until_close(self, timeout: float | None = None) -> Ending:
        """Read everything until the server's close frame or EOF."""
        ending = Ending()
        while True:
            got = self.read_frame(timeout)
            if got is None:
                return ending
            opcode, payload = got
            if opcode == OP_TEXT:
                ending.messages.append(json.loads(payload))
            elif opcode == OP_PONG:
                ending.pongs.append(payload)
            elif opcode == OP_CLOSE:
                ending.code = close_code(payload)
                ending.reason = payload[2:].decode("utf-8")
                # the server tears the socket down after its close frame
                ending.eof = self.read_frame(timeout) is None
                return ending
            else:
                ending.other.append((opcode, payload))


def close_code(payload: bytes) -> int | None:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


class Ending:
    """What a connection received until it ended: messages, pongs, close code."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.pongs: list[bytes] = []
        self.other: list[tuple[int, bytes]] = []
        self.code: int | None = None
        self.reason = ""
        self.eof = False

    def __repr__(self) -> str:
        return (
            f"Ending(code={self.code}, reason={self.reason!r}, messages={self.messages[:5]!r}"
            f"{'...' if len(self.messages) > 5 else ''} ({len(self.messages)}), pongs={len(self.pongs)})"
        )


def _parse_frame(buffer: bytes) -> tuple[int, bytes, int] | None:
    """``(opcode, payload, bytes used)`` of the whole server frame at the start of ``buffer``,
    or None while it is incomplete."""
    if len(buffer) < 2:
        return None
    b0, b1 = buffer[0], buffer[1]
    assert not b1 & 0x80, "server frames must not be masked"
    assert b0 & 0x80, "server frames are never fragmented"
    length, start = b1 & 0x7F, 2
    if length == 126:
        if len(buffer) < 4:
            return None
        (length,), start = struct.unpack("!H", buffer[2:4]), 4
    elif length == 127:
        if len(buffer) < 10:
            return None
        (length,), start = struct.unpack("!Q", buffer[2:10]), 10
    if len(buffer) < start + length:
        return None
    return b0 & 0x0F, buffer[start:start + length], start + length

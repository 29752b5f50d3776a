"""RFC 6455 framing for the server side: parsing client frames, building server frames.

Pure Python, no gevent-websocket and no socket: a :class:`MessageReader` reads
from any blocking ``read(n)`` callable, so the same parser serves the
gevent-websocket adapter (:mod:`flamigo_actors.websocket.transport`) and
anything else that can hand it bytes.

Guarantees of :meth:`MessageReader.receive`:

* every frame header is checked whole before a byte of its payload is read:
  reserved bits, the client mask, known opcodes, control frames whole and
  under 126 bytes, continuation frames only inside a message, and the
  message size limit (all fragments together). A violation raises
  :class:`CloseRequired` (1002, or 1009 for size) and nothing after the
  offending frame is read;
* pings are answered through ``on_control`` (so a pong never interleaves
  with a half-written message), pongs are ignored;
* a text message's UTF-8 is checked as its bytes arrive whenever the message
  comes in pieces: a fragmented text message is validated fragment by
  fragment, and a text frame whose payload trickles in is validated chunk by
  chunk, so invalid UTF-8 closes with 1007 at the first bad byte rather than
  after the whole message (Autobahn 6.4.x). A text message that arrives whole
  in one frame is returned unchecked: the protocol layer decodes it anyway
  and reports invalid UTF-8 then (one decode instead of two);
* a close frame ends reading with :class:`ConnectionEnded` carrying the code
  to echo; a malformed one (1-byte body, invalid code, reason not UTF-8)
  raises :class:`CloseRequired` instead.

Failure behaviour: a lost connection (EOF or ``OSError`` while reading)
raises :class:`ConnectionEnded` with code 1006 and nothing to answer.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable
from typing import Any, Protocol

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INVALID_PAYLOAD",
    "CLOSE_NORMAL",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_TOO_BIG",
    "CloseRequired",
    "ConnectionEnded",
    "MessageReader",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "PING_FRAME",
    "Transport",
    "binary_frame",
    "close_frame",
    "parse_close",
    "pong_frame",
    "text_frame",
    "unmask",
    "valid_close_code",
]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_TOO_BIG = 1009

PING_FRAME = b"\x89\x00"
"""A server ping with an empty payload (keepalive)."""

_OPCODES = frozenset((OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))

_utf8_decoder = codecs.getincrementaldecoder("utf-8")

_CHUNK = 256 * 1024
"""Most bytes asked for at once while a text frame trickles in (each ask allocates that much)."""


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
    """The peer broke a rule: the server must close with ``code`` (1002, 1007, 1009...).

    Nothing after the offending frame is read; requests read before it are
    still answered, then the close frame follows.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason
        self.answer = code


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


# -- building server frames (never masked) ---------------------------------------


def text_frame(payload: bytes) -> bytes:
    """A complete, unmasked server-to-client text frame carrying ``payload``."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def binary_frame(payload: bytes) -> bytes:
    """A complete, unmasked server-to-client binary frame carrying ``payload``."""
    n = len(payload)
    if n < 126:
        return bytes((0x82, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x82, 126, n) + payload
    return struct.pack("!BBQ", 0x82, 127, n) + payload


def pong_frame(payload: bytes) -> bytes:
    """The pong answering a ping whose (unmasked, at most 125-byte) payload was ``payload``."""
    return bytes((0x8A, len(payload))) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame with ``code`` and a reason (truncated to fit a control frame)."""
    body = struct.pack("!H", code) + reason.encode("utf-8")[:123]
    return bytes((0x88, len(body))) + body


# -- close frames from the peer ------------------------------------------------


def valid_close_code(code: int) -> bool:
    """Whether a peer may send ``code`` in a close frame (RFC 6455 7.4).

    1000-1003, 1007-1014 and 3000-4999; 1004-1006 and 1015 are reserved for
    reporting and never sent, the rest is unassigned.
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def parse_close(payload: bytes) -> tuple[int, str]:
    """The ``(code, reason)`` of a peer's close frame body; ``(1005, "")`` when it has none.

    Raises:
        CloseRequired: 1002 for a 1-byte body or a code a peer may not send,
            1007 for a reason that is not UTF-8.
    """
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise CloseRequired(CLOSE_PROTOCOL_ERROR, "malformed close frame")
    (code,) = struct.unpack("!H", payload[:2])
    if not valid_close_code(code):
        raise CloseRequired(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise CloseRequired(CLOSE_INVALID_PAYLOAD, "close reason is not valid UTF-8") from None
    return code, reason


def _peer_closed(payload: bytes) -> ConnectionEnded:
    code, _ = parse_close(payload)
    # Report the peer's code; the connection echoes it (RFC 6455 5.5.1)
    # after answering the requests it read before the close.
    return ConnectionEnded(code, "client closed", answer=CLOSE_NORMAL if code == 1005 else code)


# -- parsing client frames -------------------------------------------------------


def unmask(payload: bytes, mask: bytes) -> bytes:
    """``payload`` XOR the repeated 4-byte ``mask`` (masking and unmasking are the same)."""
    # XOR as one big integer: linear time in C instead of a Python loop per byte.
    n = len(payload)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        n, "little"
    )


def _lost(err: OSError | None = None) -> ConnectionEnded:
    if err is None:
        return ConnectionEnded(1006, "connection lost")
    return ConnectionEnded(1006, f"connection lost ({err.strerror or err})")


def _invalid_text() -> CloseRequired:
    return CloseRequired(CLOSE_INVALID_PAYLOAD, "text message is not valid UTF-8")


def _nothing() -> None:
    pass


def _drop(frame: bytes) -> None:
    pass


class MessageReader:
    """Reads whole messages from a client's byte stream (the server side of RFC 6455).

    Args:
        read: blocking ``read(n)``: exactly ``n`` bytes, fewer (or ``None``)
            only at the end of the stream.
        read_some: blocking ``read_some(n)``: between 1 and ``n`` bytes as soon
            as any are available (``BufferedReader.read1``), ``b""`` at the end.
            With it, a text frame whose payload trickles in is checked for
            UTF-8 as it arrives; without it (``None``) payloads are read whole.

    Attributes, set by whoever serves the connection:

    * ``max_message_size``: largest inbound message (all fragments together);
      a larger one raises :class:`CloseRequired` (1009) before it is read;
    * ``on_control``: called with each pong frame to send, so it can go
      through the same ordered outbound path as messages;
    * ``on_activity``: called whenever a frame arrives (keepalive bookkeeping).
    """

    def __init__(
        self,
        read: Callable[[int], bytes | None],
        read_some: Callable[[int], bytes | None] | None = None,
    ) -> None:
        self._read = read
        self._read_some = read_some or read
        self.max_message_size = 65536
        self.on_control: Callable[[bytes], Any] = _drop
        self.on_activity: Callable[[], None] = _nothing

    def _exactly(self, n: int) -> bytes:
        try:
            data = self._read(n)
        except OSError as err:
            raise _lost(err) from None
        if data is None or len(data) != n:
            raise _lost()
        return data

    def receive(self) -> tuple[bool, bytes]:
        """Block until a whole message arrives; return ``(is_binary, data)``.

        Raises:
            ConnectionEnded: the peer closed (``answer`` is the code to echo)
                or the connection was lost.
            CloseRequired: the peer broke the protocol (1002), sent invalid
                UTF-8 in a text message checked here (1007), or exceeded
                ``max_message_size`` (1009).
        """
        opcode = 0
        # Fragments of one message: never more than max_message_size bytes,
        # however many (possibly empty) fragments a peer sends.
        fragments: bytearray | None = None
        size = 0
        limit = self.max_message_size
        utf8: Any = None  # the incremental decoder of a text message arriving in pieces
        read = self._read
        while True:
            # Reads are inlined (no helper call per read): this loop is the
            # inbound hot path.
            try:
                b0, b1 = read(2)  # type: ignore[misc]
            except OSError as err:
                raise _lost(err) from None
            except (ValueError, TypeError):  # fewer than 2 bytes: the stream ended
                raise _lost() from None
            self.on_activity()
            fin, op, length = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if b0 & 0x70:
                raise CloseRequired(CLOSE_PROTOCOL_ERROR, "reserved bits set without an extension")
            if not b1 & 0x80:
                raise CloseRequired(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
            if op not in _OPCODES:
                raise CloseRequired(CLOSE_PROTOCOL_ERROR, f"unknown opcode {op}")
            if length == 126:
                (length,) = struct.unpack("!H", self._exactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._exactly(8))
            # The whole header is checked before a byte of payload is read.
            if op >= 0x8:
                if not fin or length > 125:
                    raise CloseRequired(
                        CLOSE_PROTOCOL_ERROR, "control frames must be whole and under 126 bytes"
                    )
            else:
                if op == OP_CONT:
                    if not opcode:
                        raise CloseRequired(
                            CLOSE_PROTOCOL_ERROR, "continuation frame without a message"
                        )
                elif opcode:
                    raise CloseRequired(
                        CLOSE_PROTOCOL_ERROR, "new message before the previous one ended"
                    )
                if size + length > limit:
                    raise CloseRequired(CLOSE_TOO_BIG, f"message larger than {limit} bytes")
            text = (op or opcode) == OP_TEXT  # a text frame (control frames never are)
            try:
                mask = read(4)
                if not text:
                    data = read(length)
                else:
                    # What has arrived of a text frame; the rest, if any, is
                    # checked for UTF-8 as it trickles in (below).
                    data = self._read_some(length) if length else b""
            except OSError as err:
                raise _lost(err) from None
            if mask is None or len(mask) != 4:
                raise _lost()
            if data is not None and len(data) == length:
                payload = unmask(data, mask) if length else b""
                if text and (utf8 is not None or not fin):
                    # A fragmented text message: each fragment is checked as it comes.
                    if utf8 is None:
                        utf8 = _utf8_decoder()
                    try:
                        utf8.decode(payload, fin)
                    except UnicodeDecodeError:
                        raise _invalid_text() from None
            elif text:
                if utf8 is None:
                    utf8 = _utf8_decoder()
                payload = self._trickled(data or b"", length, mask, utf8, fin)
            else:
                raise _lost()
            if op == OP_PING:
                self.on_control(pong_frame(payload))
                continue
            if op == OP_PONG:
                continue
            if op == OP_CLOSE:
                raise _peer_closed(payload)
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

    def _trickled(self, first: bytes, length: int, mask: bytes, utf8: Any, fin: int) -> bytes:
        """The rest of a text frame's payload, its UTF-8 checked chunk by chunk as it arrives."""
        received = bytearray()
        chunk = first
        while True:
            if not chunk:
                raise _lost()
            offset = len(received) % 4
            plain = unmask(chunk, mask[offset:] + mask[:offset])
            try:
                utf8.decode(plain, False)
            except UnicodeDecodeError:
                raise _invalid_text() from None
            received += plain
            if len(received) == length:
                break
            try:
                chunk = self._read_some(min(length - len(received), _CHUNK)) or b""
            except OSError as err:
                raise _lost(err) from None
        if fin:
            try:
                utf8.decode(b"", True)
            except UnicodeDecodeError:
                raise _invalid_text() from None
        return bytes(received)

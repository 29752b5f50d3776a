"""RFC 6455 framing: text arriving in pieces is checked for UTF-8 as it arrives.

Two levels:

* the parser itself (:class:`~flamigo_actors.websocket.framing.MessageReader`),
  fed chunk by chunk through its documented ``read``/``read_some`` callables,
  so every split of a frame is checked deterministically;
* the live server over real loopback sockets: invalid UTF-8 inside a
  fragmented text message, or inside a text frame still trickling in, closes
  with 1007 at once (Autobahn 6.4.x), without waiting for the rest of the
  message, and after the replies to what was read before.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator

import pytest

from flamigo_actors.websocket.framing import (
    CloseRequired,
    ConnectionEnded,
    MessageReader,
    binary_frame,
    close_frame,
    parse_close,
    pong_frame,
    text_frame,
    unmask,
    valid_close_code,
)
from tests.rawws import OP_BINARY, OP_CONT, OP_PING, OP_TEXT, RawWs, close_payload, frame, text
from tests.support import LiveServer, start_live_server

# -- the parser, fed chunk by chunk ----------------------------------------------------


class Chunks:
    """A byte stream that arrives in the given chunks: what a socket's buffered reader does."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = [c for c in chunks if c]
        self.taken = 0  # chunks handed out (wholly or partly)
        self._current = b""

    def _next(self) -> bool:
        if not self.chunks:
            return False
        self._current += self.chunks.pop(0)
        self.taken += 1
        return True

    def read(self, n: int) -> bytes:
        while len(self._current) < n and self._next():
            pass
        data, self._current = self._current[:n], self._current[n:]
        return data

    def read_some(self, n: int) -> bytes:
        if not self._current:
            self._next()
        data, self._current = self._current[:n], self._current[n:]
        return data


def reader(*chunks: bytes) -> tuple[MessageReader, Chunks]:
    source = Chunks(*chunks)
    parser = MessageReader(source.read, source.read_some)
    parser.max_message_size = 1 << 20
    return parser, source


MASK = b"\x17\xa3\x5c\xe9"
TEXT = "κόσμε, 世界 and 😀 — split anywhere".encode("utf-8")


def test_a_text_frame_split_anywhere_is_read_whole() -> None:
    whole = frame(OP_TEXT, TEXT, mask=MASK)
    head = len(whole) - len(TEXT)
    for cut in range(head, len(whole)):
        for second in range(cut + 1, len(whole) + 1):
            parser, _ = reader(whole[:cut], whole[cut:second], whole[second:])
            assert parser.receive() == (False, TEXT), (cut, second)


def test_a_fragmented_text_message_split_mid_character_is_read_whole() -> None:
    for cut in range(len(TEXT) + 1):
        stream = frame(OP_TEXT, TEXT[:cut], fin=False) + frame(OP_CONT, TEXT[cut:])
        parser, _ = reader(stream)
        assert parser.receive() == (False, TEXT), cut


def test_invalid_utf8_in_a_fragment_fails_before_the_next_one_is_read() -> None:
    parser, source = reader(
        frame(OP_TEXT, b"\xce\xba\xe1\xbd\xb9", fin=False),
        frame(OP_CONT, b"\xf4\x90\x80\x80", fin=False),  # 0x110000: out of range
        frame(OP_CONT, b"edited"),
    )
    with pytest.raises(CloseRequired) as failed:
        parser.receive()
    assert failed.value.code == 1007
    assert source.taken == 2, "the third fragment must not be waited for"


def test_invalid_utf8_trickling_into_a_text_frame_fails_before_the_rest_arrives() -> None:
    payload = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5" + b"\xf4\x90\x80\x80" + b"edited"
    whole = frame(OP_TEXT, payload, mask=MASK)
    head = len(whole) - len(payload)
    parser, source = reader(whole[: head + 11], whole[head + 11 : head + 13], whole[head + 13 :])
    with pytest.raises(CloseRequired) as failed:
        parser.receive()
    assert failed.value.code == 1007
    assert source.taken == 2


def test_a_message_ending_mid_character_fails_with_1007() -> None:
    parser, _ = reader(frame(OP_TEXT, b"ok \xe2\x82", fin=False) + frame(OP_CONT, b""))
    with pytest.raises(CloseRequired) as failed:
        parser.receive()
    assert failed.value.code == 1007


def test_binary_messages_are_not_checked_for_utf8() -> None:
    data = b"\xff\xfe\xf4\x90" * 10
    parser, _ = reader(frame(OP_BINARY, data[:7], fin=False), frame(OP_CONT, data[7:]))
    assert parser.receive() == (True, data)


def test_pings_inside_a_fragmented_text_message_are_answered_in_order() -> None:
    pongs: list[bytes] = []
    parser, _ = reader(
        frame(OP_TEXT, TEXT[:3], fin=False) + frame(OP_PING, b"p1")
        + frame(OP_CONT, TEXT[3:9], fin=False) + frame(OP_PING, b"") + frame(OP_CONT, TEXT[9:])
    )
    parser.on_control = pongs.append
    assert parser.receive() == (False, TEXT)
    assert pongs == [pong_frame(b"p1"), pong_frame(b"")]


def test_a_stream_ending_inside_a_trickling_frame_is_a_lost_connection() -> None:
    whole = frame(OP_TEXT, TEXT)
    parser, _ = reader(whole[:-5])
    with pytest.raises(ConnectionEnded) as ended:
        parser.receive()
    assert (ended.value.code, ended.value.answer) == (1006, None)


def test_close_frames() -> None:
    assert parse_close(b"") == (1005, "")
    assert parse_close(close_payload(4001, "bye ✓".encode())) == (4001, "bye ✓")
    for bad, code in ((b"\x03", 1002), (close_payload(1005), 1002), (close_payload(999), 1002),
                      (close_payload(2999), 1002), (close_payload(5000), 1002),
                      (close_payload(1000, b"\xc3"), 1007)):
        with pytest.raises(CloseRequired) as failed:
            parse_close(bad)
        assert failed.value.code == code, bad
    assert [c for c in range(0, 5100) if valid_close_code(c)] == [
        *range(1000, 1004), *range(1007, 1015), *range(3000, 5000)
    ]
    parser, _ = reader(frame(OP_TEXT, b"x", fin=False) + frame(0x8, close_payload(1001)))
    with pytest.raises(ConnectionEnded) as ended:
        parser.receive()
    assert (ended.value.code, ended.value.answer) == (1001, 1001)


def test_server_frames() -> None:
    for n in (0, 125, 126, 65535, 65536):
        data = os.urandom(n)
        for build, opcode in ((text_frame, 0x81), (binary_frame, 0x82)):
            built = build(data)
            assert built[0] == opcode and built.endswith(data)
            length = built[1]
            if n < 126:
                assert length == n
            elif n < 65536:
                assert (length, struct.unpack("!H", built[2:4])[0]) == (126, n)
            else:
                assert (length, struct.unpack("!Q", built[2:10])[0]) == (127, n)
    assert close_frame(1000, "é" * 100) == b"\x88\x7d\x03\xe8" + ("é" * 100).encode()[:123]
    assert unmask(unmask(TEXT, MASK), MASK) == TEXT


# -- the live server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    """The demo app with auth off, so requests reach ``app::echo``."""
    from app import create_app

    live = start_live_server(create_app({"TESTING": True, "FLAMIGO_AUTH_REQUIRED": False}))
    yield live
    live.stop()


def echo_request(payload: str, ack: int) -> bytes:
    return f'{{"topic": "app::echo", "payload": "{payload}", "ackId": {ack}}}'.encode("utf-8")


def test_invalid_utf8_in_a_fragment_closes_1007_without_waiting_for_the_message_end(
    server: LiveServer,
) -> None:
    ws = RawWs(server.port)
    ws.send(text(echo_request("before", 1)))
    start = echo_request("κόσμε", 2)
    ws.send(frame(OP_TEXT, start[:20], fin=False))
    ws.send(frame(OP_CONT, start[20:30] + b"\xf4\x90", fin=False))
    # The rest of the message never comes: the server must not wait for it.
    ending = ws.read_until_close(timeout=5)
    assert ending.code == 1007
    assert ending.eof
    assert ending.messages == [{"topic": "app::echo", "payload": "before", "ackId": 1}]
    ws.drop()


def test_invalid_utf8_trickling_into_a_text_frame_closes_1007_at_once(server: LiveServer) -> None:
    ws = RawWs(server.port)
    ws.send(text(echo_request("before", 1)))
    body = echo_request("κόσμε \xf4\x90 edited", 2).replace("\xf4\x90".encode(), b"\xf4\x90")
    whole = frame(OP_TEXT, body)
    head = len(whole) - len(body)
    bad = body.index(b"\xf4\x90")
    ws.send(whole[: head + 5])
    time.sleep(0.05)  # pacing only: the frame arrives in pieces
    ws.send(whole[head + 5 : head + bad + 2])
    # The rest of the frame never comes: the server must not wait for it.
    ending = ws.read_until_close(timeout=5)
    assert ending.code == 1007
    assert ending.eof
    assert ending.messages == [{"topic": "app::echo", "payload": "before", "ackId": 1}]
    ws.drop()


def test_text_trickling_in_and_fragmented_mid_character_is_answered(server: LiveServer) -> None:
    ws = RawWs(server.port)
    message = "κόσμε 世界 😀"
    body = echo_request(message, 7)
    whole = frame(OP_TEXT, body)
    head = len(whole) - len(body)
    for cut in (3, head + 1, head + body.index("ό".encode()) + 1, len(whole) - 1):  # mask, payload, mid-character
        ws.send(whole[:cut])
        time.sleep(0.02)  # pacing only
        ws.send(whole[cut:])
        assert ws.recv_json() == {"topic": "app::echo", "payload": message, "ackId": 7}
    middle = body.index("世".encode()) + 1
    ws.send(frame(OP_TEXT, body[:middle], fin=False) + frame(OP_PING, b"hi"))
    ws.send(frame(OP_CONT, body[middle:]))
    assert ws.recv_json() == {"topic": "app::echo", "payload": message, "ackId": 7}
    ws.close()

"""Hostile input over real sockets: property-based framing and envelope fuzzing.

Raw clients (:mod:`tests.rawws`) speak the WebSocket framing themselves, so
they can send what no library would: random bytes after the handshake,
unmasked frames, reserved bits, unknown opcodes, lying lengths, invalid UTF-8,
fragments with pings between them, wrong types in every envelope field.

A small reference model (:func:`predict`), written from RFC 6455 and the
documented protocol table rather than from the server's code, says what the
server must answer for any byte stream: the replies in order, the pongs, and
the close code. Hypothesis generates the streams; each example checks the
server's answer against the model, and that a bystander client is still
served. After each suite the server must hold exactly as many actors,
greenlets, connections and subscriptions as before.

Example counts are fixed (see the constants) so the suite stays fast.
"""

from __future__ import annotations

import codecs
import json
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import gevent
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.census import back_to_baseline, quiet_census, rss
from tests.rawws import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawWs,
    close_payload,
    frame,
    text,
)
from tests.support import LiveServer, start_live_server

LIMIT = 256 * 1024
"""FLAMIGO_MAX_MESSAGE_SIZE of the server under test (room for 100,000 nesting levels)."""

STREAM_EXAMPLES = 250
"""Generated frame sequences (valid, fragmented, violating) checked against the model."""
RANDOM_BYTES_EXAMPLES = 150
"""Random byte strings sent right after the handshake."""
ENVELOPE_EXAMPLES = 300
"""Generated request envelopes with any JSON type in every field."""

FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)

REGISTERED = frozenset(
    {"app::echo", "app::demo:fail", "app::demo:slow", "app::demo:deferred", "app::rooms:list",
     "app::rooms:join", "app::rooms:leave", "app::rooms:send", "app::rooms:history",
     "app::rooms:members", "app::websocket:auth", "app::websocket:ping"}
)
"""Strategies the generators avoid (the model knows only app::echo's answer)."""


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    """The demo app, auth off (so requests reach strategies), 256 KiB messages."""
    from app import create_app

    live = start_live_server(
        create_app({"TESTING": True, "FLAMIGO_AUTH_REQUIRED": False, "FLAMIGO_MAX_MESSAGE_SIZE": LIMIT})
    )
    yield live
    live.stop()


@pytest.fixture(scope="module")
def bystander(server: LiveServer) -> Iterator[RawWs]:
    """A well-behaved client that must be served throughout."""
    client = RawWs(server.port)
    yield client
    client.close()


def still_served(bystander: RawWs, n: int) -> None:
    assert bystander.request("app::echo", {"n": n}, ack=n) == {
        "topic": "app::echo", "payload": {"n": n}, "ackId": n
    }


# -- the reference model -----------------------------------------------------------

MISSING = object()


def valid_close_code(code: int) -> bool:
    """Close codes a peer may send (RFC 6455 7.4 and the IANA registry)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def expected_reply(data: bytes) -> dict[str, Any] | None:
    """What a complete, valid-UTF-8 text message must be answered with (the protocol table).

    Returns ``None`` for a request that would reach a real strategy other than
    ``app::echo`` (generators avoid them). Error replies are returned as
    ``{"status": ..., "ackId": ...}`` (message text is checked separately).
    """
    try:
        document = orjson.loads(data)  # the documented decoder: RFC 8259, depth <= 1024, doubles
    except orjson.JSONDecodeError:
        return {"status": 400}
    if not isinstance(document, dict):
        return {"status": 400}
    ack = document.get("ackId", MISSING)
    if ack is not MISSING and (isinstance(ack, bool) or not isinstance(ack, (str, int, float))):
        return {"status": 400}
    with_ack = {} if ack is MISSING else {"ackId": ack}
    topic = document.get("topic")
    if not isinstance(topic, str) or not topic:
        return {"status": 400, **with_ack}
    if topic == "app::echo":
        return {"topic": topic, "payload": document.get("payload"), **with_ack}
    if topic in REGISTERED:
        return None
    if not topic.startswith("app::"):
        return {"status": 403, "message": "invalid scope", **with_ack}
    return {"status": 404, "message": f"unknown strategy {topic}", **with_ack}


@dataclass
class Outcome:
    """What the server must do with a byte stream."""

    replies: list[dict[str, Any] | None] = field(default_factory=list)
    pongs_before: list[bytes] = field(default_factory=list)
    """Pongs that must arrive (pings read before the connection's fate was sealed)."""
    pongs_after: list[bytes] = field(default_factory=list)
    """Pongs that may arrive (pings the reader reads while an actor-level close is under way)."""
    code: int | None = None
    """The close code; ``None`` when the stream just stops (the client then leaves)."""
    complete: bool = True
    """False when the stream stops without a close: replies may be cut short by the EOF."""


def _unmask(payload: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def predict(stream: bytes, limit: int = LIMIT) -> Outcome:
    """The server's answer to ``stream`` per RFC 6455 and the documented close codes."""
    out = Outcome()
    pos = 0
    message_op: int | None = None
    buffered = b""
    actor_close: int | None = None  # 1007 decided in the mailbox; the reader reads on
    pieces: Any = None  # UTF-8 decoder of a fragmented text message: checked as it arrives

    def take(n: int) -> bytes | None:
        nonlocal pos
        if pos + n > len(stream):
            return None
        chunk = stream[pos:pos + n]
        pos += n
        return chunk

    def end(code: int | None, complete: bool = True) -> Outcome:
        out.code = actor_close if actor_close is not None else code
        out.complete = complete or actor_close is not None
        return out

    while True:
        head = take(2)
        if head is None:
            return end(None, complete=False)
        b0, b1 = head
        fin, rsv, op, masked, length = b0 & 0x80, b0 & 0x70, b0 & 0x0F, b1 & 0x80, b1 & 0x7F
        if rsv or not masked or op not in (0, 1, 2, 8, 9, 10):
            return end(1002)
        if length == 126:
            ext = take(2)
            if ext is None:
                return end(None, complete=False)
            (length,) = struct.unpack("!H", ext)
        elif length == 127:
            ext = take(8)
            if ext is None:
                return end(None, complete=False)
            (length,) = struct.unpack("!Q", ext)
        if op >= 8:
            if not fin or length > 125:
                return end(1002)
        else:
            if (op == OP_CONT) != (message_op is not None):
                return end(1002)  # orphan continuation, or a new message inside one
            if len(buffered) + length > limit:
                return end(1009)
        key = take(4)
        body = take(length) if key is not None else None
        if key is None or body is None:
            if key is not None and (op or message_op) == OP_TEXT:
                # The stream ends inside a text frame: what did arrive is
                # checked for UTF-8 before the server waits for more.
                arrived = codecs.getincrementaldecoder("utf-8")() if op == OP_TEXT else pieces
                try:
                    arrived.decode(_unmask(stream[pos:], key), False)
                except UnicodeDecodeError:
                    return end(1007)
            return end(None, complete=False)
        payload = _unmask(body, key)
        if op == OP_PING:
            (out.pongs_after if actor_close is not None else out.pongs_before).append(payload)
            continue
        if op == OP_PONG:
            continue
        if op == OP_CLOSE:
            if len(payload) == 1:
                return end(1002)
            if len(payload) >= 2:
                (code,) = struct.unpack("!H", payload[:2])
                if not valid_close_code(code):
                    return end(1002)
                try:
                    payload[2:].decode("utf-8")
                except UnicodeDecodeError:
                    return end(1007)
                return end(code)
            return end(1000)
        if op != OP_CONT:
            message_op = op
            pieces = codecs.getincrementaldecoder("utf-8")() if op == OP_TEXT and not fin else None
        if pieces is not None:
            try:
                pieces.decode(payload, bool(fin))
            except UnicodeDecodeError:
                return end(1007)  # decided by the reader at the first bad fragment
        buffered += payload
        if not fin:
            continue
        data, kind = buffered, message_op
        buffered, message_op = b"", None
        if actor_close is not None:
            continue  # read after the close began: not answered
        if kind == OP_BINARY:
            out.replies.append({"status": 400})
            continue
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            actor_close = 1007
            continue
        out.replies.append(expected_reply(data))


def check(ws: RawWs, stream: bytes, outcome: Outcome) -> None:
    """Send ``stream``, read the server's answer and compare it with ``outcome``."""
    try:
        ws.send(stream)
    except OSError:
        pass  # the server may close before reading everything (e.g. right after a 1009)
    if outcome.code is None:
        ws.sock.shutdown(socket.SHUT_WR)  # the stream just stops: the client leaves
    ending = ws.read_until_close(timeout=5)
    assert ending.code == outcome.code, (ending, outcome)
    assert not ending.other, ending.other
    expected = outcome.replies if outcome.complete else outcome.replies[: len(ending.messages)]
    assert len(ending.messages) == len(expected), (ending.messages, expected)
    for got, want in zip(ending.messages, expected):
        if want is None:  # a real strategy's reply
            assert got["topic"] != "error", got
        elif "status" in want:
            assert got["topic"] == "error", got
            assert got["payload"]["status"] == want["status"], (got, want)
            assert set(got["payload"]) == {"message", "status"}, got  # no trace, no internals
            if "message" in want:
                assert got["payload"]["message"] == want["message"]
            assert ("ackId" in got) == ("ackId" in want) and got.get("ackId") == want.get("ackId")
        else:
            assert got == want
            assert type(got.get("ackId")) is type(want.get("ackId"))
    pongs = ending.pongs
    assert pongs[: len(outcome.pongs_before)] == outcome.pongs_before, (pongs, outcome)
    assert pongs[len(outcome.pongs_before):] == outcome.pongs_after[: len(pongs) - len(outcome.pongs_before)]
    if outcome.code is not None:
        assert ending.eof, "the server must end the TCP connection after its close frame"


# -- generators --------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
topics = st.one_of(
    st.just("app::echo"),
    st.text(max_size=24).map(lambda s: f"app::{s}"),
    st.text(max_size=24),
    json_values,
).filter(lambda t: t == "app::echo" or not (isinstance(t, str) and t in REGISTERED))
ack_ids = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    json_values,
)
envelopes = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "topic": topics,
            "payload": json_values,
            "ackId": ack_ids,
            "extra": json_values,
        },
    ),
    json_values,  # not an object at all
)


def encode(document: Any) -> bytes:
    return json.dumps(document).encode("utf-8")


def fragments(draw: Any, opcode: int, data: bytes) -> bytes:
    """``data`` as one message split into fragments, with pings and pongs between them."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
    out = b""
    for i, piece in enumerate(pieces):
        op = opcode if i == 0 else OP_CONT
        out += frame(op, piece, fin=i == len(pieces) - 1)
        if i < len(pieces) - 1 and draw(st.booleans()):
            control = draw(st.sampled_from([OP_PING, OP_PONG]))
            out += frame(control, draw(st.binary(max_size=16)))
    return out


@st.composite
def frame_specs(draw: Any) -> bytes:
    kind = draw(
        st.sampled_from(
            ["request", "request", "request", "text", "binary", "bad-utf8", "ping", "pong",
             "close", "raw", "oversize", "orphan", "interleaved", "control-long"]
        )
    )
    if kind == "request":
        document = draw(envelopes)
        return fragments(draw, OP_TEXT, encode(document))
    if kind == "text":
        return fragments(draw, OP_TEXT, draw(st.text(max_size=40)).encode("utf-8"))
    if kind == "binary":
        return fragments(draw, OP_BINARY, draw(st.binary(max_size=40)))
    if kind == "bad-utf8":
        data = draw(st.binary(min_size=1, max_size=40).filter(_not_utf8))
        return fragments(draw, OP_TEXT, data)
    if kind in ("ping", "pong"):
        return frame(OP_PING if kind == "ping" else OP_PONG, draw(st.binary(max_size=125)))
    if kind == "close":
        payload = draw(
            st.one_of(
                st.just(b""),
                st.builds(close_payload, st.integers(0, 65535), st.text(max_size=20).map(str.encode)),
                st.binary(max_size=125),
            )
        )
        return frame(OP_CLOSE, payload)
    if kind == "raw":
        return frame(
            draw(st.integers(0, 15)),
            draw(st.binary(max_size=40)),
            fin=draw(st.booleans()),
            rsv=draw(st.integers(0, 7)),
            masked=draw(st.booleans()),
        )
    if kind == "oversize":
        # Only the header: a server that tried to read the payload would wait forever.
        announced = draw(st.sampled_from([LIMIT + 1, 2**32, 2**62, 2**63 - 1]))
        return frame(OP_TEXT, b"", length=announced)
    if kind == "orphan":
        return frame(OP_CONT, draw(st.binary(max_size=10)))
    if kind == "interleaved":
        return frame(OP_TEXT, b"{", fin=False) + frame(OP_TEXT, b"}")
    return frame(OP_PING, b"x" * draw(st.integers(126, 300)))  # control-long


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


# -- the properties ------------------------------------------------------------------


def test_any_frame_sequence_gets_the_documented_answer(server: LiveServer, bystander: RawWs) -> None:
    """Valid, fragmented and violating frames in any order: replies, pongs and close code as the model says."""
    baseline = quiet_census(server.flamigo, connections=1)
    examples = 0

    @settings(FUZZ, max_examples=STREAM_EXAMPLES)
    @given(st.lists(frame_specs(), min_size=1, max_size=6), st.booleans())
    def sequence(specs: list[bytes], client_closes: bool) -> None:
        nonlocal examples
        examples += 1
        stream = b"".join(specs)
        if client_closes:
            stream += frame(OP_CLOSE, close_payload(1000))  # ignored if something ended it first
        outcome = predict(stream)
        if any(reply is None for reply in outcome.replies):
            return
        check(RawWs(server.port), stream, outcome)
        still_served(bystander, examples)

    sequence()
    assert examples >= STREAM_EXAMPLES // 2
    back_to_baseline(server.flamigo, baseline)


def test_random_bytes_after_the_handshake(server: LiveServer, bystander: RawWs) -> None:
    baseline = quiet_census(server.flamigo, connections=1)

    @settings(FUZZ, max_examples=RANDOM_BYTES_EXAMPLES)
    @given(st.binary(min_size=1, max_size=300))
    def garbage(stream: bytes) -> None:
        check(RawWs(server.port), stream, predict(stream))
        still_served(bystander, len(stream))

    garbage()
    back_to_baseline(server.flamigo, baseline)


def test_wrong_types_in_every_envelope_field(server: LiveServer, bystander: RawWs) -> None:
    """One connection, many envelopes: each gets its documented reply and the connection lives."""
    baseline = quiet_census(server.flamigo, connections=1)
    ws = RawWs(server.port)

    @settings(FUZZ, max_examples=ENVELOPE_EXAMPLES)
    @given(envelopes)
    def envelope(document: Any) -> None:
        data = encode(document)
        want = expected_reply(data)
        assume(want is not None)
        ws.send(text(data))
        got = ws.recv_json(timeout=5)
        if "status" in want:
            assert got["payload"]["status"] == want["status"], (document, got)
            assert got.get("ackId", MISSING) == want.get("ackId", MISSING), (document, got)
        else:
            assert got == want and type(got.get("ackId")) is type(want.get("ackId"))

    envelope()
    still_served(bystander, 0)
    ws.close()
    back_to_baseline(server.flamigo, baseline)


def test_the_model_avoids_every_registered_strategy(server: LiveServer) -> None:
    assert {s.name for s in server.flamigo.strategies} <= REGISTERED


def test_the_model_knows_the_documented_codes() -> None:
    """The reference model itself, on one example of each rule (so a broken model cannot pass)."""
    request = text({"topic": "app::echo", "payload": 1, "ackId": "a"})
    assert predict(request + frame(OP_CLOSE)).replies == [{"topic": "app::echo", "payload": 1, "ackId": "a"}]
    assert predict(frame(OP_TEXT, b"{}", masked=False)).code == 1002
    assert predict(frame(OP_TEXT, b"{}", rsv=4)).code == 1002
    assert predict(frame(3, b"")).code == 1002
    assert predict(frame(OP_CONT, b"x")).code == 1002
    assert predict(frame(OP_PING, b"x" * 126)).code == 1002
    assert predict(frame(OP_PING, b"", fin=False)).code == 1002
    assert predict(frame(OP_TEXT, b"", length=2**62)).code == 1009
    assert predict(request + frame(OP_TEXT, b"\xff") + request).replies == [
        {"topic": "app::echo", "payload": 1, "ackId": "a"}
    ]
    assert predict(frame(OP_TEXT, b"\xff")).code == 1007
    assert predict(frame(OP_CLOSE, close_payload(1000, b"\xff"))).code == 1007
    assert predict(frame(OP_CLOSE, close_payload(999))).code == 1002
    assert predict(frame(OP_CLOSE, close_payload(4321))).code == 4321
    assert predict(frame(OP_BINARY, b"x") + frame(OP_CLOSE)).replies == [{"status": 400}]
    assert predict(request[:5]).code is None


# -- documented cases, one by one -------------------------------------------------------


@pytest.mark.parametrize(
    ("stream", "code"),
    [
        (frame(OP_TEXT, b"{}", masked=False), 1002),
        (frame(OP_TEXT, b"{}", rsv=1), 1002),
        (frame(OP_TEXT, b"{}", rsv=4), 1002),
        (frame(0x3, b"{}"), 1002),
        (frame(0xB, b""), 1002),
        (frame(OP_CONT, b"{}"), 1002),
        (frame(OP_TEXT, b"{", fin=False) + frame(OP_TEXT, b"}"), 1002),
        (frame(OP_PING, b"x" * 126), 1002),
        (frame(OP_PING, b"x", fin=False), 1002),
        (frame(OP_CLOSE, b"\x03"), 1002),
        (frame(OP_CLOSE, close_payload(1005)), 1002),
        (frame(OP_TEXT, b'{"topic": "\xff"}'), 1007),
        (frame(OP_TEXT, b'{"topic": "\xed\xa0\x80"}'), 1007),  # an encoded surrogate
        (frame(OP_CLOSE, close_payload(1000, b"\xc3")), 1007),
        (frame(OP_TEXT, b"", length=LIMIT + 1), 1009),
        (frame(OP_TEXT, b"", length=2**62), 1009),
        (frame(OP_TEXT, b"x" * 1000, fin=False) + frame(OP_CONT, b"", length=LIMIT - 999), 1009),
    ],
    ids=[
        "unmasked", "rsv1", "rsv3", "opcode-3", "opcode-11", "orphan-continuation",
        "interleaved-message", "long-ping", "fragmented-ping", "one-byte-close", "close-1005",
        "invalid-utf8", "utf8-surrogate", "invalid-close-reason", "oversize", "oversize-2^62",
        "oversize-in-fragments",
    ],
)
def test_documented_close_codes(server: LiveServer, bystander: RawWs, stream: bytes, code: int) -> None:
    request = text({"topic": "app::echo", "payload": "before", "ackId": 1})
    ws = RawWs(server.port)
    ws.send(request + stream)  # the request before the violation is still answered
    ending = ws.read_until_close(timeout=5)
    assert ending.code == code, ending
    assert ending.messages == [{"topic": "app::echo", "payload": "before", "ackId": 1}]
    assert ending.eof
    still_served(bystander, code)


def test_2_to_the_62_byte_announcement_is_refused_before_reading(server: LiveServer) -> None:
    """1009 comes back while the client has sent only the header: nothing was read or allocated."""
    before = rss()
    ws = RawWs(server.port)
    header = frame(OP_TEXT, b"", length=2**62)  # header and mask, no payload
    ws.send(header)
    ending = ws.read_until_close(timeout=5)
    assert (ending.code, ending.reason) == (1009, f"message larger than {LIMIT} bytes")
    assert rss() - before < 16 * 2**20


def test_binary_frames_and_fragments_are_answered(server: LiveServer) -> None:
    ws = RawWs(server.port)
    ws.send(frame(OP_BINARY, b"\x00\x01", fin=False) + frame(OP_PING, b"hi") + frame(OP_CONT, b"\x02"))
    assert ws.recv_json()["payload"]["status"] == 400
    data = encode({"topic": "app::echo", "payload": "é" * 50, "ackId": "frag"})
    pieces = [data[i:i + 7] for i in range(0, len(data), 7)]  # splits inside UTF-8 sequences too
    stream = b"".join(
        frame(OP_TEXT if i == 0 else OP_CONT, piece, fin=i == len(pieces) - 1) for i, piece in enumerate(pieces)
    )
    ws.send(stream)
    assert ws.recv_json() == {"topic": "app::echo", "payload": "é" * 50, "ackId": "frag"}
    ws.close()


def test_empty_fragments_do_not_accumulate(server: LiveServer) -> None:
    """100,000 empty continuation frames (600 kB on the wire) hold no memory per frame."""
    ws = RawWs(server.port)
    ws.send(frame(OP_TEXT, b'{"topic": "app::echo", "payload": 1', fin=False))
    empty = frame(OP_CONT, b"", fin=False, mask=b"\x00\x00\x00\x00")
    before = rss()
    for _ in range(10):
        ws.send(empty * 10_000)
    ws.send(frame(OP_CONT, b', "ackId": 2}'))
    assert ws.recv_json() == {"topic": "app::echo", "payload": 1, "ackId": 2}
    assert rss() - before < 4 * 2**20
    ws.close()


# -- heavy documents ---------------------------------------------------------------------


def test_deeply_nested_json_is_refused_quickly(server: LiveServer, bystander: RawWs) -> None:
    """100,000 levels: the decoder stops at depth 1024 (400) without recursing or allocating."""
    ws = RawWs(server.port)
    depth = 100_000
    for opener, closer in ((b"[", b"]"), (b'{"a":', b"}")):
        body = opener * depth + b"1" + closer * depth
        if len(body) > LIMIT - 100:
            body = opener * (LIMIT // len(opener) - 100)  # as deep as fits: unterminated
        ws.send(text(b'{"topic": "app::echo", "ackId": 5, "payload": ' + body + b"}"))
        reply = ws.recv_json(timeout=10)
        assert reply["payload"]["status"] == 400 and "depth" in reply["payload"]["message"]
    # within the decoder's depth, but deeper than replies can be encoded: a 500, not a crash
    ws.send(text(b'{"topic": "app::echo", "ackId": 6, "payload": ' + b"[" * 1000 + b"]" * 1000 + b"}"))
    reply = ws.recv_json()
    assert (reply["payload"]["status"], reply["ackId"]) == (500, 6)
    assert ws.request("app::echo", "alive") == {"topic": "app::echo", "payload": "alive", "ackId": 1}
    still_served(bystander, 1)
    ws.close()


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"1" + b"0" * 200_000, 400),  # a 200,000-digit integer: beyond a double
        (b"1e999999", 400),
        (b"-1e400", 400),
        (b"0." + b"0" * 200_000 + b"1", None),  # tiny but finite: parsed as 0.0, echoed
        (b"18446744073709551615", None),  # the largest 64-bit integer survives exactly
        (b'"' + "\u00e9".encode() * 100_000 + b'"', None),  # 200 kB of two-byte characters
        (b'"' + b"\\u0000" * 40_000 + b'"', None),
        (b"[" + b"1," * 100_000 + b"1]", None),  # 100,001 elements
        (b'{"' + b', "'.join(b'k%d": %d' % (i, i) for i in range(15_000)) + b"}", None),
    ],
    ids=["huge-integer", "huge-exponent", "negative-overflow", "tiny-float", "u64-max",
         "long-string", "escaped-nulls", "long-array", "many-keys"],
)
def test_huge_numbers_and_strings(server: LiveServer, payload: bytes, status: int | None) -> None:
    ws = RawWs(server.port)
    ws.send(text(b'{"topic": "app::echo", "ackId": 9, "payload": ' + payload + b"}"))
    reply = ws.recv_json(timeout=10)
    if status is None:
        assert reply["topic"] == "app::echo" and reply["ackId"] == 9
        assert reply["payload"] == json.loads(payload)
    else:
        assert reply["payload"]["status"] == status and "ackId" not in reply
    ws.close()


def test_a_burst_of_10000_frames_is_answered_in_order(server: LiveServer) -> None:
    """10,000 frames written as fast as TCP takes them, valid and malformed mixed.

    The server reads ahead only FLAMIGO_MAX_PENDING_REQUESTS (then TCP pushes
    back), so memory stays flat however big the burst.
    """
    count = 10_000
    ws = RawWs(server.port)
    before = rss()

    def send_all() -> None:
        batch = []
        for n in range(count):
            if n % 3 == 2:
                batch.append(text(b'{"ackId": %d, "topic": 5}' % n))  # 400, ackId echoed
            else:
                batch.append(text({"topic": "app::echo", "payload": n, "ackId": n}))
            if len(batch) == 500:
                ws.send(b"".join(batch))
                batch = []

    sender = gevent.spawn(send_all)
    replies = [ws.recv_json(timeout=10) for _ in range(count)]
    sender.get()
    assert [r["ackId"] for r in replies] == list(range(count))
    assert all(
        (r["payload"]["status"] == 400) if n % 3 == 2 else (r["payload"] == n)
        for n, r in enumerate(replies)
    )
    conn = next(c for c in server.flamigo.connections.values() if c.client.messages_in == count)
    assert conn.outbound.refused == conn.outbound.dropped == 0
    assert rss() - before < 32 * 2**20
    ws.close()


# -- nothing left behind -------------------------------------------------------------------


def test_hostile_connections_leave_nothing_behind(server: LiveServer, bystander: RawWs) -> None:
    """2,000 hostile connections after a warm-up: actors, greenlets, connections,
    subscriptions back to the baseline; memory within 8 MiB."""
    corpus = [
        frame(OP_TEXT, b"{}", masked=False),
        frame(OP_TEXT, b"", length=2**62),
        frame(OP_TEXT, b"\xff\xfe"),
        text({"topic": "app::rooms:join", "payload": {"room": "lobby"}, "ackId": 1}) + frame(0x5, b""),
        text(b"[" * 2000),
        text({"topic": "app::echo", "payload": "x" * 5000, "ackId": 1}) + frame(OP_CLOSE, close_payload(1000)),
        frame(OP_TEXT, b'{"topic":', fin=False),  # then the client vanishes
        frame(OP_BINARY, b"\x00" * 100) + frame(OP_CLOSE, close_payload(4000, b"bye")),
    ]

    def hostile(n: int) -> None:
        stream = corpus[n % len(corpus)]
        check(RawWs(server.port), stream, predict(stream))

    def run(total: int) -> None:
        for start in range(0, total, 50):
            gevent.joinall([gevent.spawn(hostile, n) for n in range(start, start + 50)], raise_error=True)

    run(500)  # warm-up: caches, pools and allocator arenas reach their working size
    baseline = quiet_census(server.flamigo, connections=1)
    memory = rss()
    run(2000)
    back_to_baseline(server.flamigo, baseline)
    still_served(bystander, 2000)
    assert rss() - memory < 8 * 2**20


def test_a_client_that_never_finishes_its_handshake_is_dropped(demo_app: Any, live_server: Any) -> None:
    """Slowloris: a request line or headers trickling in are cut off after FLAMIGO_HEADER_TIMEOUT,
    and so are idle keep-alive connections; the greenlets serving them end."""
    server = live_server(demo_app(FLAMIGO_HEADER_TIMEOUT=0.3))
    baseline = quiet_census(server.flamigo, connections=0)
    stalled = []
    for partial in (b"", b"GET /ws HTTP/1.1\r\n", b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websock"):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(partial)
        stalled.append(sock)
    keep_alive = socket.create_connection(("127.0.0.1", server.port))
    keep_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert keep_alive.recv(4096).startswith(b"HTTP/1.1 200")
    for sock in [*stalled, keep_alive]:
        sock.settimeout(10)
        data = b""
        while True:  # whatever the server says (a 400 for half-sent headers), then EOF
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        assert data in (b"",) or data.startswith(b"HTTP/1.1 400")
        sock.close()
    back_to_baseline(server.flamigo, baseline)
    # a WebSocket, once upgraded, is not subject to it (the keepalive pings watch it instead)
    ws = RawWs(server.port)
    gevent.sleep(0.6)
    assert ws.request("app::websocket:auth", {"token": server.login("alice")})["payload"]["success"]
    ws.close()

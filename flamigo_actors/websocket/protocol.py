"""The wire format, in one place: parse requests, encode replies, errors and pushes.

Request (text frame)::

    {"topic": "app::x:y", "payload": <any JSON>, "ackId": <string or number, optional>}

Success::

    {"topic": "app::x:y", "payload": <result>, "ackId": <same value, same JSON type>}

Error::

    {"topic": "error", "payload": {"message": ..., "status": <int>,
     "trace": <debug only>, "fieldErrors": <422 only>}, "ackId": <when one could be read>}

Push (a client event from the bus)::

    {"topic": "chat:message", "payload": <JSON>}

A request without ``ackId`` gets its reply without the ``ackId`` key.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..core.errors import FlamigoError, as_payload

__all__ = [
    "ERROR_TOPIC",
    "HEARTBEAT_ACTION",
    "HEARTBEAT_PAYLOAD",
    "InvalidText",
    "NO_ACK",
    "ProtocolError",
    "Request",
    "encode_error",
    "encode_push",
    "encode_reply",
    "heartbeat_frames",
    "parse",
]

ERROR_TOPIC = "error"

HEARTBEAT_ACTION = "websocket:ping"
"""The public heartbeat strategy is ``<namespace>::websocket:ping``."""
HEARTBEAT_PAYLOAD = {"pong": True}
"""What the heartbeat strategy answers."""


class _NoAck:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_ACK"

    def __bool__(self) -> bool:
        return False


NO_ACK: Any = _NoAck()
"""Marks a request that carried no (valid) ``ackId``: its reply has no ``ackId`` key."""


class ProtocolError(FlamigoError):
    """A frame that is not a valid request (status 400).

    Attributes:
        ack_id: the request's ackId when a valid one could be read, else ``NO_ACK``.
    """

    def __init__(self, message: str, ack_id: Any = NO_ACK) -> None:
        super().__init__(f"protocol: {message}", public=message, status=400)
        self.ack_id = ack_id


class InvalidText(ProtocolError):
    """A text frame that is not valid UTF-8: the connection closes with 1007 (RFC 6455)."""

    def __init__(self) -> None:
        super().__init__("text frame is not valid UTF-8")


class Request:
    """A parsed request envelope."""

    __slots__ = ("topic", "payload", "ack_id")

    def __init__(self, topic: str, payload: Any, ack_id: Any) -> None:
        self.topic = topic
        self.payload = payload
        self.ack_id = ack_id

    def __repr__(self) -> str:
        return f"Request(topic={self.topic!r}, ack_id={self.ack_id!r})"


_ACK_TYPES = frozenset((str, int, float))


def _valid_ack(value: Any) -> bool:
    # The exact types JSON decodes to: bool (an int subclass) is not a JSON number.
    return type(value) in _ACK_TYPES


def parse(frame: str | bytes | bytearray, *, binary: bool = False) -> Request:
    """Parse one inbound frame into a :class:`Request`.

    Args:
        frame: the frame's data.
        binary: True for a binary frame (always refused: the protocol is JSON text).

    Raises:
        ProtocolError: binary frame, malformed JSON, not an object, topic missing
            or not a string, ackId neither string nor number.
    """
    if binary:
        raise ProtocolError("binary frames are not supported: send JSON text frames")
    try:
        # orjson validates UTF-8 itself, so a text frame is decoded only once.
        document = orjson.loads(frame)
    except orjson.JSONDecodeError as err:
        if isinstance(frame, (bytes, bytearray)):
            try:
                bytes(frame).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidText() from None
        raise ProtocolError(f"malformed JSON: {err}") from None
    if not isinstance(document, dict):
        raise ProtocolError("a request must be a JSON object with a 'topic'")
    ack_id = document.get("ackId", NO_ACK)
    if ack_id is not NO_ACK and not _valid_ack(ack_id):
        raise ProtocolError("'ackId' must be a string or a number")
    topic = document.get("topic")
    if not isinstance(topic, str) or not topic:
        raise ProtocolError("'topic' must be a non-empty string naming a strategy", ack_id)
    return Request(topic, document.get("payload"), ack_id)


def encode_reply(topic: str, payload: Any, ack_id: Any) -> bytes:
    """A success reply; raises ``TypeError`` when ``payload`` is not JSON-serialisable."""
    if ack_id is NO_ACK:
        return orjson.dumps({"topic": topic, "payload": payload})
    return orjson.dumps({"topic": topic, "payload": payload, "ackId": ack_id})


def encode_error(err: BaseException, ack_id: Any, *, debug: bool) -> bytes:
    """An ``error`` message for ``err`` (public message only, trace only when ``debug``)."""
    payload = as_payload(err, debug=debug)
    if ack_id is NO_ACK:
        return orjson.dumps({"topic": ERROR_TOPIC, "payload": payload})
    return orjson.dumps({"topic": ERROR_TOPIC, "payload": payload, "ackId": ack_id})


def encode_push(client_topic: str, payload: Any) -> bytes:
    """A push of a client event; raises ``TypeError`` when ``payload`` is not JSON-serialisable."""
    return orjson.dumps({"topic": client_topic, "payload": payload})


def heartbeat_frames(namespace: str) -> tuple[bytes, bytes]:
    """The canonical heartbeat request ``{"topic":"<ns>::websocket:ping"}`` and its reply.

    A connection's reader answers exactly this frame itself, without queuing it
    behind the strategies in the mailbox (so a long strategy never makes a live
    connection look dead to the browser client's heartbeat).
    """
    topic = f"{namespace}::{HEARTBEAT_ACTION}"
    return orjson.dumps({"topic": topic}), orjson.dumps({"topic": topic, "payload": HEARTBEAT_PAYLOAD})

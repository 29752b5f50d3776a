"""Connection-state recovery on the wire: opt-in, ``pos`` on pushes, resume, the reply cache.

A client opts in by sending ``"recover": true`` (or a ``"resume"``) in its
``app::websocket:auth`` payload (see ``websocket/builtins.py``). Its
connection then gets a :class:`SessionState`; other connections pay nothing
(their ``session`` stays None, their pushes are today's bytes).

For an opted-in connection:

* pushes of a stream's event carry ``pos`` (the variant is encoded once per
  publish, see :class:`~flamigo_actors.runtime.recovery.PositionedFrame`);
  a push at or below the last offset already sent for its stream is dropped
  here, so a replay and live pushes that overlap reach the client once;
* subscribing to a recoverable topic records it in the session (written
  through to the store) with the stream's position at that moment;
* replies to requests with an ``ackId`` (a strategy's result or error) are
  cached in the session: the same request re-sent after a resume is answered
  from the cache and its strategy does not run again;
* at disconnect the session is saved with the disconnect time: the
  ``FLAMIGO_RECOVERY_WINDOW`` starts there.

Resume (:func:`open_session` with a ``resume``): the session must belong to
the authenticating user (else 403, nothing changes). The recorded topics are
subscribed again *first*, then each stream's events after the client's
position are read; they are sent right after the auth reply, in order, and
any live push that overlaps them is dropped by offset. An unknown or expired
session answers ``reason: "unknown_session"`` (authenticated, nothing
replayed, a new session). The session secret is never logged; stores file
sessions under its hash.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pydantic

from ..core.errors import FlamigoError
from . import protocol
from .protocol import NO_ACK
from ..runtime.recovery import (
    REPLY_CACHE,
    OffsetFrame,
    PositionedFrame,
    Recovery,
    SessionData,
    new_session_secret,
    offset_frame,
    positioned_doc,
    session_key,
)

__all__ = ["ResumePayload", "SessionState", "open_session"]

_log = logging.getLogger("flamigo_actors.recovery")

AUTH_SUFFIX = "::websocket:auth"
"""The auth strategy's reply is never cached (a resume's answer is its own)."""

CONNECTED_GRACE = 3600.0
"""Seconds a session written while connected outlives its last write (beyond the window):
what a session whose server was killed without a word (no disconnect save) has left."""


class SincePosition(pydantic.BaseModel):
    """A client's last position in one stream."""

    offset: int = pydantic.Field(ge=0)
    epoch: str = pydantic.Field(max_length=64)


class ResumePayload(pydantic.BaseModel):
    """``resume`` in the auth payload: the session secret and the last positions."""

    session: str = pydantic.Field(min_length=1, max_length=200)
    since: dict[str, SincePosition] = pydantic.Field(default_factory=dict, max_length=1000)


def _ack_key(ack_id: Any) -> str:
    return orjson.dumps(ack_id).decode()


class SessionState:
    """The recovery session of one opted-in connection (``connection.session``)."""

    def __init__(self, connection: Any, recovery: Recovery, data: SessionData, secret: str) -> None:
        self.connection = connection
        self.recovery = recovery
        self.data = data
        self.secret = secret
        self.sent: dict[str, tuple[int, str]] = dict(data.topics)
        """Per stream, the last position pushed to this connection."""
        self.replay: list[bytes] = []
        """Frames to send right after the auth reply (a resume's missed pushes)."""
        self.duplicates = 0
        """Pushes dropped because the client already had them."""
        data.holder = self
        cls = type(connection)
        # Only this connection's deliveries take the positioned path: instance attributes
        # shadow the class's methods, so other connections' hot path is untouched.
        connection.deliver = self._deliver_with(cls.deliver)
        connection.push = self._push_with(cls.push)
        connection.send_reply = self._send_reply_with(cls.send_reply)
        connection.send_error = self._send_error_with(cls.send_error)
        connection.session = self

    # -- pushes ----------------------------------------------------------------------

    def _deliver_with(self, deliver: Any) -> Any:
        connection = self.connection

        def positioned_deliver(event: object, frame: bytes | None, identity: Any, waiter: Any) -> bool:
            if type(frame) is PositionedFrame:
                frame = frame.positioned()
            return deliver(connection, event, frame, identity, waiter)  # type: ignore[no-any-return]

        return positioned_deliver

    def _push_with(self, push: Any) -> Any:
        connection, sent = self.connection, self.sent

        def dedup_push(frame: bytes) -> None:
            if type(frame) is OffsetFrame:
                last = sent.get(frame.stream)
                if last is not None and last[1] == frame.epoch and frame.offset <= last[0]:
                    self.duplicates += 1
                    self.recovery.stats.duplicates += 1
                    return
                sent[frame.stream] = (frame.offset, frame.epoch)
            push(connection, frame)

        return dedup_push

    def _send_reply_with(self, send_reply: Any) -> Any:
        connection = self.connection

        def caching_send_reply(topic: str, result: Any, ack_id: Any) -> None:
            try:
                payload = protocol.encode_reply(topic, result, ack_id)
            except TypeError:  # the 500 path (an error reply, cached by send_error)
                send_reply(connection, topic, result, ack_id)
                return
            connection.send_text(payload)
            self.replied(ack_id, payload, topic)

        return caching_send_reply

    def _send_error_with(self, send_error: Any) -> Any:
        connection = self.connection

        def caching_send_error(err: BaseException, ack_id: Any, *, strategy: str | None = None) -> None:
            send_error(connection, err, ack_id, strategy=strategy)
            self.replied(ack_id, protocol.encode_error(err, ack_id, debug=connection.debug), strategy)

        return caching_send_error

    # -- subscriptions -----------------------------------------------------------------

    def subscribed(self, topics: list[str]) -> None:
        """Record the recoverable concrete topics among ``topics`` (write-through)."""
        store, changed = self.recovery.store, False
        for topic in topics:
            if "*" in topic or not self.recovery.recoverable(topic):
                continue
            try:
                position = store.position(topic)  # after the subscription: nothing newer is missed
            except Exception as err:  # noqa: BLE001 - subscribed all the same, without recovery
                _log.warning("recovery: no position for %s (%s): not recoverable for this client", topic, err)
                continue
            if topic not in self.sent:
                self.sent[topic] = position
            self.data.topics[topic] = self.sent[topic]
            changed = True
        if changed:
            self.save()

    def unsubscribed(self, topics: tuple[str, ...]) -> None:
        """Forget ``topics`` (write-through)."""
        changed = False
        for topic in topics:
            changed |= self.data.topics.pop(topic, None) is not None
            self.sent.pop(topic, None)
        if changed:
            self.save()

    def position(self, topic: str) -> dict[str, Any] | None:
        """``{"stream", "offset", "epoch"}`` of a recorded topic, else None."""
        pos = self.sent.get(topic)
        if pos is None:
            return None
        return {"stream": topic, "offset": pos[0], "epoch": pos[1]}

    # -- replies -----------------------------------------------------------------------

    def cached(self, ack_id: Any) -> bytes | None:
        """The cached reply to a retried request, if this session answered it already."""
        cached = self.data.replies.get(_ack_key(ack_id))
        if cached is not None:
            self.recovery.stats.cached_replies += 1
        return cached

    def replied(self, ack_id: Any, reply: bytes, strategy: str | None) -> None:
        """A reply went out: cache a strategy's answer (result or its own error) to a request
        with an ackId, except the auth reply's; then send any pending replay."""
        if strategy is not None and ack_id is not NO_ACK and not strategy.endswith(AUTH_SUFFIX):
            key = _ack_key(ack_id)
            replies = self.data.replies
            replies.pop(key, None)
            replies[key] = reply
            dropped = []
            while len(replies) > REPLY_CACHE:
                oldest = next(iter(replies))
                del replies[oldest]
                dropped.append(oldest)
            try:
                self.recovery.store.save_reply(self.data, key, reply, dropped, self._ttl())
            except Exception as err:  # noqa: BLE001 - the reply went out; only a retry would miss it
                _log.warning("recovery: could not store a cached reply: %s", err)
        if self.replay:
            frames, self.replay = self.replay, []
            for frame in frames:
                self.connection.push(frame)

    # -- saving ------------------------------------------------------------------------

    def _ttl(self) -> float:
        return self.recovery.window + CONNECTED_GRACE

    def save(self) -> None:
        """Write the session through to the store (failures are logged: recovery degrades)."""
        try:
            self.recovery.store.save_session(self.data, self._ttl())
        except Exception as err:  # noqa: BLE001
            _log.warning("recovery: could not save a session: %s", err)

    def closed(self) -> None:
        """The connection ended: save the session with its disconnect time (the window starts)."""
        data = self.data
        if data.holder is not self:
            return  # resumed on another connection of this process meanwhile: that one saves it
        data.topics.update((t, p) for t, p in self.sent.items() if t in data.topics)
        data.disconnected_at = self.recovery.now()
        try:
            self.recovery.store.save_session(data, self.recovery.window)
        except Exception as err:  # noqa: BLE001
            _log.warning("recovery: could not save a session at disconnect: %s", err)


def check_owner(recovery: Recovery, resume: ResumePayload | None, user_id: str) -> SessionData | None:
    """The session a resume names, if known; 403 when it belongs to another user.

    Called before the connection is authenticated, so a refused resume changes nothing.
    """
    if resume is None:
        return None
    try:
        data = recovery.store.load_session(session_key(resume.session))
    except Exception as err:  # noqa: BLE001 - the store is unreachable: authenticate without recovery
        _log.warning("recovery: cannot load a session (%s): answered as unknown", err)
        return None
    if data is not None and data.user_id != user_id:
        recovery.stats.resumed("forbidden", {}, 0)
        raise FlamigoError(
            "resume: the session belongs to another user",
            public="this recovery session belongs to another user: connect without 'resume'",
            status=403,
        )
    return data


def open_session(
    connection: Any, recovery: Recovery, user_id: str, resume: ResumePayload | None,
    data: SessionData | None,
) -> dict[str, Any]:
    """Attach a session to ``connection`` (new, or the resumed ``data``); the auth reply's extras."""
    if data is not None and data.disconnected_at is not None and (
        recovery.now() - data.disconnected_at > recovery.window
    ):
        data = None  # still in the store, but past its window
    if resume is None or data is None:
        secret = new_session_secret()
        state = SessionState(connection, recovery, SessionData(session_key(secret), user_id), secret)
        state.save()
        recovery.stats.sessions += 1
        if resume is None:
            return {"session": secret}
        recovery.stats.resumed("unknown_session", {}, 0)
        return {"session": secret, "recovered": False, "streams": {}, "reason": "unknown_session"}
    data.disconnected_at = None
    state = SessionState(connection, recovery, data, resume.session)
    topics = list(data.topics)
    if topics:
        connection.client.subscribe(*topics)  # first: nothing published from now on is missed
    streams: dict[str, Any] = {}
    replay: list[bytes] = []
    store, wrap = recovery.store, recovery.wrap
    for topic in topics:
        since = resume.since.get(topic)
        offset, epoch = (since.offset, since.epoch) if since is not None else data.topics[topic]
        try:
            found = store.read(topic, offset, epoch)
        except Exception as err:  # noqa: BLE001 - the store is unreachable: say so, live pushes go on
            _log.warning("recovery: cannot read %s (%s)", topic, err)
            streams[topic] = {"recovered": False, "reason": "unavailable"}
            continue
        current = {"stream": topic, "offset": found.offset, "epoch": found.epoch}
        if found.reason is not None:
            streams[topic] = {"recovered": False, "reason": found.reason, "pos": current}
            state.sent[topic] = (found.offset, found.epoch)  # live pushes go on from here
            continue
        streams[topic] = {"recovered": True, "pos": current}
        state.sent[topic] = (offset, epoch)
        for entry_offset, doc in found.entries:
            replay.append(offset_frame(
                wrap, positioned_doc(doc, topic, entry_offset, found.epoch), topic, entry_offset, found.epoch
            ))
    state.replay = replay
    state.save()
    recovered = all(s["recovered"] for s in streams.values())
    recovery.stats.resumed("recovered" if recovered else "not_recovered", streams, len(replay))
    return {"session": resume.session, "recovered": recovered, "streams": streams}

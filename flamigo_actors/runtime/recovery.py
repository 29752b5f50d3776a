"""Connection-state recovery, the model: recoverable topics, stream positions, sessions.

A topic pattern made recoverable (``flamigo.recoverable("rooms/*")`` or
``FLAMIGO_RECOVERABLE``) gives each concrete topic matching it a *stream*:
every client event published to it gets a position ``(offset, epoch)``,
offsets consecutive from 1, the epoch changing whenever the history was lost.
A store keeps the last ``FLAMIGO_RECOVERY_HISTORY`` events of each stream and
the clients' sessions; the embedded one is in ``runtime/recovery_memory.py``,
the Redis one in ``backplane/recovery_redis.py``, the wire side in
``websocket/resume.py``.

What the bus does with it (:meth:`Recovery.prepare`, called once per publish
of a client event, only when some pattern is recoverable):

* not a recoverable topic: nothing, the push frame is today's;
* recoverable, store that assigns offsets here (embedded): the offset is taken
  at once (publish order is offset order) and the frame becomes a
  :class:`PositionedFrame`: the same bytes for clients that did not opt in,
  plus the ``pos`` variant encoded lazily, at most once per publish, for those
  that did;
* recoverable, store that assigns them elsewhere (Redis): the event is handed
  to the store (``None`` is returned: the bus does not route it now); it comes
  back through the backplane with its position, in offset order, in every
  process including this one.

An event with several topics belongs to the stream of its first recoverable
topic only. Failures: a malformed pattern raises ``TopicError`` when added;
store failures are the store's (documented there).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from ..core.events import push_frame_of, topics_of
from ..core.topics import Topic, TopicTrie
from .routing import InFlight
from .signals import ROUTED, NoBusError, event_published

__all__ = [
    "OffsetFrame",
    "PositionedFrame",
    "Recovery",
    "RecoveryStats",
    "SessionData",
    "StreamStore",
    "new_epoch",
    "new_session_secret",
    "positioned_doc",
    "session_key",
]

TAKEN: Any = object()
"""What :meth:`Recovery.frame_of` returns for an event the store took (routed when it comes back)."""

REPLY_CACHE = 100
"""Replies a session keeps for retried requests (the most recent ones)."""


def new_epoch() -> str:
    """A random epoch (a store start, or a history that was lost)."""
    return secrets.token_hex(6)


def new_session_secret() -> str:
    """An unguessable session secret (only its hash is ever stored or logged)."""
    return secrets.token_urlsafe(24)


def session_key(secret: str) -> str:
    """What a store files a session under: a hash of its secret, never the secret."""
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()[:40]


def positioned_doc(doc: bytes, stream: str, offset: int, epoch: str) -> bytes:
    """``{"topic","payload"}`` JSON with ``"pos"`` appended (orjson output ends with ``}``)."""
    pos = orjson.dumps({"stream": stream, "offset": offset, "epoch": epoch})
    return doc[:-1] + b',"pos":' + pos + b"}"


class OffsetFrame(bytes):
    """A push frame carrying ``pos``, with its position (for a connection's de-duplication)."""

    stream: str
    offset: int
    epoch: str


class PositionedFrame(bytes):
    """The plain push frame of a stream's event (byte-identical to today's), and its position.

    :meth:`positioned` builds the ``pos`` variant on first use and keeps it:
    at most one encoding per publish, whatever the number of opted-in clients.
    """

    stream: str
    offset: int
    epoch: str
    doc: bytes
    wrap: Callable[[bytes], bytes]
    _with_pos: OffsetFrame | None

    def positioned(self) -> OffsetFrame:
        """The frame with ``pos`` (encoded once)."""
        frame = self._with_pos
        if frame is None:
            frame = self._with_pos = offset_frame(
                self.wrap, positioned_doc(self.doc, self.stream, self.offset, self.epoch),
                self.stream, self.offset, self.epoch,
            )
        return frame


def offset_frame(wrap: Callable[[bytes], bytes], doc: bytes, stream: str, offset: int, epoch: str) -> OffsetFrame:
    """A frame for ``doc`` (JSON already carrying ``pos``) that knows its position."""
    frame = OffsetFrame(wrap(doc))
    frame.stream, frame.offset, frame.epoch = stream, offset, epoch
    return frame


class SessionData:
    """A recovery session: its user, its recorded recoverable subscriptions, its reply cache.

    Attributes:
        key: the store key (a hash of the secret).
        user_id: the user that created it (only they may resume it).
        topics: recorded streams -> the last known ``(offset, epoch)`` (at subscribe, then pushes).
        replies: ``ackId`` (its JSON text) -> the encoded reply, oldest first.
        disconnected_at: ``time.time()`` of the last disconnect, None while connected.
    """

    __slots__ = ("key", "user_id", "topics", "replies", "disconnected_at", "holder")

    def __init__(self, key: str, user_id: str) -> None:
        self.key = key
        self.user_id = user_id
        self.topics: dict[str, tuple[int, str]] = {}
        self.replies: dict[str, bytes] = {}
        self.disconnected_at: float | None = None
        self.holder: Any = None
        """The connection state using it in this process (not stored): a connection the session
        was resumed away from does not save it at its own late disconnect."""

    def meta(self) -> bytes:
        """Everything but the replies, as JSON."""
        return orjson.dumps({
            "user": self.user_id,
            "topics": {t: list(p) for t, p in self.topics.items()},
            "disconnected_at": self.disconnected_at,
        })

    @classmethod
    def load(cls, key: str, meta: bytes, replies: dict[str, bytes]) -> SessionData:
        """Rebuild a session from :meth:`meta` and its replies."""
        doc = orjson.loads(meta)
        session = cls(key, str(doc["user"]))
        session.topics = {t: (int(p[0]), str(p[1])) for t, p in doc.get("topics", {}).items()}
        session.disconnected_at = doc.get("disconnected_at")
        session.replies = dict(replies)
        return session


class ReadResult:
    """What a store found when asked for a stream's events after a position."""

    __slots__ = ("reason", "entries", "offset", "epoch")

    def __init__(self, reason: str | None, entries: list[tuple[int, bytes]], offset: int, epoch: str) -> None:
        self.reason = reason
        """None (recovered), ``"epoch_mismatch"`` or ``"too_many"``."""
        self.entries = entries
        """``(offset, doc)`` in order, when recovered."""
        self.offset = offset
        self.epoch = epoch
        """The stream's current position."""


class StreamStore(Protocol):
    """Where streams and sessions live (embedded: in memory; or Redis)."""

    assigns_locally: bool
    """True: :meth:`append` gives the position at once; False: :meth:`submit` and the
    event comes back through the backplane with its position."""

    def append(self, stream: str, doc: bytes) -> tuple[int, str]:
        """Append ``doc`` to ``stream``; its ``(offset, epoch)`` (stores that assign locally)."""
        ...

    def submit(self, stream: str, doc: bytes, event: object, identity: Any, waiter: Any) -> None:
        """Queue ``event`` for ``stream``; never blocks (stores that assign elsewhere)."""
        ...

    def claim(self, seq: int) -> tuple[object, Any, Any] | None:
        """This process's publish ``(event, identity, waiter)`` coming back with backplane ``seq``."""
        ...

    def position(self, stream: str) -> tuple[int, str]:
        """The stream's current ``(offset, epoch)`` (offset 0 before any event)."""
        ...

    def read(self, stream: str, after: int, epoch: str) -> ReadResult:
        """The events after ``after`` if the history still holds them all, under ``epoch``."""
        ...

    def load_session(self, key: str) -> SessionData | None:
        """The session filed under ``key``, or None (unknown or expired)."""
        ...

    def save_session(self, session: SessionData, ttl: float) -> None:
        """Write the session's meta data (not its replies) with a time to live."""
        ...

    def save_reply(self, session: SessionData, ack: str, reply: bytes, dropped: list[str], ttl: float) -> None:
        """Add one cached reply (and forget ``dropped`` ones)."""
        ...

    def close(self) -> None:
        """Stop (idempotent)."""
        ...


RESUME_OUTCOMES = ("recovered", "not_recovered", "unknown_session", "forbidden")
"""How a resume ended: every stream recovered; some not (see :data:`STREAM_RESULTS`); the
session unknown or past its window; refused (403, another user's session)."""

STREAM_RESULTS = ("recovered", "epoch_mismatch", "too_many", "expired", "unavailable")
"""How one stream of a resume ended (``unavailable``: its store could not be read)."""


class RecoveryStats:
    """Counters of one application's recovery (``flamigo.recovery.stats``), plain integers
    updated once per session, resume or retried request (never per push, except a dropped
    duplicate). The metrics copy them (``flamigo_recovery_*``)."""

    __slots__ = ("sessions", "resumes", "streams", "replayed", "duplicates", "cached_replies")

    def __init__(self) -> None:
        self.sessions = 0
        """Sessions opened (a client opted in, or its resume found no session)."""
        self.resumes: dict[str, int] = dict.fromkeys(RESUME_OUTCOMES, 0)
        self.streams: dict[str, int] = dict.fromkeys(STREAM_RESULTS, 0)
        self.replayed = 0
        """Missed events sent after resumes."""
        self.duplicates = 0
        """Pushes dropped because the client already had them (a replay and live pushes overlapping)."""
        self.cached_replies = 0
        """Retried requests answered from a session's reply cache (their strategy did not run again)."""

    def resumed(self, outcome: str, streams: dict[str, Any], replayed: int) -> None:
        """Count one resume: ``outcome`` (see :data:`RESUME_OUTCOMES`), the ``streams`` of its answer."""
        self.resumes[outcome] = self.resumes.get(outcome, 0) + 1
        for answer in streams.values():
            result = "recovered" if answer.get("recovered") else str(answer.get("reason"))
            if result in self.streams:  # a closed set: an unknown reason is not a new label
                self.streams[result] += 1
        self.replayed += replayed

    def snapshot(self) -> dict[str, Any]:
        """The counters as plain data."""
        return {"sessions": self.sessions, "resumes": dict(self.resumes), "streams": dict(self.streams),
                "replayed": self.replayed, "duplicates": self.duplicates, "cached_replies": self.cached_replies}


class Recovery:
    """The recovery configuration and store of one application (``flamigo.recovery``).

    Args:
        store: streams and sessions.
        wrap: makes a WebSocket text frame of JSON bytes.
        encode: the push document ``(client_topic, payload) -> JSON bytes`` (``wrap(encode(...))``
            is the bus's push frame).
    """

    def __init__(self, store: StreamStore, wrap: Callable[[bytes], bytes], encode: Callable[[str, Any], bytes]) -> None:
        self.store = store
        self.wrap = wrap
        self.encode = encode
        self.plain: Callable[[str, Any], bytes] = lambda topic, payload: wrap(encode(topic, payload))
        self.window = 120.0
        self.history = 1000
        self.pending_redis: Any = None
        """The settings of a Redis store to start with the first recoverable pattern."""
        self.stats = RecoveryStats()
        self._patterns: TopicTrie[str] = TopicTrie()
        self._count = 0
        self._cache: dict[str, bool] = {}

    @property
    def enabled(self) -> bool:
        """Whether any pattern is recoverable."""
        return self._count > 0

    def add(self, *patterns: str) -> None:
        """Make ``patterns`` recoverable. Raises ``TopicError`` for a malformed one."""
        for pattern in [Topic(p) for p in patterns]:
            self._patterns.add(pattern, str(pattern))
            self._count += 1
        self._cache.clear()

    def recoverable(self, topic: str) -> bool:
        """Whether the concrete ``topic`` has a stream."""
        hit = self._cache.get(topic)
        if hit is None:
            found: dict[str, None] = {}
            self._patterns.collect(topic.split("/"), found)
            hit = bool(found)
            if len(self._cache) > 100_000:  # topics come and go: a bounded memo
                self._cache.clear()
            self._cache[topic] = hit
        return hit

    def stream_of(self, topics: tuple[Topic, ...]) -> str | None:
        """The stream an event with ``topics`` belongs to (its first recoverable topic)."""
        for topic in topics:
            if self.recoverable(topic):
                return str(topic)
        return None

    def frame_of(
        self, event: object, topics: tuple[Topic, ...], identity: Any, waiter: Any, position: Any
    ) -> Any:
        """The push frame of a client event (the bus's encoding unless its topic is recoverable),
        or :data:`TAKEN` when the store took it.

        Raises:
            TypeError: the client message is malformed or its payload is not JSON.
        """
        stream = self.stream_of(topics)
        if stream is None:
            return push_frame_of(event, self.plain)
        frame = push_frame_of(event, lambda t, p: self.prepare(t, p, stream, event, identity, waiter, position))
        return TAKEN if frame is None else frame

    def deliver_positioned(self, bus: Any, event: object, identity: Any, position: tuple[int, str, Any]) -> None:
        """Route an event that came back from the Redis store with ``(offset, epoch, seq)``.

        ``seq`` set: this process's own publish, routed as published (its identity,
        its ``publish_sync`` waiter) without a second signal (observers saw it at
        publish). Otherwise another process's: through the signal, ``remote=True``.

        Raises:
            NoBusError: the bus is closed.
        """
        offset, epoch, seq = position
        claimed = self.store.claim(seq) if seq is not None else None
        if claimed is not None:
            event, identity, waiter = claimed
            topics = topics_of(event)
            frame = self.frame_of(event, topics, identity, waiter, (offset, epoch))
            bus.route(InFlight(event, topics, frame, identity, waiter))
            return
        for _receiver, value in event_published.send(
            bus._app, event=event, identity=identity, remote=True, position=(offset, epoch)
        ):
            if value is ROUTED:
                return
        raise NoBusError(event, bus._app)

    def prepare(
        self, client_topic: str, payload: Any, stream: str, event: object, identity: Any,
        waiter: Any, position: Any = None,
    ) -> PositionedFrame | None:
        """The push frame of a stream's event; None when the store took it (routed later).

        ``position`` is ``(offset, epoch)`` for an event that comes back from the
        store through the backplane.

        Raises:
            TypeError: the client payload is not JSON.
        """
        doc = self.encode(client_topic, payload)
        if position is not None:
            offset, epoch = position
        elif self.store.assigns_locally:
            offset, epoch = self.store.append(stream, doc)
        else:
            self.store.submit(stream, doc, event, identity, waiter)
            return None
        frame = PositionedFrame(self.wrap(doc))
        frame.stream, frame.offset, frame.epoch = stream, offset, epoch
        frame.doc, frame.wrap, frame._with_pos = doc, self.wrap, None
        return frame

    def now(self) -> float:
        """The wall clock sessions are stamped with."""
        return time.time()

"""The Redis recovery store: streams and sessions in Redis, shared by every process of the app.

Per recoverable topic ``T`` (the ``{T}`` hash tag keeps a topic's keys in one
cluster slot, for the interest-based backplane to build on):

* ``<channel>:rec:{T}:e``: the epoch, set if absent to a random value, so a
  fresh Redis (or a ``FLUSHALL``) gives a new epoch: resumes then answer
  ``epoch_mismatch``, never a silent ``recovered: true``;
* ``<channel>:rec:{T}:n``: the offset counter;
* ``<channel>:rec:{T}:h``: the history, a stream whose entry ids are
  ``0-<offset>``, trimmed to ``FLAMIGO_RECOVERY_HISTORY`` entries.

The three live :data:`STREAM_TTL` seconds after the topic's last event.

Publishing: :meth:`RedisRecoveryStore.submit` hands the event to the
backplane's outbox (never blocks the publisher), in publish order with every
other event; the backplane's sender runs, in place of the event's plain
``XADD``, ONE Lua script that takes the next offset, appends to the history
and appends (``XADD``) the event to the backplane's stream with its position:
offset, history and the cross-process publish are one atomic step. Every
process, this one too, routes a topic's events when it reads them from the
stream, so in offset order everywhere; this process routes its own with the
publisher's identity and ``publish_sync`` waiter (:meth:`claim`). Redis
unreachable: the backplane's outbox holds them (bounded, counted, logged, see
``backplane/streams.py``); a batch whose write failed on the link is sent
again, so a retried script may append an event twice to the history. Local
subscribers get a recoverable topic's events after that round trip, so
against events of other topics published by the same greenlet they may come
later. (The script names keys of two slots; with
``FLAMIGO_REDIS_BACKPLANE=interest`` the backplane writes a recoverable event with its
own script on the topic's one slot instead, ``backplane/interest.py``.)

Redis Cluster (``FLAMIGO_REDIS_CLUSTER``): on the whole-stream backplane
(``<channel>:events``, another slot than the topic's) the script cannot run, so
:meth:`start` refuses at once with a message naming the fix (a backplane whose
stream keys are per topic, ``sharded = True``, e.g. the interest-based one).
Sessions are one key each (the session's own slot): they work on a cluster as
they are.

Sessions: ``<channel>:rec:session:<hash of the secret>``, a hash with the
meta data (``m``) and cached replies (``r:<ackId>``), expiring
(:meth:`save_session`'s ``ttl``). Reads and session writes are done by the
calling greenlet; their failures raise redis-py's errors (the wire side logs
them and answers without recovery).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from gevent.event import Event

from ..runtime.recovery import ReadResult, SessionData, new_epoch
from .codec import encode_for_backplane
from .link import RedisLink

if TYPE_CHECKING:
    from ..core.settings import Settings

__all__ = ["HISTORY_LUA", "STREAM_TTL", "RedisRecoveryStore"]

_log = logging.getLogger("flamigo_actors.recovery")

START_WAIT = 30.0
"""Seconds a read or session write waits for the store to start (the server's own start)."""

PENDING_MAX = 100_000
"""This process's publishes kept until read back from the stream."""

STREAM_TTL = 86_400
"""Seconds a topic's stream keys live after its last event (then its next event starts a new epoch)."""

HISTORY_LUA = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local epoch = redis.call('GET', KEYS[1])
local offset = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[3], '0-' .. offset, 'd', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[4])
"""
"""Lua taking a stream's next offset and appending to its history (KEYS: epoch, offset, history;
ARGV: new epoch, doc, history length, ttl); ``epoch`` and ``offset`` are locals afterwards. Also
the start of the interest-based backplane's script (``backplane/interest_keys.py``)."""

_APPEND = HISTORY_LUA + """redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[9], '*', 'o', ARGV[5], 's', ARGV[6], 'e', ARGV[7],
           'i', ARGV[8], 'pt', ARGV[10], 'po', offset, 'pe', epoch)
return offset
"""

_POSITION = """
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
return {redis.call('GET', KEYS[1]), tonumber(redis.call('GET', KEYS[2]) or '0')}
"""

_READ = """
redis.call('SET', KEYS[1], ARGV[3], 'NX', 'EX', ARGV[4])
local epoch = redis.call('GET', KEYS[1])
local n = tonumber(redis.call('GET', KEYS[2]) or '0')
local after = tonumber(ARGV[1])
local entries = {}
if n > after and n - after <= tonumber(ARGV[2]) then
  entries = redis.call('XRANGE', KEYS[3], '0-' .. (after + 1), '+', 'COUNT', ARGV[2])
end
return {epoch, n, entries}
"""


class _Scripted:
    """A recoverable event in the backplane's outbox: the script that writes it."""

    __slots__ = ("store", "stream", "doc", "event", "original")

    def __init__(self, store: RedisRecoveryStore, stream: str, doc: bytes, event: bytes,
                 original: tuple[object, Any, Any]) -> None:
        self.store, self.stream, self.doc, self.event, self.original = store, stream, doc, event, original

    def queue(self, pipe: Any, link: Any, seq: int, described: bytes) -> None:
        """Add the script to the backplane sender's pipeline (its entry's origin and ``seq``)."""
        store = self.store
        store.remember(seq, self.original)
        store._append(
            keys=[*store._keys(self.stream), link.stream],
            args=[new_epoch(), self.doc, store.history, STREAM_TTL, link._origin, seq,
                  self.event, described, link.maxlen, self.stream],
            client=pipe,
        )

    def written(self) -> None:
        """Redis has it."""
        self.store.appended += 1


class RedisRecoveryStore:
    """Streams and sessions in Redis (see the module docstring).

    Args:
        url: the Redis URL (``FLAMIGO_REDIS_URL``).
        channel: key prefix (``FLAMIGO_REDIS_CHANNEL``), the backplane's too.
        history: events kept per stream.
        cluster: ``url`` names one node of a Redis Cluster.
    """

    assigns_locally = False

    def __init__(self, url: str, *, channel: str = "flamigo", history: int = 1000, cluster: bool = False) -> None:
        self.link = RedisLink(url, cluster=cluster)
        self.channel = channel
        self.history = history
        self.backplane: Any = None
        """The events backplane whose outbox and sender carry the scripts (set by :meth:`start`)."""
        self.appended = 0
        self._ready = Event()
        self._early: list[tuple[object, Any, _Scripted]] = []
        self._published: dict[int, tuple[object, Any, Any]] = {}
        self._append: Any = None
        self._position: Any = None
        self._read: Any = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisRecoveryStore:
        """A store configured by the ``FLAMIGO_REDIS_*`` and ``FLAMIGO_RECOVERY_*`` settings."""
        if not settings.redis_url:
            raise ValueError("FLAMIGO_REDIS_URL is not set: there is no Redis recovery store")
        return cls(settings.redis_url, channel=settings.redis_channel, history=settings.recovery_history,
                   cluster=settings.redis_cluster)

    def start(self, backplane: Any, *, required: bool = True) -> RedisRecoveryStore:
        """Connect (for reads and sessions) and write through ``backplane``; returns self.

        Raises:
            RedisUnavailable: Redis is unreachable and ``required`` is true.
        """
        if backplane is None:
            raise RuntimeError("the Redis recovery store needs the Redis backplane: start it first")
        if self.link.cluster and not getattr(backplane, "sharded", False):
            raise RuntimeError(
                "connection-state recovery (FLAMIGO_RECOVERABLE) cannot run on a Redis Cluster with the "
                f"whole-stream backplane: a recoverable event's offset, history ({self.channel}:rec:{{T}}:*) "
                f"and its publish to {backplane.stream} are one atomic script, and those keys live in "
                "different slots. Use the interest-based backplane (FLAMIGO_REDIS_BACKPLANE=interest: "
                "per-topic {T} streams), or a single Redis (no --redis-cluster), or no recoverable topics")
        self.backplane = backplane
        self.link.start(required=required)
        client = self.link.client
        self._append = client.register_script(_APPEND)
        self._position = client.register_script(_POSITION)
        self._read = client.register_script(_READ)
        self._ready.set()
        early, self._early = self._early, []
        for event, identity, scripted in early:  # published while the server was starting
            backplane.send(event, identity, scripted)
        return self

    def _client(self) -> Any:
        # Configured at init_app, started by Flamigo.start(): a server listens (and may
        # serve a resume) a moment before it has started; wait for it rather than answer wrong.
        if not self._ready.wait(START_WAIT):
            raise RuntimeError("the Redis recovery store is not started: call flamigo.start()")
        return self.link.client

    def close(self) -> None:
        """Close the connections (idempotent; the backplane flushes its outbox itself)."""
        self.link.close()

    def _keys(self, stream: str) -> list[str]:
        base = f"{self.channel}:rec:{{{stream}}}"
        return [f"{base}:e", f"{base}:n", f"{base}:h"]

    # -- streams -----------------------------------------------------------------------

    def append(self, stream: str, doc: bytes) -> tuple[int, str]:
        """Not used: offsets are assigned in Redis (see :meth:`submit`)."""
        raise NotImplementedError("RedisRecoveryStore assigns offsets in Redis: use submit()")

    def submit(self, stream: str, doc: bytes, event: object, identity: Any, waiter: Any) -> None:
        """Queue ``event`` for ``stream`` in the backplane's outbox; never blocks.

        Raises:
            ValueError: the event cannot cross processes (its class is not serializable).
        """
        try:
            encoded = encode_for_backplane(event)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"a recoverable topic's event must cross processes with Redis: {err}") from None
        scripted = _Scripted(self, stream, doc, encoded, (event, identity, waiter))
        if self.backplane is None:
            self._early.append((event, identity, scripted))
        else:
            self.backplane.send(event, identity, scripted)

    def remember(self, seq: int, original: tuple[object, Any, Any]) -> None:
        """Keep a publish until it comes back from the stream (see :meth:`claim`)."""
        published = self._published
        published[seq] = original
        if len(published) > PENDING_MAX:  # never read back (trimmed away): forget the oldest
            waiter = published.pop(next(iter(published)))[2]
            if waiter is not None:
                waiter.finish()

    def claim(self, seq: int) -> tuple[object, Any, Any] | None:
        """This process's publish ``(event, identity, waiter)`` written with backplane ``seq``."""
        return self._published.pop(seq, None)

    def position(self, stream: str) -> tuple[int, str]:
        """The current ``(offset, epoch)`` (creates the epoch if the stream has none yet)."""
        keys = self._keys(stream)
        self._client()
        epoch, offset = self._position(keys=keys[:2], args=[new_epoch(), STREAM_TTL])
        return int(offset), _text(epoch)

    def read(self, stream: str, after: int, epoch: str) -> ReadResult:
        """The events after ``after`` under ``epoch`` (see :class:`ReadResult`)."""
        self._client()
        current, offset, entries = self._read(
            keys=self._keys(stream), args=[after, self.history, new_epoch(), STREAM_TTL])
        current, offset = _text(current), int(offset)
        if current != epoch or after > offset:
            return ReadResult("epoch_mismatch", [], offset, current)
        if after == offset:
            return ReadResult(None, [], offset, current)
        found = [(int(_text(entry_id).split("-")[1]), _field(fields, b"d")) for entry_id, fields in entries]
        if not found or found[0][0] != after + 1 or len(found) != offset - after:
            return ReadResult("too_many", [], offset, current)
        return ReadResult(None, found, offset, current)

    # -- sessions ----------------------------------------------------------------------

    def _session(self, key: str) -> str:
        return f"{self.channel}:rec:session:{key}"

    def load_session(self, key: str) -> SessionData | None:
        """The session under ``key``, or None."""
        fields = self._client().hgetall(self._session(key))
        meta = fields.pop(b"m", None)
        if meta is None:
            return None
        replies = {_text(k)[2:]: bytes(v) for k, v in fields.items() if k.startswith(b"r:")}
        return SessionData.load(key, meta, replies)

    def save_session(self, session: SessionData, ttl: float) -> None:
        """Write the session's meta data; it expires ``ttl`` seconds from now."""
        name = self._session(session.key)
        pipe = self._client().pipeline(transaction=True)
        pipe.hset(name, "m", session.meta())
        pipe.pexpire(name, max(1, int(ttl * 1000)))
        pipe.execute()

    def save_reply(self, session: SessionData, ack: str, reply: bytes, dropped: list[str], ttl: float) -> None:
        """Add a cached reply, forget ``dropped`` ones (one round trip)."""
        name = self._session(session.key)
        pipe = self._client().pipeline(transaction=True)
        pipe.hset(name, mapping={"m": session.meta(), f"r:{ack}": reply})
        if dropped:
            pipe.hdel(name, *[f"r:{a}" for a in dropped])
        pipe.pexpire(name, max(1, int(ttl * 1000)))
        pipe.execute()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _field(fields: Any, name: bytes) -> bytes:
    if isinstance(fields, dict):
        return bytes(fields[name])
    pairs = list(fields)  # a flat [k, v, k, v] list, as a script returns it
    return bytes(pairs[pairs.index(name) + 1])

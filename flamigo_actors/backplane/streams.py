"""The Redis backplane: an event published in one process reaches subscribers in every process.

One Redis **stream** per application channel (``<FLAMIGO_REDIS_CHANNEL>:events``)
carries every event that may cross processes:

* The bus calls :meth:`RedisBackplane.send` for each local publish, in the
  publisher's greenlet (a connection actor, a Flask view...). ``send`` encodes
  the event and appends it to a bounded in-memory *outbox*; it never touches
  the network, so no publisher ever waits for Redis, whatever state Redis is in.
* A sender greenlet writes the outbox with pipelined ``XADD ... MAXLEN ~ N``:
  under load, whatever piled up while one pipeline was on the wire goes out
  together in the next one.
* A reader greenlet ``XREAD``s the whole stream (no consumer group: every
  process needs every event) from the last entry id it saw, and hands each
  event published by *another* process to :meth:`Bus.deliver_remote`, which
  sends it through the ``event_published`` signal marked ``remote=True``: the
  signal's observers see it, and the bus routes it to local subscribers only. Entries carry the origin process id and
  a per-process sequence number: a process skips its own entries (its local
  subscribers had them already), and drops duplicates that a retried write
  could produce. A gap in a sequence (entries trimmed away before they were
  read) is counted as ``missed``.

Why streams rather than pub/sub: pub/sub forgets a message the moment it is
sent, so a process whose connection to Redis blips loses, without a trace,
everything published meanwhile. A stream keeps the last ``MAXLEN`` entries: a
process that was briefly disconnected reads on from its last id and catches
up, and one that fell further behind than ``MAXLEN`` sees (and counts) the gap.

Faults: Redis lost while running → local delivery goes on untouched; events
for other processes wait in the outbox (bounded by ``FLAMIGO_REDIS_OUTBOX_MAX``;
beyond it the oldest are dropped and counted as ``failed``); one greenlet
reconnects with exponential backoff and jitter; once back, the sender flushes
the outbox and the reader catches up. Redis unreachable at start →
:meth:`RedisBackplane.start` raises :class:`RedisUnavailable`, unless
``FLAMIGO_REDIS_REQUIRED`` is false (then: local-only, a loud warning, retries).
A flood from other processes does not swamp this one: the reader pauses while
the local bus has more than :data:`BUS_BACKLOG_LIMIT` events waiting (the
stream holds them meanwhile). Entry ids are Redis's clock: after a failover to
a server whose clock is behind the last id read here, entries with earlier ids
are not read; the sequence gap counts them as ``missed``.

Redis Cluster (``FLAMIGO_REDIS_CLUSTER``): the stream is one key, so one slot
on one master; the link (:class:`~.link.RedisLink`) sends each command there.
When that master dies the link goes down as above until its replica is
promoted (the reconnector pings every master); entries it had acknowledged
but not replicated are lost with it and counted as ``missed`` (a sequence
gap) by the readers.

Inside: :class:`RedisBackplane` owns a :class:`~.link.RedisLink` (the
connection pool, whether Redis is up, reconnecting with backoff: the same as
the domain actors', with the backplane's own log lines); its ``_Sender`` owns the outbox and the writing greenlet,
its ``_Reader`` the reading greenlet and the per-origin sequence numbers.
What an entry carries (the event document, the publisher's description) is
defined in ``backplane/codec.py``, re-exported here. The local bus is seen
through the small :class:`LocalBus` protocol: this module imports nothing
from ``runtime/``.

``import redis`` happens in :meth:`RedisBackplane.start` only: the package
works without redis-py installed as long as no Redis URL is configured.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

import gevent
import orjson
from gevent.event import Event

from ..core.events import decode_event
from .backplane_base import BackplaneCore
from .link import RedisLink, RedisUnavailable, backoff, import_redis, redact
from .codec import (
    REMOTE,
    RemoteIdentity,
    describe_identity,
    encode_for_backplane,
    rebuild_identity,
)

if TYPE_CHECKING:
    from ..core.identity import Identity
    from ..core.settings import Settings
    from ..runtime.instruments import Instruments

__all__ = [
    "import_redis",
    "REMOTE",
    "BackplaneStats",
    "LocalBus",
    "RedisBackplane",
    "RedisUnavailable",
    "RemoteIdentity",
    "backoff",
    "describe_identity",
    "encode_for_backplane",
    "redact",
]

_log = logging.getLogger("flamigo_actors.backplane")

BUS_BACKLOG_LIMIT = 10_000
"""Events waiting in the local bus's mailbox above which the reader pauses."""

class LocalBus(Protocol):
    """What the backplane needs of this process's bus (:class:`~flamigo_actors.Bus` provides it)."""

    backplane: Any
    """Set to the backplane by :meth:`RedisBackplane.start`: the bus then calls its ``send``."""

    @property
    def closing(self) -> bool:
        """True once the bus is shutting down (entries read meanwhile are dropped quietly)."""
        ...

    def deliver_remote(self, event: object, identity: Identity, position: Any = None) -> None:
        """Route another process's event to local subscribers (and ``event_published`` observers);
        ``position``: ``(offset, epoch, seq)`` in a recoverable topic's stream (``seq``: this
        process's own publish, else None)."""
        ...

    def mailbox_depth(self) -> int:
        """Events waiting to be routed (the reader pauses above :data:`BUS_BACKLOG_LIMIT`)."""
        ...


@dataclass
class BackplaneStats:
    """Counters of the backplane (also in ``flamigo_actors.ops.inspect.stats()["backplane"]``)."""

    sent: int = 0
    """Events written to Redis."""
    failed: int = 0
    """Events that could not be sent: outbox overflow while Redis was away, a Redis
    error reply, or still queued at shutdown."""
    unserialisable: int = 0
    """Events delivered locally only because they cannot be encoded (logged with the class)."""
    received: int = 0
    """Events from other processes handed to the local bus."""
    reconnects: int = 0
    """Times the link to Redis came back after being lost (or after a local-only start)."""
    decode_errors: int = 0
    """Entries from other processes that could not be decoded or routed (logged)."""
    duplicates: int = 0
    """Entries skipped because their sequence number was already seen (a retried write)."""
    missed: int = 0
    """Entries of other processes never read: trimmed from the stream (``MAXLEN``)
    or lost by Redis before this process read them."""


class _Throttle:
    """Logs one message per key at most every ``interval`` seconds, counting the rest."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[Any, tuple[float, int]] = {}

    def __call__(self, key: Any, level: int, message: str, *args: Any) -> None:
        now = time.monotonic()
        last, suppressed = self._last.get(key, (None, 0))
        if last is not None and now - last < self.interval:
            self._last[key] = (last, suppressed + 1)
            return
        if suppressed:
            message += f" ({suppressed} more like this since the last report)"
        _log.log(level, message, *args)
        self._last[key] = (now, 0)


class RedisBackplane(BackplaneCore):
    """Carries the bus's events between processes through one Redis stream.

    Args:
        bus: the local bus (``bus.backplane`` is set to this object by :meth:`start`).
        url: ``redis://[:password@]host:port/db``.
        channel: prefix of the stream key (``<channel>:events``); apps sharing a
            Redis use different channels.
        required: refuse to start when Redis is unreachable (else: local-only,
            loud warning, keep retrying).
        maxlen: approximate number of entries the stream keeps: how far behind
            a process may fall (e.g. while disconnected) and still catch up.
        outbox_max: events waiting to be written; beyond, the oldest are dropped
            (counted in ``stats.failed``).
        batch: most entries per pipeline and per ``XREAD``.
        block: seconds an ``XREAD`` waits for new entries.
        reconnect_base / reconnect_cap: backoff of reconnection attempts (seconds).
        socket_timeout: a Redis call silent for this long counts as a lost link.
        cluster: ``url`` names one node of a Redis Cluster (the stream is one key: one slot,
            on one master; its replica takes over when that master fails).
    """

    def __init__(
        self,
        bus: LocalBus,
        url: str,
        *,
        channel: str = "flamigo",
        required: bool = True,
        maxlen: int = 10_000,
        outbox_max: int = 10_000,
        batch: int = 500,
        block: float = 2.0,
        reconnect_base: float = 0.1,
        reconnect_cap: float = 3.0,
        socket_timeout: float = 5.0,
        cluster: bool = False,
    ) -> None:
        self.bus = bus
        self.url = url
        self.stream = f"{channel}:events"
        self.required = required
        self.maxlen = maxlen
        self.outbox_max = outbox_max
        self.batch = batch
        self.block = block
        self.reconnect_base = reconnect_base
        self.reconnect_cap = reconnect_cap
        self.socket_timeout = socket_timeout
        self.origin = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stats = BackplaneStats()
        self.sharded = False
        """Whether events live in per-topic keys (a cluster slot per topic): not here, one stream
        for all (the recovery store's scripts need per-topic keys on a Redis Cluster)."""
        self.instruments: Instruments | None = None
        """Observes the lag of events from other processes (``FLAMIGO_METRICS``); ``None``: not measured."""
        # The connection, whether Redis is up, and reconnection with backoff: a RedisLink
        # (as the domain actors'), logging nothing itself: the backplane tells its own story.
        self.link = RedisLink(url, socket_timeout=socket_timeout, block=block, reconnect_base=reconnect_base,
                              reconnect_cap=reconnect_cap, log_changes=False, cluster=cluster)
        self._origin = self.origin.encode()
        self._out = _Sender(self)
        self._in = _Reader(self)
        self._up = self.link.up  # what the reader and sender wait for
        self._reader: gevent.Greenlet | None = None
        self._sender: gevent.Greenlet | None = None
        self._closed = False
        self._throttle = _Throttle(10.0)

    @classmethod
    def from_settings(cls, bus: LocalBus, settings: Settings) -> RedisBackplane:
        """A backplane configured by ``FLAMIGO_REDIS_*`` settings."""
        if not settings.redis_url:
            raise ValueError("FLAMIGO_REDIS_URL is not set: there is no backplane to build")
        return cls(
            bus,
            settings.redis_url,
            channel=settings.redis_channel,
            required=settings.redis_required,
            maxlen=settings.redis_stream_maxlen,
            outbox_max=settings.redis_outbox_max,
            cluster=settings.redis_cluster,
        )

    # -- state -------------------------------------------------------------------

    @property
    def _client(self) -> Any:
        return self.link.client

    def snapshot(self) -> dict[str, Any]:
        """State and counters as plain data (for ``inspect.stats()``)."""
        return {
            "url": redact(self.url),
            "stream": self.stream,
            "origin": self.origin,
            "connected": self.connected,
            "closed": self._closed,
            "pending": self.pending,
            **asdict(self.stats),
            "last_error": self.last_error,
        }

    def greenlets(self) -> list[gevent.Greenlet]:
        """The backplane's live greenlets (none once closed)."""
        own = [g for g in (self._reader, self._sender) if g is not None and not g.dead]
        return own + self.link.greenlets()

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Connect, note where the stream ends, start the reader and sender greenlets.

        Raises:
            RedisUnavailable: Redis cannot be reached and ``required`` is true, or
                the URL is not a Redis URL (whatever ``required`` says).
            RuntimeError: redis-py is not installed.
        """
        if self.link.client is not None:
            raise RuntimeError("this backplane was already started")
        # RedisUnavailable: unreachable and required, or not a Redis URL (whatever ``required`` says).
        self.link.start(required=self.required)
        if self.link.connected:
            try:
                self._in.last_id = self._in.stream_end()
            except self.link.redis_error as err:
                if self.required:
                    self.link.close()
                    raise RedisUnavailable(self.url, err) from None
                self.link.lost(err)
        if not self.link.connected:
            self._warn_local_only()
        else:
            _log.info(
                "backplane: connected to Redis at %s, stream %s, reading after %s",
                redact(self.url), self.stream, _text(self._in.last_id),
            )
        self.link.when_down(self._on_lost)
        self.link.when_up(self._on_back)
        self.bus.backplane = self
        self._reader = gevent.spawn(self._in.run)
        self._sender = gevent.spawn(self._out.run)

    def send(self, event: object, identity: Identity, scripted: Any = None) -> None:
        """Queue ``event`` for the other processes; never blocks, never raises.

        An event that cannot be encoded was already delivered locally: it is
        counted (``stats.unserialisable``) and reported with an error log
        naming its class and the fix, at most every 10 s per class.

        ``scripted``: a recoverable event's entry (``backplane/recovery_redis.py``):
        written by its script (offset, history and this ``XADD`` at once) in
        place of the plain ``XADD``, in the same order as every other event.
        """
        self._out.put(event, identity, scripted)

    # -- faults ------------------------------------------------------------------------

    def _on_back(self) -> None:
        down, attempts = self.link.last_outage
        self.stats.reconnects += 1
        _log.warning(
            "backplane: Redis at %s is back after %.1fs (%d attempts); sending %d queued "
            "events and catching up from %s",
            redact(self.url), down, attempts, self.pending,
            _text(self._in.last_id) if self._in.last_id is not None else "the stream's end",
        )


class _Sender:
    """The write side: the bounded outbox publishers fill (no network in their
    greenlet) and the greenlet that writes it to Redis with pipelined ``XADD``."""

    def __init__(self, link: RedisBackplane) -> None:
        self.link = link
        self.outbox: deque[tuple[int, Any, bytes]] = deque()  # Any: bytes, or a recovery script
        self.in_flight = 0
        self.seq = itertools.count(1)
        self.wake = Event()

    @property
    def pending(self) -> int:
        return len(self.outbox) + self.in_flight

    def drop_all(self) -> int:
        """Forget every queued event (at shutdown); how many there were."""
        left = self.pending
        self.outbox.clear()
        self.in_flight = 0
        return left

    def entry(self, event: object, scripted: Any) -> Any:
        """What the outbox keeps of ``event`` besides its publisher (the interest-based
        backplane adds the topics); raises when the event cannot be encoded."""
        return encode_for_backplane(event) if scripted is None else scripted

    def put(self, event: object, identity: Identity, scripted: Any = None) -> None:
        link = self.link
        if link._closed:
            link.stats.failed += 1
            link._throttle("closed", logging.WARNING,
                           "backplane: %s published after the backplane closed: not sent "
                           "to other processes", type(event).__qualname__)
            return
        try:
            document = self.entry(event, scripted)
            described = orjson.dumps(describe_identity(identity))
        except Exception as err:  # noqa: BLE001 - reported, never raised to the publisher
            link.stats.unserialisable += 1
            link._throttle(
                ("unserialisable", type(event)), logging.ERROR,
                "backplane: %s was delivered in this process only: %s",
                type(event).__qualname__, err,
            )
            return
        outbox = self.outbox
        outbox.append((next(self.seq), document, described))
        if len(outbox) > link.outbox_max:
            outbox.popleft()
            link.stats.failed += 1
            link._throttle(
                "overflow", logging.ERROR,
                "backplane: outbox full (%d events; Redis %s): dropped the oldest event "
                "for other processes", link.outbox_max,
                "unreachable" if not link.connected else "too slow",
            )
        self.wake.set()

    def run(self) -> None:
        link, outbox = self.link, self.outbox
        while True:
            while not outbox:
                self.wake.clear()
                self.wake.wait()
            link._up.wait()
            batch = [outbox.popleft() for _ in range(min(len(outbox), link.batch))]
            self.in_flight = len(batch)
            pipe = link._client.pipeline(transaction=False)
            for seq, document, described in batch:
                if type(document) is not bytes:  # a recoverable event: its script writes the entry
                    document.queue(pipe, link, seq, described)
                    continue
                pipe.xadd(
                    link.stream,
                    {b"o": link._origin, b"s": seq, b"e": document, b"i": described},
                    maxlen=link.maxlen,
                    approximate=True,
                )
            try:
                pipe.execute()
            except link._link_errors as err:
                # Some entries may have been written: resending is safe because
                # receivers skip sequence numbers they have seen.
                self.in_flight = 0
                outbox.extendleft(reversed(batch))
                while len(outbox) > link.outbox_max:
                    outbox.popleft()
                    link.stats.failed += 1
                link._lost(err)
            except link._redis_error as err:  # an error reply: retrying would not help
                self.in_flight = 0
                link.stats.failed += len(batch)
                link.last_error = f"{type(err).__name__}: {err}"
                link._throttle("reply", logging.ERROR,
                               "backplane: Redis refused %d events: %s", len(batch), err)
            else:
                self.in_flight = 0
                link.stats.sent += len(batch)
                for _, document, _ in batch:
                    if type(document) is not bytes:
                        document.written()
            finally:
                pipe.reset()


class _Reader:
    """The read side: ``XREAD`` the stream from the last id seen, skip this process's
    own entries and duplicates, count gaps, hand the rest to the local bus."""

    def __init__(self, link: RedisBackplane) -> None:
        self.link = link
        self.seen: dict[bytes, int] = {}
        self.last_id: Any = None

    def stream_end(self) -> Any:
        entries = self.link._client.xrevrange(self.link.stream, count=1)
        return entries[0][0] if entries else b"0-0"

    def run(self) -> None:
        link = self.link
        block_ms = max(1, int(link.block * 1000))
        while True:
            link._up.wait()
            # Backpressure: let the local bus catch up; meanwhile the stream holds the events.
            while link.bus.mailbox_depth() > BUS_BACKLOG_LIMIT:
                gevent.sleep(0.005)
            try:
                if self.last_id is None:  # first link after a local-only start
                    self.last_id = self.stream_end()
                reply = link._client.xread(
                    {link.stream: self.last_id}, count=link.batch, block=block_ms
                )
            except link._link_errors as err:
                link._lost(err)
                continue
            except link._redis_error as err:  # e.g. WRONGTYPE: the key is not a stream
                link.last_error = f"{type(err).__name__}: {err}"
                link._throttle("read", logging.ERROR,
                               "backplane: reading %s failed: %s", link.stream, err)
                gevent.sleep(link.reconnect_cap)
                continue
            if not reply:
                continue
            streams = reply.items() if isinstance(reply, dict) else reply
            instruments = link.instruments
            for _name, entries in streams:
                for entry_id, fields in entries:
                    self.last_id = entry_id
                    self.receive(fields)
                    if instruments is not None and fields.get(b"o") != link._origin:
                        # The entry id starts with Redis's clock in ms when it stored the event.
                        stored = int(entry_id.partition(b"-")[0]) / 1000
                        instruments.backplane_lag(max(0.0, time.time() - stored))

    def receive(self, fields: dict[bytes, bytes]) -> None:
        link = self.link
        origin = fields.get(b"o")
        # Our own: local subscribers had it at publish time; but a recoverable event
        # (pt: its stream) is routed here, in offset order, by every process, this one too.
        own = origin == link._origin
        if own and b"pt" not in fields:
            return
        if link._closed:
            return
        stats = link.stats
        try:
            seq = -1 if own else int(fields[b"s"])
            seen = self.seen
            last = None if own else seen.pop(origin, None)  # type: ignore[arg-type]
            if not own:
                seen[origin] = seq if last is None else max(last, seq)  # type: ignore[index]
            if len(seen) > 4096:  # processes come and go: forget the longest silent
                del seen[next(iter(seen))]
            if last is not None:
                if seq <= last:
                    stats.duplicates += 1
                    return
                if seq > last + 1:
                    stats.missed += seq - last - 1
                    link._throttle(("missed", origin), logging.WARNING,
                                   "backplane: missed %d events of %s (trimmed from the "
                                   "stream or lost by Redis before they were read)",
                                   seq - last - 1, _text(origin))
            event = decode_event(orjson.loads(fields[b"e"]))
            identity = rebuild_identity(orjson.loads(fields[b"i"]), _text(origin))
            if b"pt" in fields:  # written by the recovery store's script (backplane/recovery_redis.py)
                position = (int(fields[b"po"]), _text(fields[b"pe"]), int(fields[b"s"]) if own else None)
                link.bus.deliver_remote(event, identity, position)
            else:
                link.bus.deliver_remote(event, identity)
        except Exception as err:  # noqa: BLE001 - one bad entry must not stop the reader
            if link.bus.closing:
                return
            stats.decode_errors += 1
            link._throttle("decode", logging.ERROR,
                           "backplane: cannot deliver an entry from %s: %s: %s",
                           _text(origin), type(err).__name__, err)
            return
        stats.received += 1


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

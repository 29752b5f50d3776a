"""The interest-based backplane (``FLAMIGO_REDIS_BACKPLANE=interest``): a process receives
from Redis only the events of topics its own subscribers match.

The stream backplane (``backplane/streams.py``) has every process read the app's whole
stream. Here each event is written to a few small *channels* (``backplane/interest_keys.py``):
its topic's ``<channel>:t:{T}``, its namespace's ``<channel>:n:{N}`` (``N``: the topic's first
segment) and the firehose ``<channel>:n:{*}``; each is a short stream plus a sharded pub/sub
channel of the same name, written by ONE script on ONE slot (on a Redis Cluster: one reader
per master, each write pipeline waiting for a replica, see ``interest_cluster.py``). A process
listens (``SSUBSCRIBE``) only to the channels its subscriptions need:

* an exact subscription to ``T``: ``<channel>:t:{T}``;
* a wildcard whose first segment is ``N`` (``rooms/*``, ``rooms/*/typing``): the namespace
  ``<channel>:n:{N}``; the bus's own trie then drops what no local pattern matches;
* a wildcard beginning with ``*`` (``*``, ``*/typing``): the firehose (every event of the app).

How interest is registered: the bus tells the backplane of every pattern added and removed
(:class:`~flamigo_actors.runtime.subscriptions.InterestWatch`); the first local pattern of a
channel makes this process listen to it, the last one gone makes it stop. Nothing is written
to Redis per pattern beyond that: no registry, no notification to other processes.
Publishers write to the namespace and firehose channels always: they only count (``INCRBY``)
unless some process marked the channel wanted (a key refreshed while it listens), so a
channel nobody listens to costs Redis two commands per batch of events, no memory.

When a new interest becomes effective: ``Subscription.add`` returns once Redis has
confirmed it (the channel marked wanted, its position noted, ``SSUBSCRIBE`` confirmed,
what came meanwhile read), or after :data:`INTEREST_WAIT` seconds at most. Every event
published anywhere after that is delivered: e.g. a client that got its join reply then
hears every later message of the room from any process. While Redis is away ``add``
does not wait: the interest becomes effective when the link is back.

Kept from the stream backplane (its ``_Sender``, stats and fault behaviour are shared):
publishing never waits for Redis (a bounded outbox, oldest dropped and counted
``failed``); reconnect with backoff and jitter (the :class:`~.link.RedisLink`); the
reader pauses while the local bus is flooded; shutdown flushes the outbox. Reading
guarantees (exactly once per subscriber, order per channel, catch-up after a blip,
gaps counted ``missed``) are in ``backplane/interest_reader.py``. Recoverable topics
(issue 14): their script writes offset, history and the topic's channel at once on the
topic's slot (``RECOVER``); their other channels get the entry, with its position, in a
second step; this process routes its own from the script's reply. Order between a
recoverable event and other events of one publisher differs, as in the stream mode.

Cost (see the README, "Interest-based backplane"): one script call per slot per batch
(on one Redis server, one per batch: :class:`~.interest_keys.PublishBatch`), pipelined;
reads only where wanted.

Races, and why none loses an event or counts a false gap: a script runs alone in Redis,
so the channel's mark (``BASELINE``, which also notes the counter) falls either before a
batch's script (whose events are then stored and numbered after the noted counter) or
after it (its events, counted only, are below the noted counter: not a gap). The mark is
checked once per channel per batch for that reason: it cannot change during the script.
Events stored between the mark and the ``SSUBSCRIBE``'s confirmation are read from the
stream (the reader's catch-up), those also received live are skipped by counter and id.
A batch retried after a lost link is numbered again: readers skip its events by origin
and sequence number (``duplicates``). A script holds Redis for its batch (at most
``batch`` events, 500: about 4 ms of Redis CPU here).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

import gevent

from ..core.events import topics_of
from .codec import encode_for_backplane
from .interest_keys import (
    PUBLISH,
    RECOVER,
    PublishBatch,
    TOPIC_TTL,
    WANT_TTL,
    SingleNode,
    channel_of_pattern,
    channels_of_topics,
    message_tail,
)
from .backplane_base import BackplaneCore
from .interest_cluster import ClusterNodes
from .interest_reader import NodeReader
from ..runtime.recovery import new_epoch
from .link import RedisLink, redact
from .recovery_redis import STREAM_TTL
from .streams import BUS_BACKLOG_LIMIT, BackplaneStats, LocalBus, _Sender, _Throttle

if TYPE_CHECKING:
    from ..core.identity import Identity
    from ..core.settings import Settings
    from ..core.topics import Topic
    from ..runtime.instruments import Instruments

__all__ = ["INTEREST_WAIT", "InterestBackplane", "InterestBus", "InterestStats"]

_log = logging.getLogger("flamigo_actors.backplane")

INTEREST_WAIT = 1.0
"""Seconds ``Subscription.add`` waits at most for Redis to confirm a new interest."""

REPLICA_WAIT_MS = 100
"""On a Redis Cluster: milliseconds a write waits at most for a replica of its master (``WAIT``)."""


class InterestBus(LocalBus, Protocol):
    """What the interest-based backplane needs of the bus, besides :class:`~.streams.LocalBus`."""

    def watch_interest(self, watch: Any) -> list[Topic]:
        """Be told of patterns added and removed; returns those subscribed already."""
        ...


@dataclass
class InterestStats(BackplaneStats):
    """The stream backplane's counters, same meanings, and the interest-based ones."""

    resets: int = 0
    """Channels whose counter started again (Redis lost their keys): events may be lost (logged)."""
    catchups: int = 0
    """Channel streams read to fill a gap, after a reconnect or a new interest."""
    unreplicated: int = 0
    """Channel writes (an event on one channel) a cluster master stored but no replica confirmed in
    time (``WAIT``): lost if that master dies now (logged)."""


class InterestBackplane(BackplaneCore):
    """Carries the bus's events to the processes whose subscribers want them (see the module docstring).

    Args: as :class:`~.streams.RedisBackplane`'s; ``maxlen`` is per channel.
    """

    backlog_limit = BUS_BACKLOG_LIMIT
    want_ttl = WANT_TTL

    def __init__(self, bus: InterestBus, url: str, *, channel: str = "flamigo", required: bool = True,
                 maxlen: int = 10_000, outbox_max: int = 10_000, batch: int = 500, block: float = 2.0,
                 reconnect_base: float = 0.1, reconnect_cap: float = 3.0, socket_timeout: float = 5.0,
                 cluster: bool = False) -> None:
        self.bus = bus
        self.url = url
        self.channel = channel
        self.required = required
        self.maxlen = maxlen
        self.outbox_max = outbox_max
        self.batch = batch
        self.block = block
        self.origin = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.pid = self.origin.replace(" ", "_")
        self.stats = InterestStats()
        self.instruments: Instruments | None = None
        self.link = RedisLink(url, socket_timeout=socket_timeout, block=block, reconnect_base=reconnect_base,
                              reconnect_cap=reconnect_cap, log_changes=False, cluster=cluster)
        self.nodes: Any = ClusterNodes(self.link) if cluster else SingleNode(self.link)
        self.sharded = True
        """Events live in per-topic keys (one slot each): connection-state recovery runs on a cluster."""
        self._origin = self.origin.encode()
        self._up = self.link.up
        self._out = _InterestSender(self)  # type: ignore[arg-type]
        self._readers: dict[Any, NodeReader] = {}
        self._refs: dict[str, int] = {}
        self._recent: OrderedDict[tuple[bytes, int], None] = OrderedDict()  # see interest_reader._take
        self._sha: dict[Any, tuple[str, str]] = {}
        self._greenlets: list[gevent.Greenlet] = []
        self._closed = False
        self._throttle = _Throttle(10.0)

    @classmethod
    def from_settings(cls, bus: InterestBus, settings: Settings) -> InterestBackplane:
        """A backplane configured by ``FLAMIGO_REDIS_*`` settings."""
        if not settings.redis_url:
            raise ValueError("FLAMIGO_REDIS_URL is not set: there is no backplane to build")
        return cls(bus, settings.redis_url, channel=settings.redis_channel, required=settings.redis_required,
                   maxlen=settings.redis_stream_maxlen, outbox_max=settings.redis_outbox_max,
                   cluster=settings.redis_cluster)

    # -- state -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """State and counters as plain data (for ``inspect.stats()``)."""
        topics = sum(1 for name in self._refs if name.startswith(f"{self.channel}:t:"))
        return {
            "mode": "interest", "url": redact(self.url), "channel": self.channel, "origin": self.origin,
            "cluster": self.link.cluster, "nodes": sorted(str(n) for n in self._readers),
            "connected": self.connected, "closed": self._closed, "pending": self.pending,
            "topics": topics, "patterns": len(self._refs) - topics,
            **asdict(self.stats), "last_error": self.last_error,
        }

    def greenlets(self) -> list[gevent.Greenlet]:
        """The backplane's live greenlets (none once closed)."""
        return [g for g in self._greenlets if not g.dead] + self.link.greenlets()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Connect, listen to what the bus's subscribers already want, start the greenlets.

        Raises:
            RedisUnavailable: Redis cannot be reached and ``required`` is true, or the URL is
                not a Redis URL.
            RuntimeError: redis-py is not installed, or already started.
        """
        if self.link.client is not None:
            raise RuntimeError("this backplane was already started")
        self.link.start(required=self.required)
        if not self.link.connected:
            self._warn_local_only()
        else:
            _log.info("backplane: connected to Redis at %s, interest-based on channel %s",
                      redact(self.url), self.channel)
        self.link.when_down(self._on_lost)
        self.link.when_up(self._on_back)
        self.bus.backplane = self
        self._greenlets += [gevent.spawn(self._out.run), gevent.spawn(self._refresh)]
        already = self.bus.watch_interest(self)
        if already:
            self.added(already)

    def _stopping(self) -> None:
        self.bus.watch_interest(None)

    def send(self, event: object, identity: Identity, scripted: Any = None) -> None:
        """Queue ``event`` for the processes that want it; never blocks, never raises
        (see :meth:`~.streams.RedisBackplane.send`)."""
        self._out.put(event, identity, scripted)

    # -- interest ----------------------------------------------------------------------------

    def _reader(self, node: Any) -> NodeReader:
        reader = self._readers.get(node)
        if reader is None:
            reader = self._readers[node] = NodeReader(self, node)
            reader.greenlet = gevent.spawn(reader.run)
            self._greenlets.append(reader.greenlet)
        return reader

    def added(self, patterns: list[Topic]) -> None:
        """Listen to the channels of ``patterns`` not listened to yet (waits :data:`INTEREST_WAIT` at most)."""
        if self._closed or self.link.client is None:
            return
        fresh: dict[Any, list[str]] = {}
        for pattern in patterns:
            name = channel_of_pattern(self.channel, pattern)
            count = self._refs.get(name, 0)
            self._refs[name] = count + 1
            if count == 0:
                fresh.setdefault(self.nodes.node_of(name), []).append(name)
        current = gevent.getcurrent()
        wait = 0.0 if any(r.greenlet is current for r in self._readers.values()) else INTEREST_WAIT
        deadline = time.monotonic() + wait
        for node, names in fresh.items():
            self._reader(node).want(names, deadline)

    def removed(self, patterns: list[Topic]) -> None:
        """Stop listening to channels no local pattern needs any more."""
        gone: dict[NodeReader, list[str]] = {}
        for pattern in patterns:
            name = channel_of_pattern(self.channel, pattern)
            count = self._refs.get(name, 0) - 1
            if count > 0:
                self._refs[name] = count
            elif name in self._refs:
                del self._refs[name]
                for reader in self._readers.values():  # (the slot map may have moved it since)
                    if name in reader.channels:
                        gone.setdefault(reader, []).append(name)
        for reader, names in gone.items():
            reader.unwant(names)

    def _refresh(self) -> None:
        """Keep this process's channels marked wanted while it listens."""
        while True:
            gevent.sleep(self.want_ttl / 3)
            self._up.wait()
            for node, reader in list(self._readers.items()):
                try:
                    pipe = self.nodes.client(node).pipeline(transaction=False)
                    for name in list(reader.channels):  # (nothing per event keeps the keys alive)
                        pipe.set(f"{name}:w", b"1", ex=self.want_ttl)
                        pipe.expire(name, TOPIC_TTL)
                        pipe.expire(f"{name}:c", TOPIC_TTL)
                    pipe.execute()
                except self._redis_error as err:
                    self._throttle("refresh", logging.ERROR, "backplane: refreshing interest failed: %s", err)

    # -- faults ------------------------------------------------------------------------------

    def _on_back(self) -> None:
        down, attempts = self.link.last_outage
        self.stats.reconnects += 1
        self._sha.clear()  # a restarted Redis forgot the scripts
        _log.warning("backplane: Redis at %s is back after %.1fs (%d attempts); sending %d queued events and "
                     "catching up %d channels", redact(self.url), down, attempts, self.pending, len(self._refs))


class _InterestSender(_Sender):
    """The stream backplane's outbox and sender, writing each event to its channels."""

    link: InterestBackplane  # type: ignore[assignment]

    def entry(self, event: object, scripted: Any) -> Any:
        names = channels_of_topics(self.link.channel, topics_of(event))
        return names, encode_for_backplane(event) if scripted is None else scripted

    def _scripts(self, node: Any) -> tuple[str, str]:
        sha = self.link._sha.get(node)
        if sha is None:
            client = self.link.nodes.client(node)
            sha = self.link._sha[node] = (client.script_load(PUBLISH), client.script_load(RECOVER))
        return sha

    def _write(self, batch: list[tuple[int, Any, bytes]]) -> list[tuple[Any, int, int, str]]:
        """Write ``batch`` (at most one recoverable event, last); returns its positions."""
        bp = self.link
        pipes: dict[Any, Any] = {}
        writes: dict[Any, int] = {}  # per node: events times channels (what `unreplicated` counts)
        events = PublishBatch(bp.nodes.script_group)

        def pipe_of(name: str, count: int) -> tuple[Any, tuple[str, str]]:
            node = bp.nodes.node_of(name)
            if node not in pipes:
                pipes[node] = bp.nodes.client(node).pipeline(transaction=False)
            writes[node] = writes.get(node, 0) + count
            return pipes[node], self._scripts(node)

        def queue() -> None:  # one script per slot for the events so far (one Redis server: one)
            for keys, argv, count in events.calls():
                pipe, (publish, _) = pipe_of(keys[0], count)
                pipe.evalsha(publish, len(keys), *keys, bp.maxlen, TOPIC_TTL, *argv)

        recoverable = None
        for seq, (names, doc), described in batch:
            if type(doc) is bytes:
                events.add(names, message_tail(bp._origin, seq, len(names), b"", b"", b"", described, doc))
                continue
            queue()  # the events before it first: order per channel
            store, topic = doc.store, f"{bp.channel}:t:{{{doc.stream}}}"
            store.remember(seq, doc.original)
            pipe, (_, recover) = pipe_of(topic, 1)
            recoverable = (doc, seq, [n for n in names if n != topic], described, pipe, len(pipe.command_stack))
            head = b"%s\n%d\n%d\n%s" % (bp._origin, seq, len(names), doc.stream.encode())
            pipe.evalsha(recover, 6, *store._keys(doc.stream), topic, f"{topic}:c", f"{topic}:w",
                         new_epoch(), doc.doc, store.history, STREAM_TTL, bp.maxlen, TOPIC_TTL,
                         head, described + b"\n" + doc.event)
        queue()
        replies = {id(pipe): self._execute(node, pipe, writes[node]) for node, pipe in pipes.items()}
        if recoverable is None:
            return []
        doc, seq, others, described, pipe, index = recoverable
        offset, epoch = replies[id(pipe)][index]
        epoch = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        if others:
            pipes.clear()
            writes.clear()
            events.add(others, message_tail(bp._origin, seq, len(others) + 1, doc.stream.encode(), int(offset),
                                            epoch, described, doc.event))
            queue()
            for node, pipe in pipes.items():
                self._execute(node, pipe, writes[node])
        return [(doc, seq, int(offset), epoch)]

    def _execute(self, node: Any, pipe: Any, writes: int) -> list[Any]:
        """Run one node's pipeline; on a cluster master with replicas, wait for one of them to
        have it (``WAIT``): a master dying before that fails the write, which is then retried."""
        nodes = self.link.nodes
        wanted = nodes.replicas(node) if isinstance(nodes, ClusterNodes) else 0
        if not wanted:
            return list(pipe.execute())
        pipe.execute_command("WAIT", 1, REPLICA_WAIT_MS)
        replies = list(pipe.execute())
        if replies[-1] < 1:
            bp = self.link
            bp.stats.unreplicated += writes
            bp._throttle(("unreplicated", node), logging.WARNING,
                         "backplane: no replica of %s confirmed %d writes within %d ms: they are lost if "
                         "that master dies now", node, writes, REPLICA_WAIT_MS)
        return replies

    def run(self) -> None:
        bp, outbox = self.link, self.outbox
        while True:
            while not outbox:
                self.wake.clear()
                self.wake.wait()
            bp._up.wait()
            batch: list[tuple[int, Any, bytes]] = []
            while outbox and len(batch) < bp.batch:
                batch.append(outbox.popleft())
                if type(batch[-1][1][1]) is not bytes:
                    break  # a recoverable event ends a batch: its other channels wait for its offset
            self.in_flight = len(batch)
            try:
                positions = self._write(batch)
            except bp._link_errors as err:
                self.in_flight = 0  # resending is safe: readers skip sequence numbers they have seen
                outbox.extendleft(reversed(batch))
                while len(outbox) > bp.outbox_max:
                    outbox.popleft()
                    bp.stats.failed += 1
                bp._lost(err)
                continue
            except bp._redis_error as err:
                self.in_flight = 0
                if type(err).__name__ == "NoScriptError":  # Redis restarted empty: load them again
                    bp._sha.clear()
                    outbox.extendleft(reversed(batch))
                    continue
                bp.stats.failed += len(batch)
                bp.last_error = f"{type(err).__name__}: {err}"
                bp._throttle("reply", logging.ERROR, "backplane: Redis refused %d events: %s", len(batch), err)
                continue
            self.in_flight = 0
            bp.stats.sent += len(batch)
            for doc, seq, offset, epoch in positions:  # routed here from the reply (see the docstring)
                doc.written()
                event, identity, _ = doc.original
                bp.bus.deliver_remote(event, identity, (offset, epoch, seq))


"""The read side of the interest-based backplane: one Redis node's channels, live and caught up.

A :class:`NodeReader` holds one connection to its node in sharded pub/sub mode
(``SSUBSCRIBE``) and the state of each channel this process listens to there: the
counter and stream id of the last entry taken. Guarantees:

* **Exactly once, in order, per channel**: an entry is taken only if its counter
  follows the last one taken; a live message past a gap makes the reader read the
  channel's stream (``XRANGE``) from the last id taken first. Counters skipped for
  good (trimmed from the stream, or written while nobody in Redis listened) are
  counted as ``missed`` and logged. A counter going back while ids go forward means
  Redis lost the channel's keys (a restart without persistence): counted in ``resets``,
  logged, and the entry taken.
* **Once per process**: an event written to several channels this process listens to
  (its topic's and its namespace's, several topics) is handed to the bus once; a
  write retried after a lost link (same origin and sequence number) is skipped and
  counted in ``duplicates``. This process's own entries are skipped: its subscribers
  had them at publish time (a recoverable topic's, from the write's reply).
* **Catch-up**: when the connection is lost the reader waits for the link, subscribes
  again and reads every channel's stream from its last id: what was published
  meanwhile arrives late, not never (up to ``MAXLEN`` entries per channel, and
  :data:`~.interest_keys.TOPIC_TTL`).
* **Failover** (Redis Cluster): on reconnecting, a reader hands the channels whose slot
  another master serves now to that master's reader, with their state (last counter
  and id taken, origins seen), which subscribes and catches up from there; a reader
  left without channels on a node that is no longer a master ends. A promoted replica
  lacking the last entries this process read is noted (logged) and followed from its
  own position: the writers write again what no replica confirmed (``interest.py``),
  and re-written entries are skipped by origin and sequence number.
* **Backpressure**: while the local bus has more than ``BUS_BACKLOG_LIMIT`` events
  waiting the reader stops reading; Redis buffers the live messages, and past its
  pub/sub output limit drops the connection: the reader then catches up from the streams.

:meth:`NodeReader.want` is what makes a new interest effective (see ``interest.py``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent
import orjson
from gevent.event import Event
from gevent.lock import Semaphore

from ..core.events import decode_event
from .codec import rebuild_identity
from .interest_keys import BASELINE, TOPIC_TTL, Message, parse_entry, parse_message

__all__ = ["NodeReader"]

_log = logging.getLogger("flamigo_actors.backplane")

RECENT_MAX = 10_000
"""Events written to several channels remembered (the backplane's ``_recent``), to hand each to the bus once."""


class _Channel:
    __slots__ = ("last_c", "last_id", "seen", "confirmed")

    def __init__(self) -> None:
        self.last_c: int | None = None  # None: no baseline yet (interest registered while Redis was away)
        self.last_id: bytes = b"0-0"
        self.seen: dict[bytes, int] = {}  # origin -> last seq taken from it on this channel
        self.confirmed = Event()


class NodeReader:
    """Reads one node's channels for :class:`~.interest.InterestBackplane` (see the module docstring)."""

    def __init__(self, backplane: Any, node: Any) -> None:
        # backplane: the InterestBackplane (its link state, counters, bus, nodes and settings)
        self.bp = backplane
        self.node = node
        self.channels: dict[str, _Channel] = {}
        self.conn: Any = None
        self.greenlet: gevent.Greenlet | None = None
        self._send_lock = Semaphore()
        self.online = Event()
        """Set while the connection is up and every channel wanted so far is subscribed on it."""
        # Run on a node's pipeline (client=...): registered with the link's client for its encoder only.
        self._baseline = backplane.link.client.register_script(BASELINE)

    # -- interest ------------------------------------------------------------------------

    def want(self, channels: list[str], deadline: float) -> None:
        """Listen to ``channels``: mark them wanted, note where they stand, ``SSUBSCRIBE``,
        wait (until ``deadline``, monotonic) for Redis to confirm, read what came meanwhile.
        Returns early, the channels pending, while Redis is away: the reader subscribes them
        when the link is back."""
        states = []
        for name in channels:
            state = self.channels[name] = _Channel()
            states.append((name, state))
        self._subscribe(states, deadline)

    def adopt(self, states: list[tuple[str, _Channel]], deadline: float) -> None:
        """Listen to channels another reader listened to, their state kept (their slot moved
        here: a failover): subscribe, and catch up from where that reader was."""
        for name, state in states:
            state.confirmed.clear()
            self.channels[name] = state
        try:
            self._subscribe(states, deadline)
        except self.bp._redis_error as err:  # this reader's greenlet sees the link and catches up
            _log.debug("backplane: taking over channels on %s failed: %s", self.node, err)

    def _subscribe(self, states: list[tuple[str, _Channel]], deadline: float) -> None:
        if self.bp.connected and not self.online.is_set():  # the reader is (re)connecting
            self.online.wait(max(0.0, deadline - time.monotonic()))
        if not self.bp.connected or self.conn is None:
            return
        try:
            self._take_baselines(states)
            self._send(*[("SSUBSCRIBE", name) for name, _ in states])
        except self.bp._link_errors:
            return  # the reader sees the broken link and subscribes them again
        for name, state in states:
            if not state.confirmed.wait(max(0.0, deadline - time.monotonic())):
                _log.debug("backplane: interest in %s not confirmed in time: it takes effect later", name)
                return
        self._catch_up(states)

    def unwant(self, channels: list[str]) -> None:
        """Stop listening to ``channels`` (``SUNSUBSCRIBE``; never waits for a reply)."""
        for name in channels:
            self.channels.pop(name, None)
        if self.conn is not None and self.bp.connected:
            try:
                self._send(*[("SUNSUBSCRIBE", name) for name in channels])
            except self.bp._link_errors:
                pass  # the reader reconnects and subscribes only what is still wanted

    def _send(self, *commands: tuple[str, ...]) -> None:
        conn = self.conn
        with self._send_lock:  # another greenlet may be adding interest at the same time
            conn.send_packed_command(conn.pack_commands([list(c) for c in commands]))

    def _take_baselines(self, states: list[tuple[str, _Channel]]) -> None:
        pipe = self.bp.nodes.client(self.node).pipeline(transaction=False)
        for name, _ in states:
            self._baseline(keys=[name, f"{name}:c", f"{name}:w"], args=[self.bp.want_ttl, TOPIC_TTL],
                           client=pipe)
        before = [(state.last_c, state.last_id) for _, state in states]
        for (name, state), was, (counter, last_id) in zip(states, before, pipe.execute()):
            if (state.last_c, state.last_id) != was:
                # Taken from meanwhile (the reading greenlet had subscribed it already, e.g. a
                # first interest while the reader connects): the state is newer than this
                # baseline, which must neither move it back nor count a reset.
                continue
            if state.last_c is None:
                state.last_c, state.last_id = int(counter), bytes(last_id)
            elif int(counter) < state.last_c:
                if last_id != b"0-0" and _id_key(bytes(last_id)) <= _id_key(state.last_id):
                    # A replica took over without the last writes this process had read (a
                    # failover): go on from what the node has; the writers retry what it lacks.
                    self._rolled_back(name, state.last_c - int(counter))
                    state.last_c, state.last_id = int(counter), bytes(last_id)
                    continue
                self._reset(name, state)  # Redis lost the channel (restarted empty): read it all
                state.last_c, state.last_id = 0, b"0-0"

    def _rolled_back(self, name: str, count: int) -> None:
        self.bp._throttle(("rolled back", name), logging.WARNING,
                          "backplane: the node now serving %s lacks the last %d events this process read from "
                          "it (a master failed over before replicating them); their writers write them again "
                          "(or counted them unreplicated)", name, count)

    def _rehome(self) -> bool:
        """Hand the channels whose slot another node serves now (a failover) to that node's reader;
        returns whether this reader is done (no channel left, its node no longer a master)."""
        bp = self.bp
        moved: dict[Any, list[tuple[str, _Channel]]] = {}
        for name, state in list(self.channels.items()):
            node = bp.nodes.node_of(name)
            if node != self.node:
                moved.setdefault(node, []).append((name, self.channels.pop(name)))
        for node, states in moved.items():
            _log.info("backplane: %d channels moved from %s to %s", len(states), self.node, node)
            bp._greenlets.append(gevent.spawn(bp._reader(node).adopt, states, time.monotonic() + 5.0))
        serves = getattr(bp.nodes, "serves", None)
        if self.channels or serves is None or serves(self.node):
            return False
        if bp._readers.get(self.node) is self:
            del bp._readers[self.node]
        return True

    def _reset(self, name: str, state: _Channel) -> None:
        self.bp.stats.resets += 1
        self.bp._throttle(("reset", name), logging.WARNING,
                          "backplane: %s started again from 1: Redis lost its keys (a restart without "
                          "persistence?); events published before this process was back may be lost", name)

    # -- the reading greenlet --------------------------------------------------------------

    def run(self) -> None:
        bp = self.bp
        while True:
            bp._up.wait()
            try:
                if self._rehome():
                    return
                self.conn = bp.nodes.connection(self.node)
                self.conn.send_command("CLIENT", "SETNAME", f"flamigo-interest-{bp.pid}")
                self.conn.read_response()
                states = list(self.channels.items())
                self._take_baselines(states)  # marks them wanted again: Redis may have restarted empty
                if states:
                    self._send(*[("SSUBSCRIBE", name) for name, _ in states])
                    self._catch_up(states)  # what was published while the link was down
                self.online.set()
                self._read()
            except bp._link_errors as err:
                self._drop_connection(broken=True)
                bp._lost(err)
            except gevent.GreenletExit:
                self._drop_connection(broken=True)
                raise

    def _drop_connection(self, broken: bool) -> None:
        self.online.clear()
        conn, self.conn = self.conn, None
        if conn is not None:
            self.bp.nodes.release(self.node, conn, broken=broken)
        for state in self.channels.values():
            state.confirmed.clear()

    def _read(self) -> None:
        bp, conn = self.bp, self.conn
        idle = 0.0
        while True:
            while bp.bus.mailbox_depth() > bp.backlog_limit:  # the streams hold the events meanwhile
                gevent.sleep(0.005)
            if not conn.can_read(timeout=1.0):
                idle += 1.0
                if idle >= bp.block:  # a dead link shows as an error on the next command
                    self._send(("PING",))
                    idle = 0.0
                continue
            idle = 0.0
            # push_request: under RESP3 (redis-py's default) a message is a push reply, which
            # redis-py would otherwise hand to a handler and recurse for the next one.
            reply = conn.read_response(push_request=True)
            if not isinstance(reply, list):  # PONG while subscribed to nothing
                continue
            kind = bytes(reply[0])
            if kind == b"smessage":
                self._live(bytes(reply[1]).decode(), bytes(reply[2]))
            elif kind == b"ssubscribe":
                state = self.channels.get(bytes(reply[1]).decode())
                if state is not None:
                    state.confirmed.set()
            elif kind == b"sunsubscribe" and bytes(reply[1]).decode() in self.channels:
                # Not asked for: the channel's slot moved to another node (cluster resharding).
                raise self.bp._link_errors[0](f"{bytes(reply[1]).decode()} moved to another node")

    # -- taking entries --------------------------------------------------------------------

    def _live(self, name: str, data: bytes) -> None:
        state = self.channels.get(name)
        if state is None:
            return
        message = parse_message(data)
        if state.last_c is not None and message.counter > state.last_c + 1:
            self._catch_up([(name, state)])  # the stream has what came between
            if state.last_c is not None and message.counter <= state.last_c:
                return
        self._take(name, state, message)

    def _catch_up(self, states: list[tuple[str, _Channel]]) -> None:
        """Read each channel's stream after its last id taken (pipelined), take what follows."""
        bp = self.bp
        client = bp.nodes.client(self.node)
        todo = [(name, state) for name, state in states if state.last_c is not None]
        while todo:
            pipe = client.pipeline(transaction=False)
            for name, state in todo:
                pipe.xrange(name, min=b"(" + state.last_id, max="+", count=bp.batch)
            replies = pipe.execute()
            bp.stats.catchups += len(todo)
            more = []
            for (name, state), entries in zip(todo, replies):
                if self.channels.get(name) is not state:
                    continue  # unsubscribed meanwhile
                for entry_id, fields in entries:
                    self._take(name, state, parse_entry(bytes(entry_id), fields))
                if len(entries) >= bp.batch:
                    more.append((name, state))
            todo = more

    def _take(self, name: str, state: _Channel, message: Message) -> None:
        bp = self.bp
        stats = bp.stats
        last = state.last_c
        if last is not None:
            if message.counter <= last:
                before = _id_key(state.last_id)
                if _id_key(message.id) <= before:
                    return  # read twice (live and from the stream): taken already
                if message.stored_at() * 1000 - before[0] < TOPIC_TTL * 1000:
                    self._reset(name, state)  # else: idle longer than its keys live, a new start
            elif message.counter > last + 1:
                stats.missed += message.counter - last - 1
                bp._throttle(("missed", name), logging.WARNING,
                             "backplane: missed %d events of %s (trimmed from its stream, or written "
                             "while Redis did not know this process listened)", message.counter - last - 1, name)
        state.last_c, state.last_id = message.counter, bytes(message.id)
        origin = bytes(message.origin)
        if origin == bp._origin or bp._closed:
            return
        seen = state.seen
        previous = seen.get(origin)
        if previous is not None and message.seq <= previous:
            stats.duplicates += 1  # a write retried after a lost link
            return
        seen[origin] = message.seq
        if len(seen) > 4096:  # processes come and go: forget the oldest
            del seen[next(iter(seen))]
        if message.copies > 1 and len(bp._refs) > 1:  # may come on another channel too: hand it over once
            recent = bp._recent  # the backplane's: the other channel may be on another node
            key = (origin, message.seq)
            if key in recent:
                return
            recent[key] = None
            if len(recent) > RECENT_MAX:
                recent.popitem(last=False)
        _deliver(bp, message, origin)


def _id_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, n = entry_id.partition(b"-")
    return int(ms), int(n or 0)


def _deliver(bp: Any, message: Message, origin: bytes) -> None:
    """Hand one entry to the bus (``bp``: the backplane)."""
    try:
        event = decode_event(orjson.loads(message.event))
        identity = rebuild_identity(orjson.loads(message.identity), origin.decode("utf-8", "replace"))
        if message.pt:  # a recoverable topic's event, with its position
            bp.bus.deliver_remote(event, identity, (int(message.po), bytes(message.pe).decode(), None))
        else:
            bp.bus.deliver_remote(event, identity)
    except Exception as err:  # noqa: BLE001 - one bad entry must not stop the reader
        if bp.bus.closing:
            return
        bp.stats.decode_errors += 1
        bp._throttle("decode", logging.ERROR, "backplane: cannot deliver an entry from %s: %s: %s",
                     origin.decode("utf-8", "replace"), type(err).__name__, err)
        return
    bp.stats.received += 1
    instruments = bp.instruments
    if instruments is not None:
        instruments.backplane_lag(max(0.0, time.time() - message.stored_at()))

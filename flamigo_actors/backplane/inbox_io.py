"""The reading and writing greenlets of the domain actors' inbox streams (wire level).

:class:`InboxWriter` writes calls to other nodes' inboxes and publishes replies on their
reply channels (:mod:`.reply_io`);
:class:`InboxReader` reads this node's inbox. They serve one
:class:`~.actor_calls.RedisRemoteCalls` (``calls``: its counters, its waiting calls, what
it does with an entry read), each on a raw connection of its own taken from the link's
pool, writing commands in Redis's wire format (RESP) made here and reading the answers
on the latency path (the reader's) with :class:`~.resp.RespReader` (the writer's, read
later, with redis-py's parser): no per-command client machinery on the latency path.

Guarantees and costs:

* **One write per batch**: whatever waits in the outbox goes out in one ``send``
  (``XADD ... MAXLEN ~`` per call, ``EXPIRE NX`` on the target inboxes now and then,
  ``PUBLISH`` per reply). A call with a reply to wait for goes out only once this
  node's reply subscription holds (the writer waits for it).
  Redis's answers (entry ids, or an error that fails that call with
  ``ActorUnavailable``) are read when they are there, never waited for right after a
  write (:data:`ACK_READ_DELAY`).
* **Replies ride on the next read**: replies settled while the reader handles what it
  read go out in the same write as its next ``XREAD``, each a ``PUBLISH`` behind
  ``CLIENT REPLY SKIP``: one write, and no answer to wake this process. A reply
  nobody hears (its caller gone) is dropped.
* **Redis Cluster**: inboxes are hash-tagged by node (``{<channel>:node:<id>}``), so
  they spread over the masters; :class:`NodeWriters` keeps one :class:`InboxWriter`
  (one connection, one greenlet) per master written to. Replies are ``PUBLISH``es,
  which a cluster forwards to every node: the reader carries them all, whatever
  master it is on. A ``MOVED``/``ASK`` answer (a stale slot map after a failover)
  counts as a link error, as below: the map is refreshed.
* **Faults**: a link error drops the connection (``link.lost``: the link reconnects
  with backoff and the calls waiting fail at once); the calls whose writes were not
  acknowledged fail with ``ActorUnavailable`` (they may or may not have run: never
  retried). An error answer to ``XREAD`` (e.g. WRONGTYPE) is logged and the read
  retried after ``reconnect_cap`` seconds.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import gevent
from gevent.event import Event
from greenlet import getcurrent

from .resp import RespReader, command, command_head, with_last, write

__all__ = ["ACK_READ_DELAY", "InboxReader", "InboxWriter", "NodeWriters"]

_log = logging.getLogger("flamigo_actors.actors.redis")


ACK_READ_DELAY = 0.02
"""Seconds the sender leaves Redis's answers to its writes unread when nothing else is
to be written: read right away, they would wake this process while the owner (and then
the caller's reader) needs the CPU; they are read with the next write, or after this."""

_NO_CALL = ""  # an answer that fails no call (a reply, a tell, an EXPIRE)


_SKIP_REPLY = command("CLIENT", "REPLY", "SKIP")
_PUBLISH_HEADS: dict[str, bytes] = {}


def _publish(target: str, document: bytes) -> bytes:
    """``PUBLISH target document`` (a reply), its constant head made once per channel."""
    head = _PUBLISH_HEADS.get(target)
    if head is None:
        if len(_PUBLISH_HEADS) > 10_000:
            _PUBLISH_HEADS.clear()
        head = _PUBLISH_HEADS[target] = command_head("PUBLISH", target)
    return with_last(head, document)
_XADD_HEADS: dict[tuple[str, int], bytes] = {}


def _xadd(target: str, document: bytes, maxlen: int) -> bytes:
    """``XADD target MAXLEN ~ maxlen * m document``, its constant head made once per inbox."""
    head = _XADD_HEADS.get((target, maxlen))
    if head is None:
        if len(_XADD_HEADS) > 10_000:
            _XADD_HEADS.clear()
        head = _XADD_HEADS[(target, maxlen)] = command_head("XADD", target, "MAXLEN", "~", maxlen, "*", "m")
    return with_last(head, document)


class InboxWriter:
    """The write side: an outbox filled without touching the network, and the greenlet
    that writes it to the inboxes (one pipelined write per batch, on a connection of its
    own). Redis's answers (entry ids, or an error that fails that call) are read when
    they are there, never waited for right after a write (see :data:`ACK_READ_DELAY`)."""

    def __init__(self, calls: Any, key: str = "", expiring: dict[str, float] | None = None) -> None:
        self.calls = calls
        self.key = key  # on a Redis Cluster: an inbox on the master this writer writes to
        self.outbox: deque[tuple[str, bytes, str | None, bool]] = deque()  # (.., publish: a reply)
        self.in_flight = 0
        self.wake = Event()
        self.expiring: dict[str, float] = {} if expiring is None else expiring
        self.conn: Any = None
        self.unread: deque[str] = deque()  # per command written, the call its answer may fail
        self.parked = False  # the writing greenlet waits for work (not using the connection)
        self.writing = False  # a caller's greenlet writes on the connection right now
        self.hub = gevent.get_hub()  # (a done-callback in the hub must never write: it cannot wait)
        # Wakes the parked writer to read the answers to direct writes, ACK_READ_DELAY later
        # (not at once: nothing to switch to on the caller's side while its call is out).
        # Armed with again(), which counts from now: a libev timer start()ed again after
        # it fired counts from its last expiry, i.e. fires at once (it then woke the writer
        # right after every direct write, taking the CPU the owner needed).
        self.ack_timer = self.hub.loop.timer(ACK_READ_DELAY, ACK_READ_DELAY)

    def _ack_due(self) -> None:
        self.ack_timer.stop()  # (repeating only so that again() restarts it: once is enough)
        self.wake.set()

    @property
    def pending(self) -> int:
        return len(self.outbox) + self.in_flight

    def put(self, target: str, document: bytes, call_id: str | None, *, publish: bool = False) -> None:
        """Queue (or write at once) an ``XADD`` to inbox ``target``, or (``publish``) a reply."""
        conn, link = self.conn, self.calls.link
        if (conn is None or not self.parked or self.outbox or self.writing or not link.connected
                or getcurrent() is self.hub or (call_id and not self.calls._replies.subscribed.is_set())):
            self.outbox.append((target, document, call_id, publish))
            self.wake.set()
            return
        # Nothing ahead of it and the writer idle: written from this greenlet at once (no
        # switch to the writer on the latency path); the writer reads Redis's answer later.
        self.writing = True
        try:
            if publish:
                data, ids = _publish(target, document), [_NO_CALL]
            elif self.expiring.get(target, 0.0) >= time.monotonic():  # (no EXPIRE due: one command)
                data, ids = _xadd(target, document, self.calls.maxlen), [call_id or _NO_CALL]
            else:
                commands, ids = self.commands([(target, document, call_id, publish)])
                data = b"".join(commands)
            write(conn, data)
        except link.redis_error as err:
            self.calls._fail(call_id, f"cannot reach Redis ({err})")
            self.drop(err)
            return
        finally:
            self.writing = False
        self.calls.stats["sent"] += 1
        self.unread.extend(ids)
        if not self.ack_timer.active:
            self.ack_timer.again(self._ack_due)

    def drop(self, err: BaseException) -> None:
        """The connection failed: close it, fail the calls whose answers were not read, report."""
        link = self.calls.link
        if self.conn is not None:
            link.release(self.conn, broken=True)
            self.conn = None
        self.fail_unread(self.unread, err)
        if isinstance(err, link.link_errors):
            link.lost(err)

    def drop_all(self) -> list[str | None]:
        """Forget what waits (its call ids, to fail them)."""
        ids = [entry[2] for entry in self.outbox]
        self.outbox.clear()
        return ids

    def expire_due(self, targets: Any, now: float) -> list[str]:
        """Targets whose ``EXPIRE NX`` is due (a gone node's inbox expires: set now and then)."""
        calls = self.calls
        due = [t for t in targets if self.expiring.get(t, 0.0) < now]
        if due:
            if len(self.expiring) > 10_000:
                self.expiring.clear()
            for target in due:
                self.expiring[target] = now + calls.inbox_ttl / 4
        return due

    def run(self) -> None:
        calls, outbox, unread = self.calls, self.outbox, self.unread
        link = calls.link
        try:
            while True:
                if not outbox:
                    self.wake.clear()
                    self.parked = True
                    try:
                        self.wake.wait(ACK_READ_DELAY if unread else None)
                    finally:
                        self.parked = False
                    while self.writing:  # a caller's greenlet is writing (its send blocked)
                        gevent.sleep(0.001)
                    if unread and not outbox:
                        self.read_answers(block=not self.wake.is_set())
                    continue
                if not link.connected:
                    calls._fail_waiting()
                    continue
                if not calls._in.positioned.is_set():  # else a quick reply could land before the reader's start
                    calls._in.positioned.wait(link.socket_timeout)
                    continue
                if calls._subscriber is not None and not calls._replies.subscribed.is_set():
                    calls._replies.subscribed.wait(link.socket_timeout)  # else its reply could be missed
                    continue
                batch = [outbox.popleft() for _ in range(min(len(outbox), calls.batch))]
                self.in_flight = len(batch)
                try:
                    if self.conn is None:
                        self.conn = link.connection_for(self.key)  # its own: no pool round trip per write
                    commands, ids = self.commands(batch)
                    write(self.conn, b"".join(commands))
                except link.redis_error as err:
                    for entry in batch:
                        calls._fail(entry[2], f"cannot reach Redis ({err})")
                    self.drop(err)
                    continue
                finally:
                    self.in_flight = 0
                calls.stats["sent"] += len(batch)
                unread.extend(ids)
                self.read_answers(block=False)
        finally:
            self.ack_timer.stop()
            if self.conn is not None:
                link.release(self.conn, broken=bool(unread))
                self.conn = None

    def commands(self, batch: list[tuple[str, bytes, str | None, bool]]) -> tuple[list[bytes], list[str]]:
        calls = self.calls
        commands = [_publish(target, document) if publish else _xadd(target, document, calls.maxlen)
                    for target, document, _id, publish in batch]
        ids = [call_id or _NO_CALL for _target, _document, call_id, _p in batch]
        for target in self.expire_due({target for target, _d, _i, publish in batch if not publish},
                                      time.monotonic()):
            commands.append(command("EXPIRE", target, int(calls.inbox_ttl), "NX"))
            ids.append(_NO_CALL)
        return commands, ids

    def read_answers(self, *, block: bool) -> None:
        """Read the answers that are there (``block``: all of them)."""
        calls, link, conn, unread = self.calls, self.calls.link, self.conn, self.unread
        try:
            while unread and (block or conn.can_read(0)):
                try:
                    conn.read_response()
                except link.redis_error as err:
                    if isinstance(err, link.link_errors):
                        raise
                    call_id = unread.popleft()  # an error reply: that write failed
                    calls._fail(call_id, f"Redis refused it ({err})")
                    _log.error("domain actors: Redis refused a write to an inbox: %s", err)
                    continue
                unread.popleft()
        except link.redis_error as err:
            self.drop(err)

    def fail_unread(self, unread: deque[str], err: BaseException) -> None:
        for call_id in unread:
            if call_id:
                self.calls._fail(call_id, f"lost Redis ({err})")
        unread.clear()


class NodeWriters:
    """On a Redis Cluster: one :class:`InboxWriter` per master written to (a raw connection
    writes to one node only), with :class:`InboxWriter`'s interface for the calls.

    Each writer runs in a greenlet of its own, started at its first write; :meth:`run`
    (the calls' sender greenlet) stops them all when it is killed. After a failover the
    inboxes of the dead master's slots go to a new writer (for the promoted replica).
    """

    def __init__(self, calls: Any) -> None:
        self.calls = calls
        self.writers: dict[str, InboxWriter] = {}
        self.expiring: dict[str, float] = {}
        self._greenlets: list[gevent.Greenlet] = []

    @property
    def pending(self) -> int:
        return sum(writer.pending for writer in self.writers.values())

    def writer_for(self, target: str) -> InboxWriter:
        client = self.calls.link.client
        node = client.get_node_from_key(target).name
        writer = self.writers.get(node)
        if writer is None:
            writer = self.writers[node] = InboxWriter(self.calls, target, self.expiring)
            self._greenlets.append(gevent.spawn(writer.run))
        return writer

    def put(self, target: str, document: bytes, call_id: str | None, *, publish: bool = False) -> None:
        try:
            writer = self.writer_for(target)
        except Exception as err:  # noqa: BLE001 - no master serves the inbox's slot right now
            self.calls._fail(call_id, f"no Redis Cluster node serves {target} ({err})")
            return
        writer.put(target, document, call_id, publish=publish)

    def drop_all(self) -> list[str | None]:
        return [call_id for writer in self.writers.values() for call_id in writer.drop_all()]

    def expire_due(self, targets: Any, now: float) -> list[str]:
        return InboxWriter.expire_due(self, targets, now)  # type: ignore[arg-type]

    def run(self) -> None:
        try:
            Event().wait()  # the writers do the work; this greenlet owns them until killed
        finally:
            gevent.killall(self._greenlets, block=True, timeout=1.0)


class InboxReader:
    """The read side: ``XREAD BLOCK`` this node's inbox from the last entry seen (on a
    connection of its own), refresh the inbox's expiry, hand each entry to the calls.

    Replies settled while the reader handles what it read go out in the same write as
    its next ``XREAD``, each a ``PUBLISH`` behind ``CLIENT REPLY SKIP`` (Redis answers
    only the read): no extra write, no answer to wake this process.
    """

    def __init__(self, calls: Any) -> None:
        self.calls = calls
        self.last_id: Any = None
        self.positioned = Event()
        """Set once the reader knows where the inbox ends: calls may go out (a reply written
        before that point would never be read)."""
        self.collecting = False
        """True while the reader handles entries it read: replies settled meanwhile wait in
        :attr:`replies` for its next write."""
        self.replies: list[tuple[str, bytes]] = []

    def hand_over(self) -> None:
        """Give the replies held for the next read to the sender (closing)."""
        self.collecting = False
        replies, self.replies = self.replies, []
        for target, document in replies:
            self.calls._out.put(target, document, None, publish=True)

    def run(self) -> None:
        calls = self.calls
        link = calls.link
        block_ms = max(1, int(link.block * 1000))
        # (made once: only the last entry id changes from one read to the next)
        xread = command_head("XREAD", "COUNT", calls.batch, "BLOCK", block_ms, "STREAMS", calls.inbox)
        refreshed = 0.0
        conn: Any = None
        replies: Any = None
        try:
            while not calls._closed:
                if not link.connected:
                    self.hand_over()
                    link.up.wait()
                try:
                    if conn is None:
                        conn = link.connection_for(calls.inbox)  # its own: no pool round trip per read
                        replies = RespReader(conn)
                    if self.last_id is None:
                        write(conn, command("XREVRANGE", calls.inbox, "+", "-", "COUNT", 1))
                        last = replies.read()
                        self.last_id = last[0][0] if last else b"0-0"
                    self.positioned.set()
                    commands = self.pending_writes()
                    if time.monotonic() - refreshed > calls.inbox_ttl / 4:
                        commands += [_SKIP_REPLY, command("EXPIRE", calls.inbox, int(calls.inbox_ttl))]
                        refreshed = time.monotonic()
                    commands.append(with_last(xread, self.last_id))
                    write(conn, b"".join(commands))
                    reply = replies.read()
                except link.link_errors as err:
                    if conn is not None:
                        link.release(conn, broken=True)
                        conn = None
                    link.lost(err)
                    continue
                except link.redis_error as err:  # e.g. WRONGTYPE: not a stream
                    link.last_error = f"{type(err).__name__}: {err}"
                    _log.error("domain actors: reading the inbox %s failed: %s", calls.inbox, err)
                    gevent.sleep(link.reconnect_cap)
                    continue
                if not reply:
                    continue
                self.collecting = True
                for entry_id, document in _entries(reply):
                    self.last_id = entry_id
                    calls._receive(document)
                # Let the calls just read run, and the callers woken by replies, before
                # the next XREAD (their replies go out with it). Bounded: a slow actor's
                # reply goes out through the sender whenever it comes.
                for _ in range(8):
                    gevent.sleep(0)
                    if not calls._unsettled:
                        break
        finally:
            self.hand_over()
            if conn is not None:
                link.release(conn, broken=True)

    def pending_writes(self) -> list[bytes]:
        """The replies collected since the last read, as commands whose answers Redis skips."""
        self.collecting = False
        replies = self.replies
        if not replies:
            return []
        self.replies = []
        calls = self.calls
        commands: list[bytes] = []
        for target, document in replies:
            commands += [_SKIP_REPLY, _publish(target, document)]
        calls.stats["sent"] += len(replies)
        return commands


def _entries(reply: Any) -> list[tuple[Any, bytes]]:
    """(entry id, document) of each entry of an XREAD answer (RESP2 list or RESP3 map)."""
    streams = reply.values() if isinstance(reply, dict) else [stream[1] for stream in reply]
    out = []
    for entries in streams:
        for entry_id, fields in entries:
            if isinstance(fields, list) and len(fields) == 2 and fields[0] == b"m":
                document = fields[1]
            elif isinstance(fields, dict):
                document = fields.get(b"m", b"")
            else:  # [field, value, ...]
                document = dict(zip(fields[::2], fields[1::2])).get(b"m", b"")
            out.append((entry_id, document))  # an entry without one: counted unreadable
    return out

"""Replies to this process's remote asks, over Redis pub/sub.

A call goes to its owner's inbox *stream* (durable, read once, in order); its reply
goes back as a pub/sub message on the caller's reply channel,
``{<channel>:node:<node id>}:replies`` (the inbox's hash tag), that one subscriber
greenlet of the caller reads on a connection of its own. A reply needs no
durability: the caller is waiting for it, and when it is gone (or gave up) the reply
is dropped either way; so the reply is carried by the message itself, with no
stream entry to append, trim, expire and read again, and Redis pushes it to the
caller without a new ``XREAD`` per reply.

Guarantees and failures:

* **Nothing sent before the subscription holds**: :attr:`ReplySubscriber.subscribed`
  is set once Redis confirmed the subscription and cleared when its connection is
  lost; calls go out only while it is set (the writer waits for it), so a reply is
  never published to a channel this process does not hear yet.
* **Connection lost** → the link goes down (``link.lost``: calls waiting fail at
  once, as for any link error), the subscriber waits for the link and subscribes
  again. A reply published meanwhile is lost like a reply to a gone caller; its call
  failed already.
* **Idle**: while nothing arrives the subscriber sends a ``PING`` every ``block``
  seconds (a subscribed connection may): a silently dead connection is found.
* Costs: one connection and one greenlet per process that asks actors elsewhere,
  started with its first remote call; nothing in a process that only serves calls.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import gevent
import orjson
from gevent.event import Event

from .resp import RespReader, command, write

__all__ = ["ReplySubscriber", "replies_of"]

_PING = command("PING")

_log = logging.getLogger("flamigo_actors.actors.redis")


def replies_of(channel: str, node: str) -> str:
    """The pub/sub channel of node ``node``'s replies (its inbox's hash tag)."""
    return f"{{{channel}:node:{node}}}:replies"


class ReplySubscriber:
    """The caller's side: subscribe to this node's reply channel, resolve each reply.

    ``calls`` is the :class:`~.actor_calls.RedisRemoteCalls` (its ``link``, ``channel``,
    ``node_id``, ``stats``, ``_closed`` and ``_resolve(reply)``).
    """

    def __init__(self, calls: Any) -> None:
        self.calls = calls
        self.channel = replies_of(calls.channel, calls.node_id)
        self.subscribed = Event()
        """Set while Redis delivers this node's replies: calls may go out."""
        self.conn: Any = None
        calls.link.when_down(self._down)

    def _down(self) -> None:
        # The link dropped (seen by any part): subscribe again on a new connection once it
        # is back, rather than trust this one (calls wait for the new subscription).
        self.subscribed.clear()
        conn, self.conn = self.conn, None
        sock = getattr(conn, "_sock", None)
        if sock is not None:
            try:  # a wait on it ends with "closed by server" (the subscriber then closes it)
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def receive(self, document: bytes) -> None:
        """Resolve the waiting call a reply (``["r", call id, ok, value or error]``) is for."""
        try:
            reply = orjson.loads(document)
            if reply[0] != "r":
                raise ValueError(f"not a reply: {reply[0]!r}")
        except Exception as err:  # noqa: BLE001 - one bad message must not stop the subscriber
            self.calls.stats["decode_errors"] += 1
            _log.error("domain actors: unreadable reply on %s: %s: %s", self.channel, type(err).__name__, err)
            return
        self.calls._resolve(reply)

    def run(self) -> None:
        calls = self.calls
        link = calls.link
        conn: Any = None
        replies: Any = None
        # (a tuple on a Redis Cluster: an except clause takes no nested tuple)
        errors = link.redis_error if isinstance(link.redis_error, tuple) else (link.redis_error,)
        errors = (*errors, ValueError)  # (ValueError: its buffer closed)
        try:
            while not calls._closed:
                if not link.connected:
                    link.up.wait()
                if conn is not None and self.conn is not conn:  # dropped by _down meanwhile
                    link.release(conn, broken=True)
                    conn = None
                try:
                    if conn is None:
                        conn = self.conn = link.connection_for(self.channel)
                        replies = RespReader(conn)
                        replies.sock.settimeout(link.block)  # (its own: silent for link.block: PING)
                        write(conn, command("SUBSCRIBE", self.channel))
                    try:
                        message = replies.read()
                    except replies.timeout_error:
                        write(conn, _PING)  # finds a dead connection
                        continue
                except errors as err:
                    self.subscribed.clear()
                    ours = self.conn is conn  # (else _down closed it: the link is down already)
                    if conn is not None:
                        link.release(conn, broken=True)
                        conn = self.conn = None
                    if ours:
                        if not isinstance(err, link.link_errors):  # not expected from a subscription
                            _log.error("domain actors: the reply subscription %s failed: %s", self.channel, err)
                        link.lost(err)
                    continue
                if not isinstance(message, list) or not message:
                    continue  # PONG
                kind = message[0]
                if kind == b"message":
                    self.receive(message[2])
                    gevent.sleep(0)  # the caller it woke runs first (before this reads on)
                elif kind == b"subscribe":
                    self.subscribed.set()
        finally:
            self.subscribed.clear()
            self.conn = None
            if conn is not None:
                link.release(conn, broken=True)

"""One WebSocket connection: its reader, its write path and its lifecycle.

The parts, one job each:

* :class:`~flamigo_actors.websocket.client.WebsocketClient`: the connection's
  state (user, subscriptions, counters) and its *identity* (type
  ``"websocket"``): what strategies and hooks see as ``ctx.identity``.
* :class:`Connection` (here): the glue. Its :meth:`~Connection.run` is the
  *reader*: it only receives frames and tells the actor. Its outbound path
  (:class:`~flamigo_actors.websocket.outbound.Outbound`) is the one way to
  the socket.
* :class:`~flamigo_actors.websocket.actor.ConnectionActor`: the Pykka actor
  whose mailbox is the one place where this connection's strategy executions
  and event deliveries happen, one at a time, in arrival order.
* :class:`~flamigo_actors.websocket.lifecycle.Lifecycle`: the one owner of
  "is it open, closing, closed, and why" (its module documents the state
  machine). The outbound queue and the reader report into it.
* The :class:`~flamigo_actors.websocket.hub.Hub` (registry, admission,
  keepalive, kick, drain) is what a connection talks to about the rest of
  the application.

However a connection ends (client close, network drop, ping timeout, kick,
oversize message, slow consumer, server shutdown, a crash in the actor), its
cleanup runs exactly once (the lifecycle's ``CLOSED`` transition): the
subscription is cancelled, deferred work is stopped, ``on_disconnect`` hooks
run, and one :class:`~flamigo_actors.core.events.Disconnected` event is
published if its ``Connected`` was. Then the actor stops and leaves the
Pykka registry.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import gevent
import pykka
from gevent.lock import Semaphore

from . import protocol
from ..core.errors import FlamigoError, status_of, trace_of
from ..core.events import Disconnected
from ..core.ratelimit import TokenBucket
from ..runtime.signals import connection_closed
from .actor import END, Close, ConnectionActor, Push
from .client import WebsocketClient
from .framing import PING_FRAME, Transport, close_frame, text_frame
from .hub import GOING_AWAY, KICKED, Hub
from .lifecycle import Lifecycle
from .outbound import Outbound
from .reader import read

if TYPE_CHECKING:
    from ..core.identity import Identity
    from ..runtime.bus import Subscription, SyncWaiter

__all__ = ["GOING_AWAY", "KICKED", "Connection", "ConnectionActor", "WebsocketClient", "protocol"]

_log = logging.getLogger("flamigo_actors.connection")



class Connection:
    """Glue between a transport, a :class:`WebsocketClient` and a :class:`ConnectionActor`.

    Created by the hub's owner for each accepted WebSocket (or by the test
    client over an in-memory transport); :meth:`run` serves it until it ends.
    """

    session: Any = None  # the recovery session (websocket/resume.py) once the client opted in

    def __init__(self, hub: Hub, transport: Transport) -> None:
        settings = hub.settings
        self.hub = hub
        self.stats = hub.stats
        self.transport = transport
        self.lifecycle = Lifecycle()
        self.client = WebsocketClient(self, transport.remote_addr)
        self.auth_required: bool = hub.auth_required
        self.debug: bool = hub.debug
        self.outbound = Outbound(
            transport,
            max_messages=settings.outbound_max_messages,
            max_bytes=settings.outbound_max_bytes,
            on_overflow=self._on_outbound_overflow,
            on_failure=self._on_outbound_failure,
        )
        self.subscription: Subscription | None = None
        self.pending_deliveries = 0
        self.slots = Semaphore(settings.max_pending_requests)
        self.last_activity = time.monotonic()
        self.last_ping = self.last_activity
        self.reader_paused = False
        rate, burst = settings.rate_limit, settings.rate_limit_burst
        self.rate = TokenBucket(rate, burst) if rate else None
        self.limited_in_a_row = 0
        self.instruments = hub.instruments  # None unless FLAMIGO_METRICS: nothing measured
        self.ref: Any = None
        self.actor: ConnectionActor | None = None  # set by the actor itself
        transport.max_message_size = settings.max_message_size  # type: ignore[attr-defined]
        transport.on_control = self.outbound.push  # type: ignore[attr-defined]
        transport.on_activity = self._touch  # type: ignore[attr-defined]

    # -- the reader ------------------------------------------------------------

    def run(self) -> None:
        """Serve the connection until it ends (runs in the handler's greenlet)."""
        self.hub.register(self)
        read(self, self._end)  # _end runs as soon as reading ends

    def send_text(self, payload: bytes) -> None:
        """Write a text frame carrying ``payload`` (a reply, an error, the heartbeat's pong)."""
        self.push(text_frame(payload))

    def _touch(self) -> None:
        self.last_activity = time.monotonic()

    def _end(self, code: int, reason: str) -> None:
        # The reader is done: nothing more is accepted; the actor cleans up
        # after what is already in its mailbox.
        self.lifecycle.begin_close(code, reason)
        self.outbound.stop()
        self.transport.abort()
        ref = self.ref
        if ref is not None and ref.is_alive():
            try:
                ref.tell(END)
                return
            except pykka.ActorDeadError:
                pass
        self.cleanup()

    def cleanup(self) -> None:
        """Release everything and report the end, exactly once (later calls do nothing).

        Run by the actor as it stops; by the hub after a drain that a strategy
        outlived; by the reader when the actor is already gone.
        """
        lifecycle = self.lifecycle
        if not lifecycle.finish():
            return
        client = self.client
        code, reason = lifecycle.code or 1006, lifecycle.reason
        client.close_code, client.close_reason = code, reason
        outbound = self.outbound
        outbound.stop()
        outbound.release()
        self.transport.abort()
        # A reader waiting for a request slot of a dead actor would wait forever.
        self.slots.release()
        if self.subscription is not None:
            self.subscription.cancel()
        if self.actor is not None:
            self.actor.cancel_deferred()
        if self.session is not None:
            self.session.closed()  # saved with the disconnect time: the recovery window starts
        hub = self.hub
        self.stats.frames_dropped += outbound.refused + outbound.dropped
        hub.unregister(self)
        try:
            hub.run_hooks("disconnect", client)
        finally:
            if lifecycle.was_open:  # events come in pairs: no Connected, no Disconnected
                user = client.user
                try:
                    hub.publish(
                        Disconnected(client.conn_id, user.id if user else None, code, reason),
                        identity=client,
                    )
                except RuntimeError:
                    _log.warning("connection %s ended after the bus closed", client.conn_id)
                connection_closed.send(hub.app, connection=client, code=code, reason=reason)

    # -- closing ---------------------------------------------------------------

    def close(self, code: int, reason: str, *, flush: bool) -> None:
        """End the connection with a close frame ``(code, reason)``.

        With ``flush``, frames already queued go out first (within
        ``FLAMIGO_CLOSE_TIMEOUT``); without it they are discarded and counted.
        The first reason recorded is the one the disconnected event reports.
        """
        self.lifecycle.begin_close(code, reason)
        self.outbound.finish(
            close_frame(code, reason), flush=flush, drain_timeout=self.hub.settings.close_timeout
        )

    def request_close(self, code: int, reason: str) -> None:
        """Close after the requests already read and the deferred replies are answered.

        The graceful way (server shutdown): the close is queued in the actor's
        mailbox; if the actor is gone, the connection closes at once.
        """
        ref = self.ref
        try:
            if ref is None:
                raise pykka.ActorDeadError("not started")
            ref.tell(Close(code, reason))
        except pykka.ActorDeadError:
            self.close(code, reason, flush=False)

    def abort(self, code: int, reason: str) -> None:
        """Tear the connection down now (the peer is unresponsive)."""
        self.close(code, reason, flush=False)
        # No waiting for a frame half-written to a peer that stopped answering.
        self.transport.abort()

    def send_ping(self) -> None:
        """Send a WebSocket ping (the hub's keepalive)."""
        self.last_ping = time.monotonic()
        self.outbound.push(PING_FRAME)

    def _on_outbound_overflow(self) -> None:
        self.stats.slow_consumers += 1
        _log.warning(
            "connection %s: client too slow (%d frames / %d bytes queued); closing with 1013",
            self.client.conn_id, self.outbound.depth, self.outbound.pending_bytes,
        )
        self.close(1013, "too slow: outbound queue full", flush=False)

    def _on_outbound_failure(self) -> None:
        self.lifecycle.begin_close(1006, "connection lost")
        self.transport.abort()

    # -- sending ---------------------------------------------------------------

    def push(self, frame: bytes) -> None:
        """Write a frame (a client event from the bus, a reply...) and count it."""
        if self.outbound.push(frame):
            self.client.messages_out += 1
            self.stats.messages_out += 1
            if self.instruments is not None:
                self.stats.bytes_out += len(frame)

    def send_reply(self, topic: str, result: Any, ack_id: Any) -> None:
        """Send a strategy's result (a 500 error if it is not JSON-serialisable)."""
        try:
            payload = protocol.encode_reply(topic, result, ack_id)
        except TypeError as err:
            failure = FlamigoError(f"strategy({topic}): result is not JSON-serialisable: {err}")
            self.send_error(failure, ack_id, strategy=topic)
            return
        self.send_text(payload)

    def send_error(self, err: BaseException, ack_id: Any, *, strategy: str | None = None) -> None:
        """Send an ``error`` message for ``err``; 5xx errors are logged with their trace."""
        if status_of(err) >= 500:
            _log.error(
                "connection %s%s failed: %s",
                self.client.conn_id,
                f" strategy {strategy}" if strategy else "",
                trace_of(err),
            )
        self.send_text(protocol.encode_error(err, ack_id, debug=self.debug))

    # -- bus side --------------------------------------------------------------

    @property
    def urn(self) -> str:
        return self.ref.actor_urn if self.ref is not None else ""

    def describe(self) -> str:
        user = self.client.user
        return f"connection:{self.client.conn_id}" + (f"(user={user.id})" if user else "")

    def deliver(
        self, event: object, frame: bytes | None, identity: Identity, waiter: SyncWaiter | None
    ) -> bool:
        """Queue a push in the mailbox (behind what is already there); False if refused."""
        if frame is None or not self.lifecycle.accepting:
            return False
        actor = self.actor
        if actor is not None and actor.idle():
            # Idle fast path (the fan-out hot path). The actor is waiting on an
            # empty mailbox with nothing in progress (FlamigoActor.idle): a
            # Push told now would be the very next thing it runs, alone, and
            # its handler is only `push` below. Greenlets do not preempt, and
            # Outbound.push never yields, so running that handler here, in the
            # bus actor's greenlet, is indistinguishable from the mailbox doing
            # it, in the same order, never beside a strategy; it saves a
            # message, a greenlet and Pykka's dispatch per recipient. A busy
            # actor (starting, or in a strategy, even one that yields) or a
            # non-empty mailbox takes the mailbox path below, behind what is
            # queued. (tests/test_ordering.py fails if either premise changes.)
            self.push(frame)
            if waiter is not None:
                waiter.done()
            return True
        limit = self.hub.settings.mailbox_max_deliveries
        if self.pending_deliveries >= limit:
            # The bus routes a burst without yielding, so even an idle actor has
            # not run yet: give it one turn. Still full afterwards means busy.
            gevent.sleep(0)
            if not self.lifecycle.accepting:
                return False
        if self.pending_deliveries >= limit:
            self.stats.slow_consumers += 1
            _log.warning(
                "connection %s: %d deliveries waiting in its mailbox; closing with 1013",
                self.client.conn_id, self.pending_deliveries,
            )
            self.close(1013, "too slow: mailbox full", flush=False)
            return False
        self.pending_deliveries += 1
        try:
            self.ref.tell(Push(frame, waiter))
        except pykka.ActorDeadError:
            self.pending_deliveries -= 1
            return False
        return True

    # -- inspection ------------------------------------------------------------

    def mailbox_depth(self) -> int:
        """Messages waiting in the actor's mailbox."""
        ref = self.ref
        if ref is None or not ref.is_alive():
            return 0
        return ref.actor_inbox.qsize()  # type: ignore[no-any-return]

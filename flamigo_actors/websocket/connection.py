"""One WebSocket connection: its client (state and identity), its reader and its actor.

Three parts, one job each:

* :class:`WebsocketClient`: the connection's state (user, subscriptions,
  counters) and its *identity* (type ``"websocket"``): what strategies and
  hooks see as ``ctx.identity``.
* :class:`Connection`: the glue. Its :meth:`~Connection.run` is the *reader*:
  it only receives frames and tells the actor. Its outbound path
  (:class:`~flamigo_actors.websocket.outbound.Outbound`) is the one way to the socket.
* :class:`ConnectionActor`: the Pykka actor whose mailbox is the one place
  where this connection's strategy executions and event deliveries happen,
  one at a time, in arrival order.

However a connection ends (client close, network drop, ping timeout, kick,
oversize message, slow consumer, server shutdown, a crash in the actor), its
cleanup runs exactly once: the subscription is cancelled, deferred work is
stopped, ``on_disconnect`` hooks run, and one :class:`~flamigo_actors.core.events.Disconnected`
event is published. Then the actor stops and leaves the Pykka registry.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import gevent
import pykka
from gevent.event import Event
from gevent.lock import Semaphore

from . import protocol
from ..runtime.engine import FlamigoActor
from ..core.errors import FlamigoError, status_of, trace_of
from ..core.events import Connected, Disconnected, UserAuthenticated
from ..core.identity import WEBSOCKET, User
from .outbound import Outbound
from .protocol import NO_ACK, InvalidText, ProtocolError
from ..core.ratelimit import TokenBucket
from ..runtime.signals import connection_closed, connection_opened
from ..runtime.strategies import DeferredReply, Request, StrategyContext, run_strategy
from ..core.topics import Topic
from .framing import CloseRequired, ConnectionEnded, Transport, close_frame, text_frame

if TYPE_CHECKING:
    from ..runtime.bus import Subscription, SyncWaiter
    from ..integration.extension import Flamigo
    from ..core.identity import Identity

__all__ = ["Connection", "ConnectionActor", "WebsocketClient"]

_log = logging.getLogger("flamigo_actors.connection")

# Connection ids: short, unique in this process, and unique across processes
# sharing a backplane (the pid prefix).
_ids = itertools.count(1)
_ID_PREFIX = f"{os.getpid():x}"

GOING_AWAY = 1001
KICKED = 4000


def _new_conn_id() -> str:
    return f"c{_ID_PREFIX}-{next(_ids)}"


class WebsocketClient:
    """A WebSocket client: the connection's state and its identity (type ``"websocket"``).

    This is ``ctx.identity`` in a strategy served over WebSocket and the
    argument of the ``on_connect`` / ``on_authenticated`` / ``on_disconnect``
    hooks, where an application subscribes clients to its topics.

    Attributes:
        conn_id: unique id of the connection (``c1f2a-17``).
        remote_addr: the peer's ``host:port``.
        connected_at: ``time.time()`` of the upgrade.
        state: ``"connected"``, ``"closing"`` or ``"closed"``.
        messages_in: frames received.
        messages_out: frames sent (replies, errors, pushes).
        ack_id: the ``ackId`` of the request being served, if it had one.
    """

    __slots__ = (
        "_connection", "conn_id", "remote_addr", "connected_at", "state", "_user",
        "messages_in", "messages_out", "ack_id", "close_code", "close_reason", "__weakref__",
    )

    def __init__(self, connection: Connection, remote_addr: str) -> None:
        self._connection = connection
        self.conn_id = _new_conn_id()
        self.remote_addr = remote_addr
        self.connected_at = time.time()
        self.state = "connected"
        self._user: User | None = None
        self.messages_in = 0
        self.messages_out = 0
        self.ack_id: Any = None
        self.close_code: int | None = None
        self.close_reason: str | None = None

    def __repr__(self) -> str:
        user = f" user={self._user.id}" if self._user else ""
        return f"<WebsocketClient {self.conn_id} {self.remote_addr}{user} {self.state}>"

    @property
    def type(self) -> str:
        """Always ``"websocket"``."""
        return WEBSOCKET

    @property
    def user(self) -> User | None:
        """The authenticated user, or ``None`` before ``app::websocket:auth`` succeeds."""
        return self._user

    @property
    def authenticated(self) -> bool:
        """Whether a user is authenticated on this connection."""
        return self._user is not None

    @property
    def subscriptions(self) -> list[str]:
        """The topic patterns this client receives pushes for."""
        sub = self._connection.subscription
        return sorted(sub.patterns) if sub is not None else []

    def subscribe(self, *patterns: str) -> None:
        """Receive the client events published to ``patterns`` (``"rooms/lobby"``, ``"user/42"``).

        Raises:
            TopicError: a pattern is malformed.
            RuntimeError: the connection has ended.
        """
        self._connection.subscribe(*patterns)

    def unsubscribe(self, *patterns: str) -> None:
        """Stop receiving pushes for ``patterns``; unknown ones are ignored."""
        sub = self._connection.subscription
        if sub is not None:
            sub.remove(*patterns)

    def authenticate(self, user: User) -> None:
        """Mark the connection as ``user`` (done by ``app::websocket:auth``).

        Runs the ``on_authenticated`` hooks and publishes
        :class:`~flamigo_actors.core.events.UserAuthenticated` the first time.

        Raises:
            FlamigoError: 409 when another user is already authenticated here.
        """
        self._connection.authenticate(user)

    def close(self, code: int = 1000, reason: str = "closed by the server") -> None:
        """Close the connection after the frames already queued are sent."""
        self._connection.close(code, reason, flush=True)

    def info(self) -> dict[str, Any]:
        """Plain data describing the client (for the shell and the dashboard)."""
        conn = self._connection
        return {
            "id": self.conn_id,
            "remote": self.remote_addr,
            "user": self._user.public() if self._user else None,
            "state": self.state,
            "subscriptions": self.subscriptions,
            "mailbox": conn.mailbox_depth(),
            "outbound": conn.outbound.depth,
            "outbound_bytes": conn.outbound.pending_bytes,
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "connected_at": self.connected_at,
        }


# -- mailbox messages ------------------------------------------------------------


class _Inbound:
    __slots__ = ("binary", "data", "limited")

    def __init__(self, binary: bool, data: bytes, limited: bool) -> None:
        self.binary = binary
        self.data = data
        self.limited = limited


class _Push:
    __slots__ = ("frame", "waiter")

    def __init__(self, frame: bytes, waiter: SyncWaiter | None) -> None:
        self.frame = frame
        self.waiter = waiter


class _Settled:
    __slots__ = ("reply", "topic", "ack_id", "value", "error")

    def __init__(
        self, reply: DeferredReply, topic: str, ack_id: Any, value: Any, error: BaseException | None
    ) -> None:
        self.reply = reply
        self.topic = topic
        self.ack_id = ack_id
        self.value = value
        self.error = error


class _Close:
    __slots__ = ("code", "reason", "wait_deferred")

    def __init__(self, code: int, reason: str, wait_deferred: bool = True) -> None:
        self.code = code
        self.reason = reason
        self.wait_deferred = wait_deferred


class _End:
    __slots__ = ()


_END = _End()


class ConnectionActor(FlamigoActor):
    """The Pykka actor of one connection: strategies and deliveries, one at a time."""

    kind = "connection"

    def __init__(self, connection: Connection) -> None:
        super().__init__()
        self.connection = connection
        self._app_context: Any = None
        connection.actor = self  # for Connection.deliver's idle fast path

    def on_start(self) -> None:
        super().on_start()
        conn = self.connection
        app = conn.flamigo.app
        if app is not None:
            # Strategies may use current_app and its extensions, as views do.
            self._app_context = app.app_context()
            self._app_context.push()
        try:
            conn.flamigo._run_hooks("connect", conn.client)
            conn.flamigo.publish(
                Connected(conn.client.conn_id, conn.client.remote_addr), identity=conn.client
            )
            connection_opened.send(app, connection=conn.client)
        except (Exception, SystemExit):
            # Pykka would stop the actor without on_failure; close cleanly instead.
            _log.exception("connection %s: on_connect failed", conn.client.conn_id)
            conn.close(1011, "internal error", flush=False)

    def on_stop(self) -> None:
        self.connection._cleanup()
        if self._app_context is not None:
            self._app_context.pop()
            self._app_context = None

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        # A failure of the connection's own machinery (not of a strategy, whose
        # errors become replies): close with 1011 and clean up; others carry on.
        conn = self.connection
        conn.close(1011, "internal error", flush=False)
        conn._cleanup()
        if self._app_context is not None:
            self._app_context.pop()
            self._app_context = None

    def on_receive(self, message: Any) -> Any:
        kind = type(message)
        if kind is _Push:
            conn = self.connection
            conn.pending_deliveries -= 1
            conn.push(message.frame)
            if message.waiter is not None:
                message.waiter.done()
        elif kind is _Inbound:
            try:
                # Read after the close began (its answer is the close frame):
                # running it would only have side effects nobody hears about.
                if not self.connection.outbound.closed:
                    self._serve(message)
            finally:
                self.connection.slots.release()
        elif kind is _Settled:
            self._settled(message)
        elif kind is _Close:
            if message.wait_deferred:
                self.connection.close_when_idle(message.code, message.reason)
            else:
                self.connection.close(message.code, message.reason, flush=True)
        elif kind is _End:
            self.actor_ref.stop(block=False)  # after what is already queued
        else:
            return super().on_receive(message)
        return None

    # -- requests ------------------------------------------------------------

    def _serve(self, message: _Inbound) -> None:
        conn = self.connection
        try:
            request = protocol.parse(message.data, binary=message.binary)
        except InvalidText:
            conn.close(1007, "text frame is not valid UTF-8", flush=True)
            return
        except ProtocolError as err:
            conn.send_error(err, err.ack_id)
            return
        ack_id = request.ack_id
        if message.limited:
            conn.send_error(
                FlamigoError("rate limited", public="too many requests: slow down", status=429),
                ack_id,
            )
            return
        flamigo = conn.flamigo
        registry = flamigo.strategies
        try:
            strategy = registry.get(request.topic)
            if conn.auth_required and conn.client._user is None and not (
                strategy is not None and strategy.public
            ):
                raise FlamigoError(
                    f"strategy({request.topic}): not authenticated",
                    public="not authenticated: call app::websocket:auth first",
                    status=401,
                )
            if strategy is None:
                strategy = registry.resolve(request.topic)  # raises 403 / 404
        except FlamigoError as err:
            conn.send_error(err, ack_id)
            return
        limit = strategy.timeout or flamigo.settings.strategy_timeout
        client = conn.client
        client.ack_id = None if ack_id is NO_ACK else ack_id
        ctx = StrategyContext(
            flamigo,
            client,
            Request(request.topic, request.payload),
            deadline=time.monotonic() + limit,
            ack_id=client.ack_id,
        )
        timer = gevent.Timeout(limit)
        timer.start()
        try:
            result = run_strategy(strategy, ctx)
        except gevent.Timeout:
            # Ours, or one the strategy armed and did not catch: a timeout either way.
            conn.send_error(_timed_out(request.topic, limit), ack_id)
            return
        except FlamigoError as err:
            conn.send_error(err, ack_id, strategy=request.topic)
            return
        finally:
            timer.close()
            client.ack_id = None
        if ctx.deferred is not None:
            conn.track_deferred(ctx.deferred, request.topic, ack_id, limit, ctx.deadline or 0.0)
            return
        conn.send_reply(request.topic, result, ack_id)

    def _settled(self, message: _Settled) -> None:
        conn = self.connection
        conn.deferred.pop(message.reply, None)
        if message.error is not None:
            conn.send_error(message.error, message.ack_id, strategy=message.topic)
        else:
            conn.send_reply(message.topic, message.value, message.ack_id)
        if conn.closing_when_idle and not conn.deferred:
            conn.close(*conn.closing_when_idle, flush=True)


def _timed_out(topic: str, limit: float) -> FlamigoError:
    return FlamigoError(
        f"strategy({topic}): no answer within {limit:g} s", public="timed out", status=504
    )


class Connection:
    """Glue between a transport, a :class:`WebsocketClient` and a :class:`ConnectionActor`.

    Created by the extension for each accepted WebSocket (or by the test
    client over an in-memory transport); :meth:`run` serves it until it ends.
    """

    def __init__(self, flamigo: Flamigo, transport: Transport) -> None:
        settings = flamigo.settings
        self.flamigo = flamigo
        self.stats = flamigo.stats
        self.transport = transport
        self.client = WebsocketClient(self, transport.remote_addr)
        self.auth_required = flamigo.auth_required
        self.debug = flamigo.debug
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
        self.deferred: dict[DeferredReply, gevent.Greenlet | None] = {}
        self.closing_when_idle: tuple[int, str] | None = None
        self.last_activity = time.monotonic()
        self.last_ping = self.last_activity
        self.reader_paused = False
        self.rate = (
            TokenBucket(settings.rate_limit, settings.rate_limit_burst)
            if settings.rate_limit
            else None
        )
        self.limited_in_a_row = 0
        self._ending: tuple[int, str] | None = None
        self._closed: Event | None = None  # set by close(); only a closing reader waits on it
        self._abort_timer: gevent.Greenlet | None = None
        self._ended = False
        self._cleaned = False
        self.ref: Any = None
        self.actor: ConnectionActor | None = None  # set by the actor itself
        transport.max_message_size = settings.max_message_size  # type: ignore[attr-defined]
        transport.on_control = self._send_control  # type: ignore[attr-defined]
        transport.on_activity = self._touch  # type: ignore[attr-defined]

    # -- the reader ------------------------------------------------------------

    def run(self) -> None:
        """Serve the connection until it ends (runs in the handler's greenlet)."""
        flamigo = self.flamigo
        flamigo._register(self)
        code, reason = 1006, "connection lost"
        try:
            self.ref = ConnectionActor.start(self)
            receive = self.transport.receive
            tell = self.ref.tell
            client = self.client
            stats = self.stats
            slots = self.slots
            heartbeat, heartbeat_reply = flamigo.heartbeat_frames or (None, b"")
            while True:
                binary, data = receive()
                client.messages_in += 1
                stats.messages_in += 1
                limited = False
                if self.rate is not None and not self.rate.take():
                    limited = True
                    self.limited_in_a_row += 1
                    flamigo.stats.rate_limited += 1
                else:
                    self.limited_in_a_row = 0
                if not limited and not binary and data == heartbeat:
                    # Answered ahead of the mailbox: a long strategy must not
                    # make a live connection look dead to the client's heartbeat.
                    self._send(heartbeat_reply)
                    continue
                if slots.locked():
                    # The actor is behind: stop reading so TCP pushes back on the client.
                    self.reader_paused = True
                    slots.acquire()
                    self.reader_paused = False
                else:
                    slots.acquire()
                tell(_Inbound(binary, data, limited))
                if limited and self.limited_in_a_row >= flamigo.settings.rate_limit_close_after:
                    raise CloseRequired(1008, "rate limit exceeded")
        except ConnectionEnded as ended:
            code, reason = ended.code, ended.reason
            if ended.answer is not None:  # the peer's close frame: echo it in turn
                self._close_in_turn(ended.answer, "", code, reason)
        except CloseRequired as required:
            code, reason = required.code, required.reason
            self._close_in_turn(code, reason, code, reason)
        except pykka.ActorDeadError:
            code, reason = 1011, "internal error"
        except Exception:
            _log.exception("connection %s: reader failed", self.client.conn_id)
            code, reason = 1011, "internal error"
            self.close(code, reason, flush=False)
        finally:
            self._end(code, reason)

    def _touch(self) -> None:
        self.last_activity = time.monotonic()

    def _close_in_turn(self, code: int, reason: str, report: int, report_reason: str) -> None:
        """Close with ``code`` once the requests already read are answered.

        The peer closed or broke a rule: nothing more is read, but what it sent
        before still gets its replies, in order, and then the close frame (RFC
        6455 lets the close wait for them). Bounded: past the strategy time
        limit plus ``FLAMIGO_CLOSE_TIMEOUT`` the connection closes anyway.
        """
        if self._ending is None:
            self._ending = (report, report_reason)
        self._closed = closed = Event()
        try:
            self.ref.tell(_Close(code, reason, wait_deferred=False))
        except pykka.ActorDeadError:
            self.close(code, reason, flush=False)
            return
        settings = self.flamigo.settings
        if not closed.wait(settings.strategy_timeout + settings.close_timeout):
            self.close(code, reason, flush=False)
        self.outbound.wait_drained(settings.close_timeout)

    def _end(self, code: int, reason: str) -> None:
        if self._ended:
            return
        self._ended = True
        if self._ending is None:
            self._ending = (code, reason)
        self.client.state = "closing"
        self.outbound.closed = True
        self.transport.abort()
        ref = self.ref
        if ref is not None and ref.is_alive():
            try:
                ref.tell(_END)
                return
            except pykka.ActorDeadError:
                pass
        self._cleanup()

    def _cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        client = self.client
        code, reason = self._ending or (1006, "connection lost")
        client.state = "closed"
        client.close_code, client.close_reason = code, reason
        self.outbound.closed = True
        self.transport.abort()
        # A reader waiting for a request slot of a dead actor would wait forever.
        self.slots.release()
        if self._closed is not None:
            self._closed.set()
        if self.subscription is not None:
            self.subscription.cancel()
        for reply, timer in list(self.deferred.items()):
            reply.cancel()
            if timer is not None:  # its time limit: nothing left to time
                timer.kill(block=False)
        self.deferred.clear()
        if self._abort_timer is not None:
            self._abort_timer.kill(block=False)
        flamigo = self.flamigo
        outbound = self.outbound
        flamigo.stats.frames_dropped += outbound.refused + outbound.dropped
        flamigo._unregister(self)
        try:
            flamigo._run_hooks("disconnect", client)
        finally:
            user = client._user
            try:
                flamigo.publish(
                    Disconnected(client.conn_id, user.id if user else None, code, reason),
                    identity=client,
                )
            except RuntimeError:
                _log.warning("connection %s ended after the bus closed", client.conn_id)
            connection_closed.send(flamigo.app, connection=client, code=code, reason=reason)

    # -- closing ---------------------------------------------------------------

    def close(self, code: int, reason: str, *, flush: bool) -> None:
        """End the connection with a close frame ``(code, reason)``.

        With ``flush``, frames already queued go out first (within
        ``FLAMIGO_CLOSE_TIMEOUT``); without it they are discarded and counted.
        The first reason recorded is the one the disconnected event reports.
        """
        if self._ending is None:
            self._ending = (code, reason)
        if self.client.state == "connected":
            self.client.state = "closing"
        if self.outbound.finish(close_frame(code, reason), flush=flush):
            # Frames are still draining: do not wait for a stuck client forever.
            if self._abort_timer is None:
                self._abort_timer = gevent.spawn_later(
                    self.flamigo.settings.close_timeout, self.transport.abort
                )
        if self._closed is not None:
            self._closed.set()

    def close_when_idle(self, code: int, reason: str) -> None:
        """Close once deferred replies still running are sent (graceful shutdown)."""
        if self.deferred:
            self.closing_when_idle = (code, reason)
        else:
            self.close(code, reason, flush=True)

    def abort(self, code: int, reason: str) -> None:
        """Tear the connection down now (the peer is unresponsive)."""
        self.close(code, reason, flush=False)
        # No waiting for a frame half-written to a peer that stopped answering.
        self.transport.abort()

    def _on_outbound_overflow(self) -> None:
        self.flamigo.stats.slow_consumers += 1
        _log.warning(
            "connection %s: client too slow (%d frames / %d bytes queued); closing with 1013",
            self.client.conn_id, self.outbound.depth, self.outbound.pending_bytes,
        )
        self.close(1013, "too slow: outbound queue full", flush=False)

    def _on_outbound_failure(self) -> None:
        if self._ending is None:
            self._ending = (1006, "connection lost")
        self.transport.abort()

    # -- sending ---------------------------------------------------------------

    def push(self, frame: bytes) -> None:
        """Write a push frame (a client event from the bus) and count it."""
        if self.outbound.push(frame):
            self.client.messages_out += 1
            self.stats.messages_out += 1

    def _send(self, payload: bytes) -> None:
        if self.outbound.push(text_frame(payload)):
            self.client.messages_out += 1
            self.stats.messages_out += 1

    def _send_control(self, frame: bytes) -> None:
        self.outbound.push(frame)

    def send_reply(self, topic: str, result: Any, ack_id: Any) -> None:
        """Send a strategy's result (a 500 error if it is not JSON-serialisable)."""
        try:
            payload = protocol.encode_reply(topic, result, ack_id)
        except TypeError as err:
            failure = FlamigoError(
                f"strategy({topic}): result is not JSON-serialisable: {err}"
            )
            self.send_error(failure, ack_id, strategy=topic)
            return
        self._send(payload)

    def send_error(self, err: BaseException, ack_id: Any, *, strategy: str | None = None) -> None:
        """Send an ``error`` message for ``err``; 5xx errors are logged with their trace."""
        status = status_of(err)
        if status >= 500:
            _log.error(
                "connection %s%s failed: %s",
                self.client.conn_id,
                f" strategy {strategy}" if strategy else "",
                trace_of(err),
            )
        self._send(protocol.encode_error(err, ack_id, debug=self.debug))

    # -- bus side --------------------------------------------------------------

    @property
    def urn(self) -> str:
        return self.ref.actor_urn if self.ref is not None else ""

    def describe(self) -> str:
        user = self.client._user
        return f"connection:{self.client.conn_id}" + (f"(user={user.id})" if user else "")

    def deliver(
        self, event: object, frame: bytes | None, identity: Identity, waiter: SyncWaiter | None
    ) -> bool:
        """Queue a push in the mailbox (behind what is already there); False if refused."""
        if self._ended or frame is None or self.outbound.closed:
            return False
        actor = self.actor
        if actor is not None and actor.idle() and not self._cleaned:
            # Idle fast path (the fan-out hot path). The actor is waiting on an
            # empty mailbox with nothing in progress (FlamigoActor.idle): a
            # _Push told now would be the very next thing it runs, alone, and
            # its handler is only `push` below. Greenlets do not preempt, so
            # running that handler here, in the bus actor's greenlet, is
            # indistinguishable from the mailbox doing it, in the same order,
            # never beside a strategy; it saves a message, a greenlet and
            # Pykka's dispatch per recipient. A busy actor (starting, or in a
            # strategy, even one that yields) or a non-empty mailbox takes the
            # mailbox path below, behind what is queued.
            self.push(frame)
            if waiter is not None:
                waiter.done()
            return True
        limit = self.flamigo.settings.mailbox_max_deliveries
        if self.pending_deliveries >= limit:
            # The bus routes a burst without yielding, so even an idle actor has
            # not run yet: give it one turn. Still full afterwards means busy.
            gevent.sleep(0)
            if self._ended or self.outbound.closed:
                return False
        if self.pending_deliveries >= limit:
            self.flamigo.stats.slow_consumers += 1
            _log.warning(
                "connection %s: %d deliveries waiting in its mailbox; closing with 1013",
                self.client.conn_id, self.pending_deliveries,
            )
            self.close(1013, "too slow: mailbox full", flush=False)
            return False
        self.pending_deliveries += 1
        try:
            self.ref.tell(_Push(frame, waiter))
        except pykka.ActorDeadError:
            self.pending_deliveries -= 1
            return False
        return True

    def subscribe(self, *patterns: str) -> None:
        if self._cleaned:
            raise RuntimeError(f"connection {self.client.conn_id} has ended; cannot subscribe")
        validated = [Topic(p) for p in patterns]
        if self.subscription is None:
            self.subscription = self.flamigo.bus.subscription(self, client_only=True)
        self.subscription.add(*validated)

    def authenticate(self, user: User) -> None:
        client = self.client
        current = client._user
        if current is not None and current.id != user.id:
            raise FlamigoError(
                f"authenticate: already user {current.id}",
                public="already authenticated as another user: reconnect to switch users",
                status=409,
            )
        client._user = user
        if current is not None:
            return  # the same user refreshed their token
        try:
            self.flamigo._run_hooks("authenticated", client)
        except BaseException:
            client._user = None
            raise
        self.flamigo.publish(
            UserAuthenticated(user.id, user.username, client.conn_id), identity=client
        )

    # -- deferred replies ------------------------------------------------------

    def track_deferred(
        self, reply: DeferredReply, topic: str, ack_id: Any, limit: float, deadline: float
    ) -> None:
        """Send ``reply``'s outcome when it settles, or a 504 at ``deadline``."""
        ref = self.ref

        def settle(value: Any, error: BaseException | None) -> None:
            timer = self.deferred.get(reply)
            if timer is not None:
                timer.kill(block=False)
            try:
                ref.tell(_Settled(reply, topic, ack_id, value, error))
            except pykka.ActorDeadError:
                _log.debug("deferred reply of %s arrived after the connection ended", topic)

        def expire() -> None:
            if reply not in self.deferred:
                return  # settled or cancelled meanwhile
            self.deferred[reply] = None  # this greenlet is ending; do not kill it
            if reply.fail(_timed_out(topic, limit)) and reply.greenlet is not None:
                reply.greenlet.kill(block=False)

        self.deferred[reply] = None
        reply.attach(settle)
        if reply.settled:  # settled before the strategy returned: already told
            return
        self.deferred[reply] = gevent.spawn_later(max(0.0, deadline - time.monotonic()), expire)

    # -- inspection ------------------------------------------------------------

    def mailbox_depth(self) -> int:
        """Messages waiting in the actor's mailbox."""
        ref = self.ref
        if ref is None or not ref.is_alive():
            return 0
        return ref.actor_inbox.qsize()  # type: ignore[no-any-return]

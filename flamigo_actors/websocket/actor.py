"""The Pykka actor of one connection: the one place its work happens, in order.

:class:`ConnectionActor`'s mailbox serialises everything a connection does
besides reading: requests (parse, the 401 gate, the strategy, the reply),
pushes that could not take the idle fast path, deferred replies settling, and
closes asked by the reader or the hub. One message at a time, in arrival
order; a strategy's errors become error replies, while a failure of the
connection's own machinery closes it with 1011 (other connections carry on).

It reports into the connection's lifecycle (see
:mod:`flamigo_actors.websocket.lifecycle`): ``OPEN`` once ``Connected`` is
published, ``CLOSING`` when ``on_connect`` fails, cleanup when it stops.
"""

from __future__ import annotations

import logging
import time
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol

import gevent
import pykka

from . import protocol
from ..core.errors import FlamigoError, status_of
from ..core.events import Connected
from ..runtime.engine import FlamigoActor
from ..runtime.signals import connection_opened
from ..runtime.strategies import DeferredReply, Request, StrategyContext, run_strategy
from .builtins import auth_strategy_name
from .protocol import NO_ACK, InvalidText, ProtocolError

if TYPE_CHECKING:
    from ..runtime.bus import SyncWaiter

__all__ = ["ConnectionActor"]

_log = logging.getLogger("flamigo_actors.connection")

# Strategy time limits, reused: creating a gevent.Timeout (a libev timer) per
# request was its largest single cost in the rt1x1 profile (about 1 µs of the
# 2.5 µs create-start-close; reuse: start and cancel). A timer that fired is
# dropped (its traceback holds the strategy's frames); at most this many wait per limit.
_MAX_FREE_TIMERS = 64
_free_timers: dict[float, list[gevent.Timeout]] = {}


def _take_timer(limit: float) -> gevent.Timeout:
    free = _free_timers.get(limit)
    return free.pop() if free else gevent.Timeout(limit)


def _give_back(timer: gevent.Timeout, limit: float) -> None:
    timer.cancel()
    if timer.__traceback__ is None:  # never raised
        free = _free_timers.setdefault(limit, [])
        if len(free) < _MAX_FREE_TIMERS:
            free.append(timer)


# -- mailbox messages ------------------------------------------------------------


class Inbound:
    """A request frame read by the reader (``limited``: over the rate limit, answer 429;
    ``queued_at``: its ``perf_counter()`` when told, set only with metrics on)."""

    __slots__ = ("binary", "data", "limited", "queued_at")
    queued_at: float

    def __init__(self, binary: bool, data: bytes, limited: bool) -> None:
        self.binary = binary
        self.data = data
        self.limited = limited


class Push:
    """A push frame from the bus that had to queue behind other work."""

    __slots__ = ("frame", "waiter")

    def __init__(self, frame: bytes, waiter: SyncWaiter | None) -> None:
        self.frame = frame
        self.waiter = waiter


class Settled:
    """A deferred reply's outcome, sent from the mailbox like any reply."""

    __slots__ = ("reply", "topic", "ack_id", "value", "error")

    def __init__(
        self, reply: DeferredReply, topic: str, ack_id: Any, value: Any, error: BaseException | None
    ) -> None:
        self.reply = reply
        self.topic = topic
        self.ack_id = ack_id
        self.value = value
        self.error = error


class Close:
    """Close after what is queued: at once (``wait_deferred=False``) or once deferred replies are sent."""

    __slots__ = ("code", "reason", "wait_deferred")

    def __init__(self, code: int, reason: str, wait_deferred: bool = True) -> None:
        self.code = code
        self.reason = reason
        self.wait_deferred = wait_deferred


class _End:
    __slots__ = ()


END = _End()
"""Stop the actor after what is already queued (the reader has ended)."""


class ActorConnection(Protocol):
    """What the actor needs from its :class:`~flamigo_actors.websocket.connection.Connection`."""

    hub: Any
    client: Any
    lifecycle: Any
    slots: Any
    pending_deliveries: int
    auth_required: bool
    actor: ConnectionActor | None
    instruments: Any
    session: Any
    outbound: Any

    def send_text(self, payload: bytes) -> None: ...

    def push(self, frame: bytes) -> None: ...

    def send_reply(self, topic: str, result: Any, ack_id: Any) -> None: ...

    def send_error(self, err: BaseException, ack_id: Any, *, strategy: str | None = None) -> None: ...

    def close(self, code: int, reason: str, *, flush: bool) -> None: ...

    def cleanup(self) -> None: ...


class ConnectionActor(FlamigoActor):
    """The Pykka actor of one connection: strategies and deliveries, one at a time."""

    kind = "connection"

    def __init__(self, connection: ActorConnection) -> None:
        super().__init__()
        self.connection = connection
        self.deferred: dict[DeferredReply, gevent.Greenlet | None] = {}
        """Deferred replies still running, with the timer of their time limit."""
        self._app_context: Any = None
        self.strategy: str | None = None
        """The strategy being served, if any (for log lines)."""
        self.received_at = 0.0  # perf_counter() when the request left the mailbox (metrics on)
        connection.actor = self  # for Connection.deliver's idle fast path

    def on_start(self) -> None:
        super().on_start()
        conn = self.connection
        hub = conn.hub
        app = hub.app
        if app is not None:
            # Strategies may use current_app and its extensions, as views do.
            self._app_context = app.app_context()
            self._app_context.push()
        client = conn.client
        try:
            hub.run_hooks("connect", client)
            hub.publish(Connected(client.conn_id, client.remote_addr), identity=client)
            conn.lifecycle.open(authenticated=client.authenticated)
            connection_opened.send(app, connection=client)
        except (Exception, SystemExit):
            # Pykka would stop the actor without on_failure; close cleanly instead.
            # Unless Connected was published, no Disconnected follows (see lifecycle).
            _log.exception("connection %s: on_connect failed", client.conn_id)
            conn.close(1011, "internal error", flush=False)

    def on_stop(self) -> None:
        self.connection.cleanup()
        self._pop_app_context()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        # A failure of the connection's own machinery (not of a strategy, whose
        # errors become replies): close with 1011 and clean up; others carry on.
        conn = self.connection
        conn.close(1011, "internal error", flush=False)
        conn.cleanup()
        self._pop_app_context()

    def _pop_app_context(self) -> None:
        if self._app_context is not None:
            self._app_context.pop()
            self._app_context = None

    def on_receive(self, message: Any) -> Any:
        # More messages behind this one (a pipelining client, a burst of pushes):
        # hold the frames written meanwhile and send them together once the
        # mailbox is empty (or the actor yields): one send instead of one each.
        inbox = self.actor_inbox
        outbound = self.connection.outbound
        if not inbox.empty():
            outbound.cork()
        try:
            return self._receive(message)
        finally:
            if inbox.empty():
                outbound.uncork()

    def _receive(self, message: Any) -> Any:
        kind = type(message)
        if kind is Push:
            conn = self.connection
            conn.pending_deliveries -= 1
            conn.push(message.frame)
            if message.waiter is not None:
                message.waiter.done()
        elif kind is Inbound:
            instruments = self.connection.instruments
            if instruments is not None:  # one clock read: the wait's end, the strategy's start
                self.received_at = perf_counter()
                instruments.mailbox_wait(self.received_at - message.queued_at)
            try:
                # Read after the close began (its answer is the close frame):
                # running it would only have side effects nobody hears about.
                if self.connection.lifecycle.accepting:
                    self._serve(message)
            finally:
                self.connection.slots.release()
        elif kind is Settled:
            self._settled(message)
        elif kind is Close:
            if message.wait_deferred:
                self._close_when_idle(message.code, message.reason)
            else:
                self.connection.close(message.code, message.reason, flush=True)
        elif kind is _End:
            self.actor_ref.stop(block=False)  # after what is already queued
        else:
            return super().on_receive(message)
        return None

    # -- requests ------------------------------------------------------------

    def _serve(self, message: Inbound) -> None:
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
        if conn.session is not None and ack_id is not NO_ACK:
            cached = conn.session.cached(ack_id)
            if cached is not None:  # a retried request (after a resume): it ran once already
                conn.send_text(cached)
                return
        hub = conn.hub
        registry = hub.strategies
        client = conn.client
        try:
            strategy = registry.get(request.topic)
            if conn.auth_required and client.user is None and not (
                strategy is not None
                # The auth strategy must be callable before authentication,
                # whoever registered it (the built-in or the app's own).
                and (strategy.public or strategy.name == auth_strategy_name(registry.namespace))
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
        limit = strategy.timeout or hub.settings.strategy_timeout
        client.ack_id = None if ack_id is NO_ACK else ack_id
        self.strategy = strategy.name  # for log lines (see log_context)
        ctx = StrategyContext(
            hub.host,
            client,
            Request(request.topic, request.payload),
            deadline=time.monotonic() + limit,
            ack_id=client.ack_id,
        )
        instruments = conn.instruments
        started = self.received_at
        status = 200
        timer = _take_timer(limit)
        timer.start()
        try:
            result = run_strategy(strategy, ctx)
        except gevent.Timeout:
            # Ours, or one the strategy armed and did not catch: a timeout either way.
            status = 504
            conn.send_error(_timed_out(request.topic, limit), ack_id)
            return
        except FlamigoError as err:
            status = status_of(err)
            conn.send_error(err, ack_id, strategy=request.topic)
            return
        finally:
            _give_back(timer, limit)
            client.ack_id = self.strategy = None
            if instruments is not None:
                instruments.strategy_done(strategy.name, status, perf_counter() - started)
        if ctx.deferred is not None:
            self._track_deferred(ctx.deferred, request.topic, ack_id, limit, ctx.deadline or 0.0)
            return
        conn.send_reply(request.topic, result, ack_id)

    # -- deferred replies ------------------------------------------------------

    def _track_deferred(
        self, reply: DeferredReply, topic: str, ack_id: Any, limit: float, deadline: float
    ) -> None:
        """Send ``reply``'s outcome when it settles, or a 504 at ``deadline``."""
        ref = self.actor_ref
        deferred = self.deferred

        def settle(value: Any, error: BaseException | None) -> None:
            timer = deferred.get(reply)
            if timer is not None:
                timer.kill(block=False)
            try:
                ref.tell(Settled(reply, topic, ack_id, value, error))
            except pykka.ActorDeadError:
                _log.debug("deferred reply of %s arrived after the connection ended", topic)

        def expire() -> None:
            if reply not in deferred:
                return  # settled or cancelled meanwhile
            deferred[reply] = None  # this greenlet is ending; do not kill it
            if reply.fail(_timed_out(topic, limit)) and reply.greenlet is not None:
                reply.greenlet.kill(block=False)

        deferred[reply] = None
        reply.attach(settle)
        if reply.settled:  # settled before the strategy returned: already told
            return
        deferred[reply] = gevent.spawn_later(max(0.0, deadline - time.monotonic()), expire)

    def _settled(self, message: Settled) -> None:
        conn = self.connection
        self.deferred.pop(message.reply, None)
        if message.error is not None:
            conn.send_error(message.error, message.ack_id, strategy=message.topic)
        else:
            conn.send_reply(message.topic, message.value, message.ack_id)
        due = conn.lifecycle.due
        if due is not None and not self.deferred:
            conn.close(*due, flush=True)

    def _close_when_idle(self, code: int, reason: str) -> None:
        # Graceful shutdown: close once the deferred replies still running are sent.
        if not self.deferred or not self.connection.lifecycle.drain(code, reason):
            self.connection.close(code, reason, flush=True)

    def cancel_deferred(self) -> None:
        """Stop every deferred reply still running (the connection ended)."""
        for reply, timer in list(self.deferred.items()):
            reply.cancel()
            if timer is not None:  # its time limit: nothing left to time
                timer.kill(block=False)
        self.deferred.clear()


def _timed_out(topic: str, limit: float) -> FlamigoError:
    return FlamigoError(
        f"strategy({topic}): no answer within {limit:g} s", public="timed out", status=504
    )

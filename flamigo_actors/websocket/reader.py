"""The reader of one connection: it receives messages and tells the actor, nothing more.

It runs in the server's handler greenlet. Per message: count it, apply the
request rate limit (a limited request is still told to the actor, which
answers 429 in order; too many in a row close with 1008), answer the
canonical heartbeat frame itself (a long strategy must not make a live
connection look dead), and tell the actor. When the actor has
``FLAMIGO_MAX_PENDING_REQUESTS`` requests waiting, the reader stops reading
(``reader_paused``) so TCP pushes back on the client.

One request in flight (the actor idle, nothing else received yet) is not
told but run right here, as the actor's runner for that one run
(:meth:`~flamigo_actors.runtime.engine.FlamigoActor.run_here`): the same
mailbox, the same order, one message at a time, minus the hand-over to
another greenlet. A strategy that yields there hands reading to a new
greenlet (see :class:`_Readers`), so a blocked strategy never stops reading.

When the peer closes, or breaks a rule, the requests it sent before still get
their replies, in order, before the close frame (bounded by the strategy time
limit plus ``FLAMIGO_CLOSE_TIMEOUT``). :func:`read` reports the
``(code, reason)`` the connection ended with to its ``on_end`` as soon as
reading ends; it reports into the connection's lifecycle and never raises.
"""

from __future__ import annotations

import logging
from time import perf_counter
from collections.abc import Callable
from typing import Any, Protocol

import gevent
import pykka
from gevent.event import Event

from .actor import Close, ConnectionActor, Inbound
from .lifecycle import Lifecycle
from .framing import CloseRequired, ConnectionEnded

__all__ = ["read"]

_log = logging.getLogger("flamigo_actors.connection")


class ReaderConnection(Protocol):
    """What the reader needs from its :class:`~flamigo_actors.websocket.connection.Connection`."""

    hub: Any
    ref: Any
    actor: Any
    transport: Any
    client: Any
    stats: Any
    slots: Any
    rate: Any
    outbound: Any
    lifecycle: Lifecycle
    reader_paused: bool
    limited_in_a_row: int
    instruments: Any

    def send_text(self, payload: bytes) -> None: ...

    def close(self, code: int, reason: str, *, flush: bool) -> None: ...


def read(conn: ReaderConnection, on_end: Callable[[int, str], None]) -> None:
    """Start the connection's actor and read until the connection ends.

    ``on_end(code, reason)`` is called once, by the greenlet that read last,
    as soon as reading ends (even while a strategy that took the reading
    greenlet over still runs); ``read`` returns after it.
    """
    try:
        conn.ref = ConnectionActor.start(conn)
    except Exception as error:
        on_end(*_failed(conn, error))
        return
    readers = _Readers(conn, on_end)
    if readers.read():
        return
    try:  # another greenlet reads now: wait until it has ended the connection
        assert readers.ended is not None
        readers.ended.wait()
    except BaseException:  # the handler itself was killed: so is the reading
        if readers.greenlet is not None:
            readers.greenlet.kill(block=False)
        raise


class _Readers:
    """Who reads next when a request handled in the reader's greenlet yields.

    The reader handles a request itself when the actor is idle and nothing
    else has arrived (:meth:`~flamigo_actors.runtime.engine.FlamigoActor.run_here`).
    If its strategy blocks, reading must not wait for it (heartbeats, the
    client's close, further requests queued behind it): the hub then calls
    :meth:`take_over`, and a new greenlet goes on reading while the first
    one finishes the actor's work. The greenlet that handed over then ends
    (the handler's own one waits for :attr:`ended`: the server closes the
    socket once it returns), so a connection keeps at most one reading
    greenlet, whatever its strategies do.
    """

    __slots__ = ("conn", "on_end", "took_over", "greenlet", "ended")

    def __init__(self, conn: ReaderConnection, on_end: Callable[[int, str], None]) -> None:
        self.conn = conn
        self.on_end = on_end
        self.took_over = False
        self.greenlet: gevent.Greenlet | None = None
        self.ended: Event | None = None

    def take_over(self) -> None:
        # Called from the hub: the run in the reading greenlet yielded.
        self.took_over = True
        if self.ended is None:
            self.ended = Event()
        self.greenlet = gevent.spawn(self.read)

    def read(self) -> bool:
        """Read until the connection ends (then report it: True) or another greenlet reads (False)."""
        ended = _reading(self.conn, self)
        if ended is None:
            return False
        try:
            self.on_end(*ended)
        finally:
            if self.ended is not None:
                self.ended.set()
        return True


def _reading(conn: ReaderConnection, readers: _Readers) -> tuple[int, str] | None:
    """Read until the connection ends and return why; ``None`` once another greenlet reads."""
    hub = conn.hub
    code, reason = 1006, "connection lost"
    try:
        ref = conn.ref
        actor = conn.actor
        transport = conn.transport
        receive = transport.receive
        # Only a transport that can tell whether more has arrived gets the
        # inline path: with more requests here, the mailbox batches their replies.
        has_buffered = getattr(transport, "has_buffered", None)
        run_here = actor.run_here if actor is not None and has_buffered is not None else None
        tell = ref.tell
        client = conn.client
        stats = conn.stats
        slots = conn.slots
        rate = conn.rate
        close_after = hub.settings.rate_limit_close_after
        heartbeat, heartbeat_reply = hub.heartbeat_frames or (None, b"")
        instruments = conn.instruments
        while True:
            binary, data = receive()
            client.messages_in += 1
            stats.messages_in += 1
            if instruments is not None:
                stats.bytes_in += len(data)
            limited = False
            if rate is not None and not rate.take():
                limited = True
                conn.limited_in_a_row += 1
                stats.rate_limited += 1
            else:
                conn.limited_in_a_row = 0
            if not limited and not binary and data == heartbeat:
                # Answered ahead of the mailbox: a long strategy must not
                # make a live connection look dead to the client's heartbeat.
                conn.send_text(heartbeat_reply)
                continue
            if slots.locked():
                # The actor is behind: stop reading so TCP pushes back on the client.
                conn.reader_paused = True
                slots.acquire()
                conn.reader_paused = False
            else:
                slots.acquire()
            inbound = Inbound(binary, data, limited)
            if instruments is not None:  # metrics: when it entered the mailbox, for the mailbox wait histogram
                inbound.queued_at = perf_counter()
            if run_here is not None and not has_buffered():  # type: ignore[misc]
                # One request in flight: handle it here if the actor is idle
                # (the mailbox would run it next anyway), with no hand-over.
                if run_here(inbound, readers.take_over):
                    if readers.took_over:  # it yielded: another greenlet reads now
                        readers.took_over = False
                        return None
                else:
                    tell(inbound)
            else:
                tell(inbound)
            if limited and conn.limited_in_a_row >= close_after:
                raise CloseRequired(1008, "rate limit exceeded")
    except ConnectionEnded as ended:
        code, reason = ended.code, ended.reason
        if ended.answer is not None:  # the peer's close frame: echo it in turn
            _close_in_turn(conn, ended.answer, "", code, reason)
    except CloseRequired as required:
        code, reason = required.code, required.reason
        _close_in_turn(conn, code, reason, code, reason)
    except Exception as error:
        code, reason = _failed(conn, error)
    return code, reason


def _failed(conn: ReaderConnection, error: Exception) -> tuple[int, str]:
    """Why the connection ends when starting or reading fails. The actor already stopped:
    its stop or failure cleaned the connection up; anything else is a bug here (logged),
    and the connection is closed now."""
    if not isinstance(error, pykka.ActorDeadError):
        _log.error("connection %s: reader failed", conn.client.conn_id, exc_info=error)
        conn.close(1011, "internal error", flush=False)
    return 1011, "internal error"


def _close_in_turn(
    conn: ReaderConnection, code: int, reason: str, report: int, report_reason: str
) -> None:
    """Close with ``code`` once the requests already read are answered.

    The peer closed or broke a rule: nothing more is read, but what it sent
    before still gets its replies, in order, and then the close frame (RFC
    6455 lets the close wait for them). Bounded: past the strategy time
    limit plus ``FLAMIGO_CLOSE_TIMEOUT`` the connection closes anyway.
    """
    conn.lifecycle.record(report, report_reason)
    try:
        conn.ref.tell(Close(code, reason, wait_deferred=False))
    except pykka.ActorDeadError:
        conn.close(code, reason, flush=False)
        return
    settings = conn.hub.settings
    if not conn.lifecycle.wait_closing(settings.strategy_timeout + settings.close_timeout):
        conn.close(code, reason, flush=False)
    conn.outbound.wait_drained(settings.close_timeout)

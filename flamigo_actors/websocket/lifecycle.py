"""The lifecycle of one WebSocket connection: one state machine, one owner.

Every part of a connection asks this object whether the connection still
accepts work, and reports into it: the reader when the peer closes or
vanishes, the outbound queue when the socket fails or the client is too slow
(its ``on_failure`` / ``on_overflow`` callbacks), the actor when
``on_connect`` fails or a crash happens, the hub on kick, ping timeout and
shutdown. Nothing else keeps its own idea of "closed". The transitions::

    OPENING        -> OPEN | AUTHENTICATED | CLOSING
    OPEN           -> AUTHENTICATED | DRAINING | CLOSING
    AUTHENTICATED  -> DRAINING | CLOSING
    DRAINING       -> CLOSING
    CLOSING        -> CLOSED

* ``OPENING``: the actor is starting and the ``on_connect`` hooks run;
  :class:`~flamigo_actors.core.events.Connected` is not published yet.
* ``OPEN``: ``Connected`` was published; requests and pushes are served.
* ``AUTHENTICATED``: ``OPEN`` with a user (``app::websocket:auth`` succeeded).
* ``DRAINING``: the server is shutting down; requests are still answered and
  the close follows once the deferred replies still running are sent.
* ``CLOSING``: a close was decided (close frame queued, or the peer is gone);
  no request is served and no push accepted any more. The first
  ``(code, reason)`` recorded is the one reported.
* ``CLOSED``: cleanup ran, exactly once (the only way in is :meth:`Lifecycle.finish`,
  which returns True once).

Pairing: ``on_disconnect`` hooks run for every connection, but the
:class:`~flamigo_actors.core.events.Disconnected` event (and the
``connection_closed`` signal) fire only for a connection whose ``Connected``
was published (``was_open``): a connection whose ``on_connect`` hook failed publishes neither
``Connected`` nor ``Disconnected``.

:attr:`WebsocketClient.state` shows the coarse view for inspection:
``"connected"`` (OPENING to DRAINING), ``"closing"``, ``"closed"``.
"""

from __future__ import annotations

import enum

from gevent.event import Event

__all__ = ["Lifecycle", "State"]


class State(enum.Enum):
    """The states of a connection (see the module docstring)."""

    OPENING = "opening"
    OPEN = "open"
    AUTHENTICATED = "authenticated"
    DRAINING = "draining"
    CLOSING = "closing"
    CLOSED = "closed"


_ALLOWED: dict[State, frozenset[State]] = {
    State.OPENING: frozenset({State.OPEN, State.AUTHENTICATED, State.CLOSING}),
    State.OPEN: frozenset({State.AUTHENTICATED, State.DRAINING, State.CLOSING}),
    State.AUTHENTICATED: frozenset({State.DRAINING, State.CLOSING}),
    State.DRAINING: frozenset({State.CLOSING}),
    State.CLOSING: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}
"""Every allowed transition; any other is refused (the call returns False)."""

_COARSE = {
    State.OPENING: "connected",
    State.OPEN: "connected",
    State.AUTHENTICATED: "connected",
    State.DRAINING: "connected",
    State.CLOSING: "closing",
    State.CLOSED: "closed",
}


class Lifecycle:
    """The state of one connection and the reason it ended.

    Attributes:
        state: the current :class:`State`.
        accepting: True until ``CLOSING`` (a plain attribute: the push hot
            path reads it per delivery).
        was_open: whether ``Connected`` was published (``Disconnected`` is owed).
        code, reason: the first ending recorded (``1006 connection lost`` if none).
        due: the close a ``DRAINING`` connection owes once its deferred replies are sent.
    """

    __slots__ = ("state", "accepting", "was_open", "code", "reason", "due", "_closing")

    def __init__(self) -> None:
        self.state = State.OPENING
        self.accepting = True
        self.was_open = False
        self.code: int | None = None
        self.reason = ""
        self.due: tuple[int, str] | None = None
        self._closing: Event | None = None  # created only for a reader waiting on it

    def __repr__(self) -> str:
        return f"<Lifecycle {self.state.value} {self.code} {self.reason!r}>"

    @property
    def coarse(self) -> str:
        """``"connected"``, ``"closing"`` or ``"closed"``."""
        return _COARSE[self.state]

    def _move(self, new: State) -> bool:
        if new not in _ALLOWED[self.state]:
            return False
        self.state = new
        if new is State.CLOSING or new is State.CLOSED:
            self.accepting = False
            if self._closing is not None:
                self._closing.set()
        return True

    def record(self, code: int, reason: str) -> None:
        """Remember why the connection ends, unless a reason was recorded first."""
        if self.code is None:
            self.code, self.reason = code, reason

    def open(self, *, authenticated: bool) -> bool:
        """``Connected`` was published: ``OPENING`` → ``OPEN`` (or ``AUTHENTICATED``).

        ``was_open`` is set even when the connection began closing meanwhile
        (the peer left while the hooks ran): its ``Disconnected`` is owed.
        """
        self.was_open = True
        return self._move(State.AUTHENTICATED if authenticated else State.OPEN)

    def authenticated(self) -> bool:
        """``OPEN`` → ``AUTHENTICATED`` (in other states the user is only on the client)."""
        return self.state is State.OPEN and self._move(State.AUTHENTICATED)

    def drain(self, code: int, reason: str) -> bool:
        """→ ``DRAINING``: close with ``(code, reason)`` once deferred replies are sent."""
        if self._move(State.DRAINING):
            self.due = (code, reason)
            return True
        return False

    def begin_close(self, code: int, reason: str) -> bool:
        """→ ``CLOSING`` with ``(code, reason)`` recorded (if first); True if this call moved it."""
        self.record(code, reason)
        return self._move(State.CLOSING)

    def finish(self) -> bool:
        """→ ``CLOSED``, through ``CLOSING`` if needed; True exactly once (run the cleanup)."""
        if self.state is not State.CLOSING:
            self.begin_close(1006, "connection lost")
        return self._move(State.CLOSED)

    def wait_closing(self, timeout: float) -> bool:
        """Wait until ``CLOSING`` (or ``CLOSED``); False if ``timeout`` passed first."""
        if not self.accepting:
            return True
        if self._closing is None:
            self._closing = Event()
        return self._closing.wait(timeout)

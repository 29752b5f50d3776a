"""Blinker signals: the one path every publish takes to the application's bus.

Every publish is a send of :data:`event_published` with the Flask app as the
sender, the event and the publishing identity as keyword arguments (plus
``waiter`` for ``publish_sync``, and ``remote=True`` for an event another
process published, delivered here by the backplane). The application's bus
actor is the receiver that routes it; in-process code may connect to the
signal too, the blinker way, to observe every event, local or remote,
synchronously in the publisher's greenlet::

    @event_published.connect_via(app)
    def audit(sender, event, identity, **extra):
        ...  # extra.get("remote") is True for events from other processes

Guarantee: a publish never vanishes. The bus's receiver answers the send
with :data:`ROUTED`; :func:`send_event` raises :class:`NoBusError` when no
receiver did (the bus is closed, or was never bound to that app).

This module imports no Flask: the module-level ``flamigo_actors.publish()``
(which finds the current app) lives in ``integration/publishing.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from blinker import Namespace

from ..core.errors import FlamigoError

if TYPE_CHECKING:
    from ..core.identity import Identity

__all__ = [
    "ROUTED",
    "NoBusError",
    "connection_closed",
    "connection_opened",
    "event_published",
    "send_event",
    "signals",
]

signals = Namespace()

event_published = signals.signal(
    "flamigo.event-published",
    doc="Sent for every published event; kwargs: event, identity, waiter (publish_sync only), "
    "remote (True for events from other processes).",
)
connection_opened = signals.signal(
    "flamigo.connection-opened",
    doc="Sent when a WebSocket connection starts; kwargs: connection.",
)
connection_closed = signals.signal(
    "flamigo.connection-closed",
    doc="Sent when a WebSocket connection ended; kwargs: connection, code, reason.",
)


class _Routed:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ROUTED"


ROUTED: Any = _Routed()
"""What a live bus's receiver returns from :data:`event_published`: "I route this event"."""


class NoBusError(FlamigoError, RuntimeError):
    """A publish that no live bus received: the bus is closed (shut down) or was never bound.

    A :class:`RuntimeError` too, so that code written for the closed bus of
    earlier versions keeps catching it.
    """

    def __init__(self, event: object, sender: Any) -> None:
        if sender is None:
            where = "no app (this bus was never bound)"
        else:
            where = f"app {getattr(sender, 'name', sender)!r}"
        super().__init__(
            f"publish({type(event).__name__}): no live bus received it for {where}: the bus "
            "is closed (the application shut down) or was never bound to this app (create "
            "Flamigo(app) or call flamigo.init_app(app) first); publish only while the "
            "application runs",
            public="service unavailable",
            status=503,
        )


def send_event(
    sender: Any,
    event: object,
    identity: Identity | None = None,
    waiter: Any = None,
    *,
    remote: bool = False,
) -> None:
    """Send :data:`event_published` for ``event`` and check that a live bus received it.

    Args:
        sender: the Flask app whose bus routes the event.
        identity: who publishes (``None``: the bus uses its backend identity).
        waiter: the ``publish_sync`` waiter, if any.
        remote: the event comes from another process (sent by the backplane):
            the bus routes it to local subscribers only.

    Raises:
        NoBusError: no live bus is connected for ``sender``.
        TypeError, TopicError: the bus's receiver refused the event (not a valid event).
    """
    # Only the keywords a publish needs, as before: observers see the same call.
    if remote:
        results = event_published.send(sender, event=event, identity=identity, remote=True)
    elif waiter is None:
        results = event_published.send(sender, event=event, identity=identity)
    else:
        results = event_published.send(sender, event=event, identity=identity, waiter=waiter)
    for _receiver, value in results:
        if value is ROUTED:
            return
    raise NoBusError(event, sender)

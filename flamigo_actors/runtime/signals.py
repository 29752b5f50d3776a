"""Blinker signals: how domain code and Flask views publish events with one call.

Every publish is a send of :data:`event_published` with the Flask app as the
sender, the event and the publishing identity as keyword arguments. The
application's bus is connected to that signal and routes what it receives;
in-process code may connect to it too, the blinker way, to observe every
event synchronously::

    @event_published.connect_via(app)
    def audit(sender, event, identity, **extra):
        ...

From a view (inside an app context) :func:`publish` is the one call; outside
one, use ``flamigo.publish(event)`` on the extension object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from blinker import Namespace
from flask import current_app, has_app_context

if TYPE_CHECKING:
    from ..core.identity import Identity

__all__ = [
    "connection_closed",
    "connection_opened",
    "event_published",
    "publish",
    "publish_sync",
    "signals",
]

signals = Namespace()

event_published = signals.signal(
    "flamigo.event-published",
    doc="Sent for every published event; kwargs: event, identity, waiter (publish_sync only).",
)
connection_opened = signals.signal(
    "flamigo.connection-opened",
    doc="Sent when a WebSocket connection starts; kwargs: connection.",
)
connection_closed = signals.signal(
    "flamigo.connection-closed",
    doc="Sent when a WebSocket connection ended; kwargs: connection, code, reason.",
)


def _app() -> Any:
    if not has_app_context():
        raise RuntimeError(
            "flamigo_actors.publish() needs an application context (a request or "
            "`with app.app_context()`); outside one, call flamigo.publish(event) "
            "on the Flamigo extension object"
        )
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if "flamigo" not in app.extensions:
        raise RuntimeError(
            f"app {app.name!r} has no Flamigo extension: call Flamigo(app) or "
            "flamigo.init_app(app) in your application factory"
        )
    return app


def publish(event: object, identity: Identity | None = None) -> None:
    """Publish ``event`` on the current app's bus; returns at once.

    Args:
        event: any object with ``topics``; a client event is also pushed to
            subscribed WebSocket clients.
        identity: who publishes; defaults to the backend identity.

    Raises:
        RuntimeError: no application context, or the app has no Flamigo extension.
        TypeError, TopicError: the object is not a valid event.
    """
    _app().extensions["flamigo"].publish(event, identity=identity)


def publish_sync(event: object, identity: Identity | None = None, timeout: float | None = None) -> None:
    """Publish ``event`` and wait until every matching subscriber has handled it.

    Raises:
        DeadlockError: called where waiting would deadlock.
        FlamigoError: status 504 when ``timeout`` passes first.
    """
    _app().extensions["flamigo"].publish_sync(event, identity=identity, timeout=timeout)

"""Publishing from Flask code with one call: ``flamigo_actors.publish(event)``.

Inside an application context (a view, a CLI command, ``with
app.app_context()``) these functions find the current app and publish on its
bus through the :data:`~flamigo_actors.runtime.signals.event_published`
signal, exactly as ``flamigo.publish()`` and ``ctx.publish()`` do. Outside
one, call ``flamigo.publish(event)`` on the extension object.

Also here: :func:`push_frame`, the encoder the extension gives the bus, so
that the bus (in ``runtime/``) never imports the wire format.

The flat module path of 0.1, ``flamigo_actors.signals``, resolves to this
module (it had ``publish`` and ``publish_sync`` beside the signals), so the
signals are re-exported here.

Failures: no app context or no Flamigo extension → :class:`RuntimeError`
saying what to do; the app's bus closed → :class:`~flamigo_actors.runtime.signals.NoBusError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import current_app, has_app_context

from ..runtime.signals import (
    NoBusError,
    connection_closed,
    connection_opened,
    event_published,
    send_event,
    signals,
)
from ..websocket.protocol import encode_push
from ..websocket.framing import text_frame

if TYPE_CHECKING:
    from ..core.identity import Identity

__all__ = [
    "NoBusError",
    "connection_closed",
    "connection_opened",
    "event_published",
    "publish",
    "publish_sync",
    "push_frame",
    "signals",
]


def push_frame(client_topic: str, payload: Any) -> bytes:
    """The complete WebSocket text frame pushing ``payload`` under ``client_topic``.

    Raises:
        TypeError: ``payload`` is not JSON-serialisable.
    """
    return text_frame(encode_push(client_topic, payload))


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
        NoBusError: the app's bus is closed (the application shut down).
        TypeError, TopicError: the object is not a valid event.
    """
    send_event(_app(), event, identity)


def publish_sync(event: object, identity: Identity | None = None, timeout: float | None = None) -> None:
    """Publish ``event`` and wait until every matching subscriber has handled it.

    Raises:
        DeadlockError: called where waiting would deadlock.
        NoBusError: the app's bus is closed.
        FlamigoError: status 504 when ``timeout`` passes first; 500 when the bus
            actor crashed routing the event and could not route it again.
    """
    _app().extensions["flamigo"].bus.publish_sync(event, identity=identity, timeout=timeout)

"""flamigo_actors: an actor-system runtime for realtime Flask apps.

Every WebSocket connection is a Pykka actor; clients call named strategies
(``app::domain:action``) and receive pushes of domain events routed by a
blinker-backed bus actor. See the README for the tour.

The public names below are imported lazily (on first use), so that the
command-line entry point can apply gevent's monkey-patching before pykka,
flask or socket are imported, as gevent requires.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # errors
    "FlamigoError": "errors",
    "wrap": "errors",
    "public_message": "errors",
    "status_of": "errors",
    "field_errors_of": "errors",
    "bad_request": "errors",
    "unauthorized": "errors",
    "forbidden": "errors",
    "not_found": "errors",
    # identities
    "Identity": "identity",
    "UserIdentity": "identity",
    "BackendIdentity": "identity",
    "User": "identity",
    "of_type": "identity",
    "is_backend": "identity",
    "is_websocket": "identity",
    "is_not_websocket": "identity",
    "is_authenticated": "identity",
    "is_unauthenticated": "identity",
    "has_permission": "identity",
    "require_identity": "identity",
    "require_actor": "identity",
    # context and strategies
    "Context": "context",
    "Registry": "strategies",
    "Request": "strategies",
    "Response": "strategies",
    "Strategy": "strategies",
    "StrategyContext": "strategies",
    "DeferredReply": "strategies",
    # topics and events
    "Topic": "topics",
    "TopicError": "topics",
    "matches": "topics",
    "Event": "events",
    "ClientEvent": "events",
    "ClientMessage": "events",
    "ClientMessageEvent": "events",
    "Connected": "events",
    "Disconnected": "events",
    "UserAuthenticated": "events",
    "serializable": "events",
    # bus and signals
    "Bus": "bus",
    "DeadlockError": "bus",
    "Subscription": "bus",
    "event_published": "signals",
    "publish": "signals",
    "publish_sync": "signals",
    # WebSocket interface
    "Flamigo": "extension",
    "WebsocketClient": "connection",
    "serve": "server",
    "make_server": "server",
    "TestClient": "testing",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flamigo_actors' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from .bus import Bus, DeadlockError, Subscription
    from .connection import WebsocketClient
    from .context import Context
    from .errors import (
        FlamigoError,
        bad_request,
        field_errors_of,
        forbidden,
        not_found,
        public_message,
        status_of,
        unauthorized,
        wrap,
    )
    from .events import (
        ClientEvent,
        ClientMessage,
        ClientMessageEvent,
        Connected,
        Disconnected,
        Event,
        UserAuthenticated,
        serializable,
    )
    from .extension import Flamigo
    from .identity import (
        BackendIdentity,
        Identity,
        User,
        UserIdentity,
        has_permission,
        is_authenticated,
        is_backend,
        is_not_websocket,
        is_unauthenticated,
        is_websocket,
        of_type,
        require_actor,
        require_identity,
    )
    from .server import make_server, serve
    from .signals import event_published, publish, publish_sync
    from .strategies import DeferredReply, Registry, Request, Response, Strategy, StrategyContext
    from .testing import TestClient
    from .topics import Topic, TopicError, matches

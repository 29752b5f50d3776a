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
import importlib.machinery
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # errors
    "FlamigoError": "core.errors",
    "wrap": "core.errors",
    "public_message": "core.errors",
    "status_of": "core.errors",
    "field_errors_of": "core.errors",
    "bad_request": "core.errors",
    "unauthorized": "core.errors",
    "forbidden": "core.errors",
    "not_found": "core.errors",
    # identities
    "Identity": "core.identity",
    "UserIdentity": "core.identity",
    "BackendIdentity": "core.identity",
    "User": "core.identity",
    "of_type": "core.identity",
    "is_backend": "core.identity",
    "is_websocket": "core.identity",
    "is_not_websocket": "core.identity",
    "is_authenticated": "core.identity",
    "is_unauthenticated": "core.identity",
    "has_permission": "core.identity",
    "require_identity": "core.identity",
    "require_actor": "core.identity",
    # context and strategies
    "Context": "runtime.context",
    "Registry": "runtime.strategies",
    "Request": "runtime.strategies",
    "Response": "runtime.strategies",
    "Strategy": "runtime.strategies",
    "StrategyContext": "runtime.strategies",
    "DeferredReply": "runtime.strategies",
    # topics and events
    "Topic": "core.topics",
    "TopicError": "core.topics",
    "matches": "core.topics",
    "Event": "core.events",
    "ClientEvent": "core.events",
    "ClientMessage": "core.events",
    "ClientMessageEvent": "core.events",
    "Connected": "core.events",
    "Disconnected": "core.events",
    "UserAuthenticated": "core.events",
    "serializable": "core.events",
    # bus and signals
    "Bus": "runtime.bus",
    "DeadlockError": "runtime.bus",
    "Subscription": "runtime.bus",
    "event_published": "runtime.signals",
    "NoBusError": "runtime.signals",
    "publish": "integration.publishing",
    "publish_sync": "integration.publishing",
    # WebSocket interface
    "Flamigo": "integration.extension",
    "WebsocketClient": "websocket.client",
    "serve": "serving.server",
    "make_server": "serving.server",
    "raise_open_files_limit": "serving.limits",
    "TestClient": "integration.testing",
    # domain actors
    "DomainActor": "runtime.domain",
    "ActorSpace": "runtime.actor_space",
    "ActorRef": "runtime.actor_space",
    "ActorFuture": "runtime.futures",
    "get": "runtime.futures",
    "wait": "runtime.futures",
    "ActorError": "runtime.actor_errors",
    "ActorRestarted": "runtime.actor_errors",
    "ActorUnavailable": "runtime.actor_errors",
    "ActorTimeout": "runtime.actor_errors",
    "ActorDeadlock": "runtime.actor_errors",
    "ActorOverloaded": "runtime.actor_errors",
    "StaleOwner": "runtime.actor_errors",
    # the contract
    "TestClientError": "integration.testing",
    "ClientEvents": "runtime.client_events",
    "ClientEventSpec": "runtime.client_events",
    "ContractViolation": "runtime.conformance",
    "asyncapi_document": "ops.asyncapi",
    "json_schema_document": "ops.schemas",
    "typescript_module": "ops.typescript",
    # operations
    "register_secret": "core.logs",
    # presence
    "Presence": "runtime.presence",
    "PresenceHandle": "runtime.presence",
    # connection-state recovery
    "Recovery": "runtime.recovery",
    "StreamStore": "runtime.recovery",
    "MemoryStore": "runtime.recovery_memory",
    "RedisRecoveryStore": "backplane.recovery_redis",
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


# -- the flat module paths of 0.1 ------------------------------------------------
# Until 0.2 the package was 26 flat modules. Their old import paths
# (``flamigo_actors.bus``, ``flamigo_actors.transport``...) keep working for
# one release: importing one yields the module at its new place (the same
# module object, so its classes and globals are shared). New code should use
# the new paths; ``python -m`` needs them (``python -m flamigo_actors.serving.cli``).
MOVED_MODULES: dict[str, str] = {
    "errors": "core.errors",
    "identity": "core.identity",
    "topics": "core.topics",
    "events": "core.events",
    "settings": "core.settings",
    "ratelimit": "core.ratelimit",
    "engine": "runtime.engine",
    "context": "runtime.context",
    "strategies": "runtime.strategies",
    "bus": "runtime.bus",
    "listener": "runtime.listener",
    "signals": "integration.publishing",  # 0.1's signals module also had publish(): both are there
    "protocol": "websocket.protocol",
    "transport": "websocket.transport",
    "outbound": "websocket.outbound",
    "connection": "websocket.connection",
    "extension": "integration.extension",
    "testing": "integration.testing",
    "inspect": "ops.inspect",
    "shell": "ops.shell",
    "dashboard": "ops.dashboard",
    "server": "serving.server",
    "cli": "serving.cli",
    "workers": "serving.workers",
}
"""Old flat module name -> its path in 0.2 (relative to ``flamigo_actors``)."""


class _MovedModuleFinder:
    """Resolves ``flamigo_actors.<old name>`` to the module's new place (one release only).

    A meta path finder and its loader (duck-typed: ``importlib.abc`` would make
    ``import flamigo_actors`` import tempfile, random and shutil).
    """

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)  # type: ignore[arg-type]  # a Loader by duck typing

    def create_module(self, spec: Any) -> Any:
        name = spec.name.rpartition(".")[2]
        return importlib.import_module(f"{__name__}.{MOVED_MODULES[name]}")

    def exec_module(self, module: Any) -> None:
        pass  # already imported at its new place


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from .runtime.bus import Bus, DeadlockError, Subscription
    from .websocket.client import WebsocketClient
    from .runtime.context import Context
    from .core.errors import (
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
    from .core.events import (
        ClientEvent,
        ClientMessage,
        ClientMessageEvent,
        Connected,
        Disconnected,
        Event,
        UserAuthenticated,
        serializable,
    )
    from .integration.extension import Flamigo
    from .core.identity import (
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
    from .serving.limits import raise_open_files_limit
    from .serving.server import make_server, serve
    from .runtime.signals import NoBusError, event_published
    from .integration.publishing import publish, publish_sync
    from .runtime.strategies import DeferredReply, Registry, Request, Response, Strategy, StrategyContext
    from .integration.testing import TestClient
    from .core.topics import Topic, TopicError, matches
    from .runtime.actor_errors import (
        ActorDeadlock,
        ActorError,
        ActorOverloaded,
        ActorRestarted,
        ActorTimeout,
        ActorUnavailable,
        StaleOwner,
    )
    from .runtime.actor_space import ActorRef, ActorSpace
    from .runtime.domain import DomainActor
    from .runtime.futures import ActorFuture, get, wait
    from .core.logs import register_secret

"""Wiring presence into the extension: members, the connection end hook, the Redis store.

:func:`install_presence` builds the application's
:class:`~flamigo_actors.runtime.presence.Presence` (``flamigo.presence``):
its members of a topic are the *connections* subscribed to the bus topic
(in-process listeners never receive diff pushes), its diffs are encoded as
ordinary push frames, and a connection's entries are untracked by a
``disconnect`` hook, which the connection's cleanup runs exactly once
however it ends. :func:`start_presence` adds the Redis store when
``FLAMIGO_REDIS_URL`` is set (see ``backplane/presence_redis.py``).
"""

from __future__ import annotations

from typing import Any

from ..core.settings import Settings
from ..runtime.presence import Presence
from ..websocket.connection import Connection
from .publishing import push_frame

__all__ = ["install_presence", "start_presence"]


def install_presence(flamigo: Any) -> Presence:
    """The presence of ``flamigo`` (a :class:`~flamigo_actors.Flamigo`), hooked to its connections."""
    bus = flamigo.bus

    def members(topic: str) -> list[Any]:
        return [s for s in bus.subscribers(topic) if isinstance(s, Connection)]

    presence = Presence(members, push_frame)

    def untrack(client: Any) -> None:
        presence.untrack_owner(client.conn_id)

    flamigo.hub.hooks["disconnect"].append(untrack)
    return presence


def start_presence(presence: Presence, settings: Settings) -> None:
    """With Redis, start the cross-process store (once).

    Raises:
        RedisUnavailable: Redis cannot be reached and ``FLAMIGO_REDIS_REQUIRED`` is true.
    """
    if settings.redis_url and presence.store is None:
        from ..backplane.presence_redis import RedisPresence

        RedisPresence.from_settings(presence, settings).start(required=settings.redis_required)

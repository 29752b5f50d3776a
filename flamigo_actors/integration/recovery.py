"""Connection-state recovery for one application: set-up, the store's life, ``recoverable()``.

The extension calls these: :func:`new_recovery` when it is built (so
``flamigo.recoverable("rooms/*")`` works before ``init_app``),
:func:`configure_recovery` in ``init_app`` (settings: window, history,
``FLAMIGO_RECOVERABLE``), :func:`start_redis_recovery` in ``start`` when a
Redis URL is set (streams and sessions then live in Redis, see
``backplane/recovery_redis.py``) and :func:`close_recovery` at shutdown.

Nothing is paid while no topic is recoverable: the bus only looks at the
recoverable patterns once :func:`make_recoverable` installed them
(``bus.recovery``). A malformed pattern raises ``TopicError`` at once.
"""

from __future__ import annotations

from typing import Any

from ..core.settings import Settings
from ..runtime.bus import Bus
from ..runtime.recovery import Recovery
from ..runtime.recovery_memory import MemoryStore
from ..websocket.framing import text_frame
from ..websocket.protocol import encode_push

__all__ = [
    "close_recovery",
    "configure_recovery",
    "make_recoverable",
    "new_recovery",
    "start_redis_recovery",
]


def new_recovery() -> Recovery:
    """A recovery with the embedded store and the wire's push encoding."""
    return Recovery(MemoryStore(), text_frame, encode_push)


def configure_recovery(recovery: Recovery, bus: Bus, settings: Settings) -> None:
    """Apply the ``FLAMIGO_RECOVERY_*`` settings and ``FLAMIGO_RECOVERABLE`` patterns."""
    recovery.window = settings.recovery_window
    recovery.history = settings.recovery_history
    if settings.redis_url:  # Redis from the start: a resume served before start() waits for it
        from ..backplane.recovery_redis import RedisRecoveryStore

        recovery.store = RedisRecoveryStore.from_settings(settings)
    elif isinstance(recovery.store, MemoryStore) and recovery.store.history != settings.recovery_history:
        recovery.store = MemoryStore(settings.recovery_history)
    if settings.recoverable:
        make_recoverable(recovery, bus, *settings.recoverable)


def make_recoverable(recovery: Recovery, bus: Bus, *patterns: str) -> None:
    """Make ``patterns`` recoverable on ``bus`` (from now on its publishes look them up)."""
    recovery.add(*patterns)
    bus.recovery = recovery
    if recovery.pending_redis is not None:  # started with Redis before any pattern
        start_redis_recovery(recovery, bus, recovery.pending_redis)


def start_redis_recovery(recovery: Recovery, bus: Bus, settings: Settings) -> None:
    """Move streams and sessions to Redis (the store ``--redis`` / ``FLAMIGO_REDIS_URL`` names).

    Only once a topic is recoverable: apps without recovery open no connection for it.

    Raises:
        RedisUnavailable: Redis is unreachable and ``FLAMIGO_REDIS_REQUIRED`` is true.
    """
    from ..backplane.recovery_redis import RedisRecoveryStore

    if not recovery.enabled:
        recovery.pending_redis = settings
        return
    recovery.pending_redis = None
    store = recovery.store
    if isinstance(store, RedisRecoveryStore) and store.backplane is None:
        store.start(bus.backplane, required=settings.redis_required)


def close_recovery(recovery: Any) -> None:
    """Stop the store (idempotent)."""
    recovery.pending_redis = None
    recovery.store.close()

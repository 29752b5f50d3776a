"""Domain-actor snapshots in Redis, fenced: a stale owner's write is refused.

Key (the actor's hash tag, see :mod:`.leases`)::

    {<channel>:actor:<kind>:<key>}:snapshot   hash {f: fence, s: JSON state}

:meth:`RedisSnapshotStore.save` runs one Lua script, a compare-and-set on the
fence: the write is refused (:class:`~flamigo_actors.runtime.actor_errors.StaleOwner`)
when its fence is older than the stored snapshot's, than the current lease's,
or than the newest fence ever granted for the actor (another process was given
the actor after this one, whether it still holds it or not). Otherwise the
state is stored before ``save`` returns. :meth:`load` returns ``(state, fence)``.

States are JSON (orjson): a state that cannot be encoded raises ``TypeError``
naming the actor, before anything is written. Redis unreachable → ``save`` and
``load`` raise :class:`~flamigo_actors.runtime.actor_errors.ActorUnavailable`
(nothing is stored; ``persist()`` fails rather than pretend).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..runtime.actor_errors import ActorUnavailable, StaleOwner
from ..runtime.snapshots import encode_snapshot
from .leases import actor_keys
from .link import RedisLink

__all__ = ["RedisSnapshotStore"]

# KEYS: snapshot, lease, fence.  ARGV: fence, state.  -> 0 stored | the newer fence
_SAVE = """
local fence = tonumber(ARGV[1])
local newest = tonumber(redis.call('HGET', KEYS[1], 'f') or '0')
local granted = tonumber(redis.call('GET', KEYS[3]) or '0')
if granted > newest then newest = granted end
local lease = redis.call('GET', KEYS[2])
if lease then
  local held = tonumber(string.sub(lease, 1, string.find(lease, ':', 1, true) - 1))
  if held > newest then newest = held end
end
if newest > fence then return newest end
redis.call('HSET', KEYS[1], 'f', fence, 's', ARGV[2])
return 0
"""


class RedisSnapshotStore:
    """Snapshots in Redis, refused when written by a stale owner (see the module docstring).

    Args:
        link: the shared Redis link.
        channel: prefix of the keys (``FLAMIGO_REDIS_CHANNEL``).
    """

    def __init__(self, link: RedisLink, *, channel: str = "flamigo") -> None:
        self.link = link
        self.channel = channel
        self.saved = 0
        self.refused = 0
        self._save: Any = None

    def load(self, kind: str, key: str) -> tuple[Any, int] | None:
        """The newest snapshot of (kind, key) and its fence, or None if none was stored.

        Raises:
            ActorUnavailable: Redis is unreachable.
        """
        name = actor_keys(self.channel, kind, key) + ":snapshot"
        self._check_link(kind, key)
        try:
            fence, state = self.link.client.hmget(name, "f", "s")
        except self.link.redis_error as err:
            self._failed(err)
            raise ActorUnavailable(f"cannot load the snapshot of {kind}:{key}: {err}") from err
        if state is None:
            return None
        return orjson.loads(state), int(fence)

    def save(self, kind: str, key: str, state: Any, fence: int) -> None:
        """Store ``state`` before returning.

        Raises:
            StaleOwner: a newer fence has written, holds the lease, or was granted.
            TypeError: ``state`` is not JSON-able (nothing is stored).
            ActorUnavailable: Redis is unreachable (nothing is stored).
        """
        document = encode_snapshot(kind, key, state)
        self._check_link(kind, key)
        prefix = actor_keys(self.channel, kind, key)
        if self._save is None:
            self._save = self.link.client.register_script(_SAVE)
        try:
            newer = self._save(keys=[prefix + ":snapshot", prefix + ":lease", prefix + ":fence"],
                               args=[fence, document])
        except self.link.redis_error as err:
            self._failed(err)
            raise ActorUnavailable(f"cannot store the snapshot of {kind}:{key}: {err}") from err
        if newer:
            self.refused += 1
            raise StaleOwner(f"snapshot of {kind}:{key} refused: written with fence {fence}, but fence "
                             f"{int(newer)} owns the actor now (this activation lost its lease and must stop)")
        self.saved += 1

    def _check_link(self, kind: str, key: str) -> None:
        if not self.link.connected:  # fail fast; the link's reconnector tells when Redis is back
            raise ActorUnavailable(f"snapshot of {kind}:{key}: Redis unreachable ({self.link.last_error})")

    def _failed(self, err: BaseException) -> None:
        if isinstance(err, self.link.link_errors):
            self.link.lost(err)

"""Leases in Redis: exactly one live activation per (kind, key) across processes.

Keys (one Redis Cluster hash tag per actor, so a cluster keeps an actor's keys
on one shard)::

    {<channel>:actor:<kind>:<key>}:lease   "<fence>:<owner node id>", expires (PX)
    {<channel>:actor:<kind>:<key>}:fence   INCR counter: the newest fence ever granted

* :meth:`RedisPlacement.acquire` runs one Lua script: if nobody holds the lease,
  ``INCR`` the fence and ``SET`` the lease with its expiry (set-if-absent, atomic);
  if this node holds it already (a lease it could not release during a Redis
  blip, or a previous process with the same node id), it is granted again under
  a new fence; otherwise the owner's node id is returned. A remote owner's id is
  remembered for ``owner_cache`` seconds so that calls to it do not each pay a
  round trip.
* One greenlet per process (started by :meth:`RedisPlacement.start`) renews every
  lease it holds every ``lease / 3`` seconds, in one pipeline. A renewal extends
  a lease still holding this node's value, and takes back one that expired
  (a stalled process, Redis restarted without its data) only when no newer
  fence was granted meanwhile; any other lease is *lost*: ``on_lost(lease)``
  is called and the activation must stop without saving.
* :meth:`release` deletes the lease only if it still holds this node's value.

Faults: while Redis is unreachable, no other process can take a lease either, so
leases are kept (local actors go on serving) and renewal resumes when the link
is back, reporting any lease another process took meanwhile (possible only if
that process could reach Redis while this one could not); the fence then refuses
the stale owner's snapshot writes (:mod:`.snapshots`). ``acquire`` with Redis
unreachable raises :class:`~flamigo_actors.runtime.actor_errors.ActorUnavailable`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import gevent

from ..runtime.actor_errors import ActorUnavailable
from ..runtime.placement import Lease, node_id as this_node
from .link import RedisLink

__all__ = ["LeaseStats", "RedisPlacement", "actor_keys"]

_log = logging.getLogger("flamigo_actors.actors.redis")

# KEYS: lease, fence.  ARGV: owner, lease ms.  -> {1, fence} granted | {0, "<fence>:<owner>"}
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, ':', 1, true)
  if string.sub(cur, sep + 1) ~= ARGV[1] then return {0, cur} end
end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], fence .. ':' .. ARGV[1], 'PX', ARGV[2])
return {1, fence}
"""

# KEYS: lease, fence.  ARGV: "<fence>:<owner>", fence, lease ms.  -> 1 kept | 0 lost
_RENEW = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[3]) return 1 end
if cur then return 0 end
local newest = tonumber(redis.call('GET', KEYS[2]) or '0')
local mine = tonumber(ARGV[2])
if newest > mine then return 0 end
if newest < mine then redis.call('SET', KEYS[2], mine) end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""

# KEYS: lease.  ARGV: "<fence>:<owner>".
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def actor_keys(channel: str, kind: str, key: str) -> str:
    """The common prefix (a hash tag) of every Redis key of actor (kind, key)."""
    return f"{{{channel}:actor:{kind}:{key}}}"


@dataclass
class LeaseStats:
    """Counters of the placement (for inspection)."""

    granted: int = 0
    """Leases this node acquired."""
    refused: int = 0
    """Acquires answered with another node's id (a Redis round trip, not the cache)."""
    renewed: int = 0
    """Lease renewals that succeeded."""
    lost: int = 0
    """Leases found taken by another node (their activations had to stop)."""
    released: int = 0
    """Leases given up (passivation, stop)."""


class RedisPlacement:
    """Leases in Redis (see the module docstring).

    Args:
        link: the shared Redis link.
        channel: prefix of the keys (``FLAMIGO_REDIS_CHANNEL``).
        lease: seconds a lease lives without renewal (``FLAMIGO_ACTOR_LEASE``).
        node_id: this process's id (``"<host>:<pid>"`` by default).
        owner_cache: seconds a remote owner's id is reused without asking Redis.
    """

    def __init__(self, link: RedisLink, *, channel: str = "flamigo", lease: float = 5.0,
                 node_id: str | None = None, owner_cache: float = 0.5) -> None:
        if lease <= 0:
            raise ValueError(f"FLAMIGO_ACTOR_LEASE must be positive, got {lease!r}")
        self.link = link
        self.channel = channel
        self.lease = lease
        self.node_id = node_id or this_node()
        self.owner_cache = min(owner_cache, lease / 3)
        self.renew_interval = lease / 3
        """Seconds between renewals (the actor space's sweeper renews this often)."""
        self.stats = LeaseStats()
        self._lease_ms = max(1, int(lease * 1000))
        self._held: dict[tuple[str, str], Lease] = {}
        self._owners: dict[tuple[str, str], tuple[str, float]] = {}
        self._on_lost: Callable[[Lease], None] | None = None
        self._renewer: gevent.Greenlet | None = None
        self._scripts: dict[str, Any] = {}
        self.prepare: Callable[[], None] | None = None
        """Called before each acquire that asks Redis (e.g. to start reading this node's
        inbox before any other node can learn that this node owns an actor)."""

    # -- the Placement protocol -----------------------------------------------------

    def acquire(self, kind: str, key: str) -> Lease | str:
        """A new lease if nobody holds (kind, key), else the owner's node id.

        Raises:
            ActorUnavailable: Redis is unreachable.
        """
        cached = self._owners.get((kind, key))
        if cached is not None:
            if cached[1] > time.monotonic():
                return cached[0]
            del self._owners[(kind, key)]
        if not self.link.connected:  # fail fast; the link's reconnector tells when Redis is back
            raise ActorUnavailable(f"cannot place {kind}:{key}: Redis unreachable ({self.link.last_error})")
        if self.prepare is not None:
            self.prepare()
        prefix = actor_keys(self.channel, kind, key)
        try:
            granted, value = self._script("acquire", _ACQUIRE)(
                keys=[prefix + ":lease", prefix + ":fence"], args=[self.node_id, self._lease_ms])
        except self.link.link_errors as err:
            self.link.lost(err)
            raise ActorUnavailable(f"cannot place {kind}:{key}: Redis unreachable ({err})") from err
        except self.link.redis_error as err:
            raise ActorUnavailable(f"cannot place {kind}:{key}: Redis refused ({err})") from err
        if granted:
            lease = Lease(kind, key, self.node_id, int(value))
            self._held[(kind, key)] = lease
            self.stats.granted += 1
            return lease
        owner = (value.decode() if isinstance(value, bytes) else str(value)).partition(":")[2]
        self.stats.refused += 1
        if len(self._owners) > 100_000:  # bounded: forget everything rather than grow
            self._owners.clear()
        self._owners[(kind, key)] = (owner, time.monotonic() + self.owner_cache)
        return owner

    def renew(self, leases: list[Lease]) -> list[Lease]:
        """Extend ``leases`` in one pipeline; returns those lost to another node.

        With Redis unreachable nothing is reported lost (nobody else can take a
        lease meanwhile); the renewal after reconnecting tells.
        """
        if not leases or not self.link.connected:
            return []
        script = self._script("renew", _RENEW)
        pipe = self.link.client.pipeline(transaction=False)
        for lease in leases:
            prefix = actor_keys(self.channel, lease.kind, lease.key)
            if self.link.cluster:  # EVAL: a master (a promoted replica) may not know the script's sha
                pipe.execute_command("EVAL", _RENEW, 2, prefix + ":lease", prefix + ":fence",
                          f"{lease.fence}:{lease.owner}", lease.fence, self._lease_ms)
                continue
            script(keys=[prefix + ":lease", prefix + ":fence"],
                   args=[f"{lease.fence}:{lease.owner}", lease.fence, self._lease_ms], client=pipe)
        try:
            results = pipe.execute(raise_on_error=False)
        except self.link.link_errors as err:
            self.link.lost(err)
            return []
        finally:
            pipe.reset()
        lost = []
        for lease, result in zip(leases, results):
            if isinstance(result, BaseException):
                if isinstance(result, self.link.link_errors):
                    self.link.lost(result)
                    return []
                _log.error("domain actors: renewing the lease of %s:%s failed: %s",
                           lease.kind, lease.key, result)
                continue
            if result:
                self.stats.renewed += 1
            else:
                lost.append(lease)
        for lease in lost:
            self.stats.lost += 1
            if self._held.get((lease.kind, lease.key)) == lease:
                del self._held[(lease.kind, lease.key)]
            _log.error("domain actors: lease of %s:%s (fence %d) was lost to another process: "
                       "this activation stops without saving", lease.kind, lease.key, lease.fence)
        # A lease released while this renewal was in flight: its release may have
        # reached Redis first and the renewal then taken the expired-looking key
        # back. Delete it again (only if it is still this fence's), or it would
        # linger until it expires and keep other nodes from the actor meanwhile.
        for lease in leases:
            if self._held.get((lease.kind, lease.key)) != lease:
                self._delete(lease)
        return lost

    def release(self, lease: Lease) -> None:
        """Delete the lease if this node still holds it (a Redis error is logged; it expires anyway)."""
        if self._held.get((lease.kind, lease.key)) == lease:
            del self._held[(lease.kind, lease.key)]
        if self._delete(lease):
            self.stats.released += 1

    def _delete(self, lease: Lease) -> bool:
        """Delete the lease's key if it still holds this fence and owner; False on a Redis error."""
        prefix = actor_keys(self.channel, lease.kind, lease.key)
        try:
            self._script("release", _RELEASE)(keys=[prefix + ":lease"], args=[f"{lease.fence}:{lease.owner}"])
        except self.link.redis_error as err:
            if isinstance(err, self.link.link_errors):
                self.link.lost(err)
            _log.warning("domain actors: could not release the lease of %s:%s (%s): it expires "
                         "within %.1fs", lease.kind, lease.key, err, self.lease)
            return False
        return True

    # -- the renewing greenlet ---------------------------------------------------------

    @property
    def held(self) -> list[Lease]:
        """The leases this node holds (granted, not released nor lost)."""
        return list(self._held.values())

    def start(self, on_lost: Callable[[Lease], None]) -> None:
        """Renew every held lease every ``lease / 3`` seconds; ``on_lost(lease)`` for each one lost."""
        if self._renewer is not None:
            raise RuntimeError("this placement was already started")
        self._on_lost = on_lost
        self._renewer = gevent.spawn(self._renew_loop)

    def known_owner(self, kind: str, key: str) -> str | None:
        """The other node remembered (for ``owner_cache`` seconds) as the owner of (kind, key), if any."""
        cached = self._owners.get((kind, key))
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        return None

    def forget_owner(self, kind: str, key: str) -> None:
        """Drop the cached owner of (kind, key) (e.g. after a call to it failed)."""
        self._owners.pop((kind, key), None)

    def _renew_loop(self) -> None:
        interval = self.renew_interval
        while True:
            gevent.sleep(interval)
            if not self.link.connected or not self._held:
                continue
            for lease in self.renew(list(self._held.values())):
                if self._on_lost is not None:
                    try:
                        self._on_lost(lease)
                    except Exception:  # noqa: BLE001 - one activation's trouble must not stop renewal
                        _log.exception("domain actors: stopping %s:%s after losing its lease failed",
                                       lease.kind, lease.key)

    def greenlets(self) -> list[gevent.Greenlet]:
        """The placement's live greenlets (the renewer)."""
        return [g for g in (self._renewer,) if g is not None and not g.dead]

    def close(self, *, release: bool = True) -> None:
        """Stop renewing; with ``release``, give up every lease still held."""
        gevent.killall(self.greenlets(), block=True, timeout=1.0)
        if release and self.link.connected:
            for lease in list(self._held.values()):
                self.release(lease)
        self._held.clear()

    def snapshot(self) -> dict[str, Any]:
        """Counters and held leases (for inspection)."""
        return {"node": self.node_id, "lease": self.lease, "held": len(self._held), **asdict(self.stats)}

    def _script(self, name: str, source: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.link.client.register_script(source)
        return script

"""Presence across processes: every process's entries in Redis, diffs on a pub/sub channel.

Keys (``P`` = ``<FLAMIGO_REDIS_CHANNEL>:presence``; ``I`` = this process's
instance id, random and new at every start, so a restarted process never
revives a dead one's entries). A process's own keys carry the hash tag ``{I}``,
a topic's ``{<topic>}``: on a Redis Cluster each script runs on one slot.

* ``P:alive:{I}``: the heartbeat, ``EX FLAMIGO_PRESENCE_DOWN_AFTER``, renewed
  every ``FLAMIGO_PRESENCE_REFRESH``; ``P:instances``: the ids of every
  process with entries; ``P:reaped:{I}``: the reaper's mark.
* ``P:e:I:{<topic>}``: a hash of I's entries of the topic (``ref -> [key,
  meta]``), rewritten whole when they change; ``P:t:{<topic>}``: the ids of the
  processes with entries in the topic; ``P:topics:{I}``: I's topics. Entry keys
  carry a TTL of three times the down-after, renewed with the heartbeat, so
  nothing outlives a cluster that died entirely.
* With one Redis a process's writes and diffs go in one transaction; on a
  Redis Cluster (``cluster=True``) per slot: I's topic list first (topics
  joined), each topic's entries by one script, the topics left last, then the
  diffs (a ``PUBLISH`` pipeline to one master, which relays them to every
  node).
* ``P:diffs``: the pub/sub channel of diffs ``{"o": I, "t": topic, "j": [...],
  "l": [...]}``; each process skips its own.

Guarantees and failure behaviour:

* **Nothing until used.** :meth:`RedisPresence.start` opens no connection: the
  first track (or the first ``list``, which reads the other processes'
  entries) starts the heartbeat, the writer and the diff subscription, so an
  app that never uses presence pays no Redis connection for it; then at most
  2 pooled connections plus the subscription's own. A ``list`` waits (at most
  :data:`SUBSCRIBE_WAIT`) for the diff subscription to be confirmed before it
  reads, so no diff sent after its read is missed. A process that never
  tracked nor listed does not hear the others' diffs: its connections are
  not members of a tracked topic unless the app lists it.
* ``list`` on any process reads the other processes' entries from Redis and
  skips a process whose heartbeat has expired, so a dead process's entries
  stop being listed as soon as it counts as dead.
* **A dead process** (kill -9, a lost host): once its heartbeat expired, the
  survivors' reaper (every ``min(refresh, down_after / 4)`` seconds) runs one
  Lua script in its slot that checks it is still dead and not reaped yet,
  marks it reaped and takes its topic list: exactly one survivor gets it (the
  script is atomic: a second one finds the mark); that one takes its entries
  topic by topic (a script each, in the topic's slot) and publishes one leave
  per entry, so within ``down_after`` + that interval every member has its
  leave, once. A reaper killed between the two steps leaves those entries to
  their TTL (``list`` skips them: their process is dead) without their leaves.
* **A process that was only cut off** for longer than ``down_after`` and was
  reaped meanwhile notices it at its next heartbeat (the reaper leaves a
  mark), writes its entries again and sends them as joins; so does a process
  whose heartbeat key is gone for any reason (a flushed or restarted Redis).
* **Redis unreachable**: local presence goes on; writes and diffs wait in
  this process (the dirty topics and at most 10,000 diffs; beyond, the oldest
  diffs are dropped and counted) and are sent when Redis is back; ``list``
  answers the local entries (logged). Pub/sub forgets diffs sent while a
  process's subscription was down: the entries (and so ``list``) stay right;
  a member may miss such a diff (counted in ``missed`` only when detectable:
  never), which the README states.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from urllib.parse import urlsplit
from collections import deque
from typing import Any

import gevent
from gevent.event import Event

from ..core.settings import Settings
from ..runtime.presence import Change, Presence
from .streams import RedisUnavailable, backoff, import_redis, redact

__all__ = ["RedisPresence"]

_log = logging.getLogger("flamigo_actors.presence.redis")

OUTBOX_MAX = 10_000

SUBSCRIBE_WAIT = 2.0
"""Seconds the first ``list`` waits for the diff subscription (the connect timeout)."""

# Keys: a process's own in the slot of its instance id ``{I}``, a topic's in the slot of
# ``{T}`` (a Redis Cluster runs a script on one slot only): see the module docstring.


def _alive(p: str, inst: str) -> str:
    return f"{p}:alive:{{{inst}}}"


def _topics(p: str, inst: str) -> str:
    return f"{p}:topics:{{{inst}}}"


def _reaped(p: str, inst: str) -> str:
    return f"{p}:reaped:{{{inst}}}"


def _members(p: str, topic: str) -> str:
    return f"{p}:t:{{{topic}}}"


def _entries(p: str, inst: str, topic: str) -> str:
    return f"{p}:e:{inst}:{{{topic}}}"


# KEYS: alive, topics, reaped (one instance's slot). ARGV: reaped-mark TTL.
# nil: alive; 0: reaped already (by another survivor); else the topics it had entries in
# (its topics set deleted: of several reapers exactly one gets them).
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return nil end
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('SET', KEYS[3], '1', 'EX', ARGV[1])
local topics = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[2])
return topics
"""

# KEYS: entries of I in T, members of T (T's slot). ARGV: instance. Returns the entries, removed.
_TAKE = """
local fields = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return fields
"""

# KEYS: entries of I in T, members of T (T's slot). ARGV: instance, TTL, field, value, ...
# The whole rewrite of I's entries of T at once (none left: I leaves T's members).
_WRITE = """
redis.call('DEL', KEYS[1])
if #ARGV > 2 then
  for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[1])
else
  redis.call('SREM', KEYS[2], ARGV[1])
end
return 1
"""

# KEYS: alive, topics, reaped (one instance's slot). ARGV: heartbeat TTL, data TTL.
# Returns {missing, topic, topic...}: missing is non-zero when this instance's entries may be
# missing (it had been reaped, or its heartbeat was gone: an expiry, a flushed or new Redis);
# the caller renews the topics' entry keys and the instance's registration.
_HEARTBEAT = """
local missing = 1 - redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
local out = {redis.call('DEL', KEYS[3]) + missing}
for _, topic in ipairs(redis.call('SMEMBERS', KEYS[2])) do out[#out + 1] = topic end
return out
"""


class RedisPresence:
    """The Redis :class:`~flamigo_actors.runtime.presence.PresenceStore` of one process.

    Args:
        presence: this process's presence (its ``store`` is set on :meth:`start`).
        url: ``FLAMIGO_REDIS_URL``; channel: ``FLAMIGO_REDIS_CHANNEL``.
        cluster: ``url`` names one node of a Redis Cluster (``FLAMIGO_REDIS_CLUSTER``).
        refresh / down_after: ``FLAMIGO_PRESENCE_REFRESH`` / ``_DOWN_AFTER`` (seconds).
    """

    def __init__(self, presence: Presence, url: str, *, channel: str = "flamigo",
                 refresh: float = 10.0, down_after: float = 30.0, cluster: bool = False) -> None:
        self.presence = presence
        self.cluster = cluster
        self.url = url
        self.prefix = f"{channel}:presence"
        self.refresh = refresh
        self.down_after = down_after
        self.data_ttl = max(1, int(down_after * 3 + refresh))
        self.reap_every = max(0.1, min(refresh, down_after / 4))
        self.instance = uuid.uuid4().hex[:16]
        self.client: Any = None
        self._errors: tuple[type[BaseException], ...] = (OSError,)
        self._dirty: set[str] = set()
        self._outbox: deque[str] = deque()
        self._wake = Event()
        self._booted = Event()  # the first heartbeat went through: the writer may write
        self._subscribed = Event()  # the diff subscription is confirmed (once)
        self._greenlets: list[gevent.Greenlet] = []
        self._closed = False
        self.stats = {"written": 0, "published": 0, "received": 0, "reaped": 0, "dropped": 0,
                      "errors": 0, "resyncs": 0}

    @classmethod
    def from_settings(cls, presence: Presence, settings: Settings) -> RedisPresence:
        """The store for ``settings`` (``FLAMIGO_REDIS_URL`` must be set)."""
        if not settings.redis_url:
            raise ValueError("RedisPresence needs FLAMIGO_REDIS_URL")
        return cls(presence, settings.redis_url, channel=settings.redis_channel,
                   refresh=settings.presence_refresh, down_after=settings.presence_down_after,
                   cluster=settings.redis_cluster)

    # -- running ---------------------------------------------------------------

    def start(self, *, required: bool = True) -> None:
        """Become ``presence``'s store; connect only at the first use (:meth:`_run`).

        ``required`` is kept for the callers' symmetry: reachability is checked by the
        backplane's start; here Redis is used, and retried, only once presence is.

        Raises:
            RedisUnavailable: the URL is not a Redis URL.
        """
        redis = import_redis()[0]
        from redis.exceptions import RedisClusterException  # (not a RedisError: no slot map, no master)

        self._errors = (redis.RedisError, RedisClusterException, OSError)
        self.client = _make_client(self.url, self.cluster)
        presence = self.presence
        presence.instance = self.instance
        presence.store = self
        if presence.topics():  # tracked before the start: write them now
            self._dirty.update(presence.topics())
            self._wake.set()
            self._run()

    def _run(self) -> None:
        """Start the writer, heartbeat/reaper and subscriber greenlets (once, at the first use)."""
        if not self._greenlets and not self._closed:
            self._greenlets = [gevent.spawn(self._writer), gevent.spawn(self._beats),
                               gevent.spawn(_subscriber, self)]

    def close(self) -> None:
        """Send what is pending (briefly), remove this process's entries, stop (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if not self._greenlets:  # never used: nothing was written, no connection to open now
            if self.client is not None:
                _disconnect(self.client)
            return
        gevent.joinall(self._greenlets[:1], timeout=2.0)
        gevent.killall(self._greenlets, block=True, timeout=1.0)
        try:
            self._flush()
            _remove_instance(self.client, self.prefix, self.instance)
        except self._errors as err:
            _log.warning("presence: could not remove this process's entries at shutdown (%s); "
                         "the other processes remove them once its heartbeat expires", err)
        if self.client is not None:
            self.client.close()
            _disconnect(self.client)

    # -- the store API -----------------------------------------------------------

    def changed(self, topic: str) -> None:
        self._dirty.add(topic)
        self._wake.set()
        self._run()

    def publish(self, topic: str, joins: list[Change], leaves: list[Change]) -> None:
        self._send(topic, joins, leaves)
        self._run()

    def remote_entries(self, topic: str) -> list[tuple[str, Any]]:
        p = self.prefix
        if not self._subscribed.is_set():  # the first list: hear every diff sent after this read
            self._run()
            self._subscribed.wait(SUBSCRIBE_WAIT)
        try:
            others = [i for i in self.client.smembers(_members(p, topic)) if i != self.instance]
            if not others:
                return []
            pipe = self.client.pipeline(transaction=False)
            for inst in others:
                pipe.exists(_alive(p, inst))
                pipe.hgetall(_entries(p, inst, topic))
            replies = pipe.execute()
        except self._errors as err:
            self.stats["errors"] += 1
            _log.warning("presence: list(%s) answers this process's entries only: Redis: %s", topic, err)
            return []
        found: list[tuple[str, Any]] = []
        for alive, fields in zip(replies[::2], replies[1::2]):
            if alive:
                for value in fields.values():
                    key, meta = json.loads(value)
                    found.append((key, meta))
        return found

    def snapshot(self) -> dict[str, Any]:
        """State and counters as plain data."""
        return {"instance": self.instance, "dirty": len(self._dirty),
                "outbox": len(self._outbox), **self.stats}

    # -- internals ---------------------------------------------------------------

    def _send(self, topic: str, joins: list[Change], leaves: list[Change]) -> None:
        if len(self._outbox) >= OUTBOX_MAX:
            self._outbox.popleft()
            self.stats["dropped"] += 1
        self._outbox.append(json.dumps({"o": self.instance, "t": topic, "j": joins, "l": leaves}))
        self._wake.set()

    def _boot(self) -> None:
        """The first heartbeat (registers this process), retried until it goes through."""
        attempt = 0
        while not self._closed:
            try:
                self._beat()
                self._booted.set()
                return
            except self._errors as err:
                self.stats["errors"] += 1
                log = _log.error if attempt == 0 else _log.debug
                log("presence: Redis at %s unreachable (%s); retrying", redact(self.url), err)
                gevent.sleep(backoff(attempt))
                attempt += 1

    def _writer(self) -> None:
        self._boot()
        attempt = 0
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            try:
                self._flush()
                attempt = 0
            except self._errors as err:
                self.stats["errors"] += 1
                _log.warning("presence: Redis write failed (%s); retrying", err)
                gevent.sleep(backoff(attempt))
                attempt += 1
                self._wake.set()

    def _flush(self) -> None:
        if not self._dirty and not self._outbox:
            return
        dirty, self._dirty = self._dirty, set()
        messages = list(self._outbox)
        topics = {t: self.presence.local_entries(t) for t in dirty}
        try:
            if self.cluster:  # per slot; the diffs once the entries are written
                pipe = _write_entries_per_slot(self.client, self.prefix, self.instance, topics, self.data_ttl)
            else:
                pipe = self.client.pipeline(transaction=True)
                _write_entries(pipe, self.prefix, self.instance, topics, self.data_ttl)
            for message in messages:
                pipe.publish(f"{self.prefix}:diffs", message)
            pipe.execute()
        except BaseException:
            self._dirty |= dirty  # written whole next time: nothing lost
            raise
        for _ in messages:
            self._outbox.popleft()
        self.stats["written"] += len(dirty)
        self.stats["published"] += len(messages)

    def _beat(self) -> bool:
        return _heartbeat(self.client, self.prefix, self.instance, max(1, int(self.down_after + 0.999)),
                          self.data_ttl)

    def _beats(self) -> None:
        self._booted.wait()
        next_beat = time.monotonic() + self.refresh  # the writer's boot was the first beat
        while not self._closed:
            now = time.monotonic()
            try:
                if now >= next_beat:
                    if self._beat():
                        self._resync()
                    next_beat = now + self.refresh
                self._reap()
            except self._errors as err:
                self.stats["errors"] += 1
                _log.warning("presence: heartbeat or reaper failed (%s); retrying", err)
            gevent.sleep(self.reap_every)

    def _resync(self) -> None:
        # Reaped while cut off (the others sent leaves for our entries), or a Redis that lost our
        # keys: write every entry again and send them as joins (clients skip refs they know).
        topics = self.presence.topics()
        if not topics:
            return
        self.stats["resyncs"] += 1
        _log.warning("presence: this process's entries were missing from Redis (presumed dead after "
                     "%ss without a heartbeat, or Redis lost them); writing them again", self.down_after)
        for topic in topics:
            entries = self.presence.local_entries(topic)
            self._send(topic, [(f"{self.instance} {r}", k, m) for r, (k, m) in entries.items()], [])
            self.changed(topic)

    def _reap(self) -> None:
        dead = _reap_dead(self.client, self.prefix, self.instance, self.data_ttl)
        for inst, leaves in dead.items():
            count = sum(len(v) for v in leaves.values())
            self.stats["reaped"] += count
            _log.warning("presence: process %s is gone (no heartbeat for %ss): removed its %d entries",
                         inst, self.down_after, count)
            for topic, changes in leaves.items():
                self._send(topic, [], changes)  # to the other survivors
                self.presence.receive_remote(topic, [], changes)  # to ours

    def _received(self, data: Any) -> None:
        decoded = _decode_diff(data, self.instance)
        if decoded is not None:
            self.stats["received"] += 1
            self.presence.receive_remote(*decoded)

def _subscriber(store: RedisPresence) -> None:
    """Hear the other processes' diffs (resubscribing after a loss); confirms the subscription once."""
    attempt = 0
    while not store._closed:
        pubsub = None
        try:
            pubsub = store.client.pubsub()
            pubsub.subscribe(f"{store.prefix}:diffs")
            attempt = 0
            while not store._closed:
                message = pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                if message.get("type") == "message":
                    store._received(message.get("data"))
                elif message.get("type") == "subscribe":  # confirmed: a list may read now
                    store._subscribed.set()
        except store._errors as err:
            store.stats["errors"] += 1
            _log.warning("presence: diff subscription lost (%s); resubscribing", err)
            gevent.sleep(backoff(attempt))
            attempt += 1
        finally:
            if pubsub is not None:
                try:
                    pubsub.close()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass


def _decode_diff(data: Any, me: str) -> tuple[str, list[Change], list[Change]] | None:
    """``(topic, joins, leaves)`` of another process's diff message; None for ours or garbage (logged)."""
    try:
        message = json.loads(data)
        if message["o"] == me:
            return None
        return (message["t"], [(r, k, m) for r, k, m in message["j"]],
                [(r, k, m) for r, k, m in message["l"]])
    except (TypeError, ValueError, KeyError) as err:
        _log.error("presence: undecodable diff skipped (%s): %.200r", err, data)
        return None


def _write_entries(pipe: Any, p: str, inst: str, topics: dict[str, dict[str, Any]], ttl: int) -> None:
    """Queue on ``pipe`` (a transaction: one Redis) the whole rewrite of process ``inst``'s entries of ``topics``."""
    for topic, entries in topics.items():
        key = _entries(p, inst, topic)
        pipe.delete(key)
        if entries:
            pipe.hset(key, mapping={ref: json.dumps([k, m]) for ref, (k, m) in entries.items()})
            pipe.expire(key, ttl)
            pipe.sadd(_members(p, topic), inst)
            pipe.sadd(_topics(p, inst), topic)
        else:
            pipe.srem(_members(p, topic), inst)
            pipe.srem(_topics(p, inst), topic)
    if topics:
        pipe.expire(_topics(p, inst), ttl)


def _make_client(url: str, cluster: bool) -> Any:
    """The store's client: at most 2 connections (the writer, the heartbeat/reaper and ``list``
    share them; a caller beyond waits for one), plus the diff subscription's own: 3 links per
    process (on a Redis Cluster: 2 per master, and the subscription's).

    Raises:
        RedisUnavailable: the URL is not a Redis URL.
    """
    redis, NoBackoff, Retry = import_redis()
    options: dict[str, Any] = dict(max_connections=2, timeout=None, socket_timeout=5.0,
                                   socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 0),
                                   decode_responses=True)
    try:
        if cluster:
            from redis.cluster import RedisCluster

            urlsplit(url).port  # noqa: B018 - a bad URL fails here, not at the first use
            # (no node is contacted before the first use: connecting is the writer's job)
            return _LazyCluster(lambda: RedisCluster.from_url(
                url, connection_pool_class=redis.BlockingConnectionPool, **options))
        return redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(url, **options))
    except ValueError as err:
        raise RedisUnavailable(url, f"not a Redis URL: {err}") from None


def _heartbeat(client: Any, p: str, inst: str, beat_ttl: int, data_ttl: int) -> bool:
    """Renew ``inst``'s heartbeat, registration and entries' TTL; True when its entries may be missing."""
    missing, *topics = client.eval(_HEARTBEAT, 3, _alive(p, inst), _topics(p, inst), _reaped(p, inst),
                                   beat_ttl, data_ttl)
    pipe = client.pipeline(transaction=False)
    pipe.sadd(f"{p}:instances", inst)
    for topic in topics:
        pipe.expire(_entries(p, inst, topic), data_ttl)
    pipe.execute()
    return bool(missing)


def _write_entries_per_slot(client: Any, p: str, inst: str, topics: dict[str, dict[str, Any]], ttl: int) -> Any:
    """The same rewrite on a Redis Cluster, one slot at a time: the topics the instance joins are
    added to its list first and those it left removed last, so that a reaper that claims the list
    in between finds every topic with entries (at worst one without).

    Returns a pipeline for the diffs, to one master (a cluster pipeline refuses ``PUBLISH``;
    any master relays it to every node)."""
    joined = [t for t, entries in topics.items() if entries]
    left = [t for t, entries in topics.items() if not entries]
    if joined:
        pipe = client.pipeline(transaction=False)
        pipe.sadd(_topics(p, inst), *joined)
        pipe.expire(_topics(p, inst), ttl)
        pipe.execute()
    pipe = client.pipeline(transaction=False)
    for topic, entries in topics.items():
        fields = [x for ref, (k, m) in entries.items() for x in (ref, json.dumps([k, m]))]
        pipe.execute_command("EVAL", _WRITE, 2, _entries(p, inst, topic), _members(p, topic), inst, ttl, *fields)
    pipe.execute()
    if left:
        client.srem(_topics(p, inst), *left)
    return client.get_redis_connection(random.choice(client.get_primaries())).pipeline(transaction=False)


def _remove_instance(client: Any, p: str, inst: str) -> None:
    """Delete every key of process ``inst`` (its graceful shutdown)."""
    topics = client.smembers(_topics(p, inst))
    cluster = isinstance(client, _LazyCluster)
    pipe = client.pipeline(transaction=not cluster)  # (a cluster's keys span slots: in order, not at once)
    for topic in topics:
        pipe.delete(_entries(p, inst, topic))
        pipe.srem(_members(p, topic), inst)
    if cluster:
        pipe.delete(_topics(p, inst))
        pipe.delete(_alive(p, inst))
    else:
        pipe.delete(_topics(p, inst), _alive(p, inst))
    pipe.srem(f"{p}:instances", inst)
    pipe.execute()


def _reap_dead(client: Any, prefix: str, me: str, ttl: int) -> dict[str, dict[str, list[Change]]]:
    """Remove the entries of every registered process whose heartbeat expired (not ``me``).

    Returns ``{instance: {topic: leaves}}`` for the processes this call reaped: a script in the
    dead instance's slot claims its topic list atomically, so of several reapers exactly one
    gets a dead process's entries; then one script per topic (the topic's slot) takes them.
    A reaper that dies between the two leaves the entries to expire (``list`` skips them
    meanwhile: their process is dead) without sending their leaves.
    """
    others = [i for i in client.smembers(f"{prefix}:instances") if i != me]
    if not others:
        return {}
    pipe = client.pipeline(transaction=False)
    for inst in others:
        pipe.exists(_alive(prefix, inst))
    reaped: dict[str, dict[str, list[Change]]] = {}
    for inst, alive in zip(others, pipe.execute()):
        if alive:
            continue
        topics = client.eval(_CLAIM, 3, _alive(prefix, inst), _topics(prefix, inst), _reaped(prefix, inst), ttl)
        if topics is None:  # alive again meanwhile
            continue
        if topics != 0 and topics:
            take = client.pipeline(transaction=False)
            for topic in topics:
                take.execute_command("EVAL", _TAKE, 2, _entries(prefix, inst, topic), _members(prefix, topic), inst)
            leaves = reaped.setdefault(inst, {})
            for topic, flat in zip(topics, take.execute()):
                for field, value in zip(flat[::2], flat[1::2]):
                    key, meta = json.loads(value)
                    leaves.setdefault(topic, []).append((f"{inst} {field}", key, meta))
        client.srem(f"{prefix}:instances", inst)  # reaped (by this call or another): unregistered
    return reaped


class _LazyCluster:
    """A Redis Cluster client made at its first use (making one asks a node for the slot map)."""

    def __init__(self, make: Any) -> None:
        self._make = make
        self._client: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._client is None:
            self._client = self._make()
        return getattr(self._client, name)

    @property
    def made(self) -> bool:
        return self._client is not None


def _disconnect(client: Any) -> None:
    """Close every pooled connection of ``client`` (one Redis, or a cluster's nodes)."""
    if isinstance(client, _LazyCluster):
        if client.made:
            client.close()
        return
    client.connection_pool.disconnect()

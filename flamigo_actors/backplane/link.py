"""One process's link to Redis: a client, whether Redis is up, reconnection with backoff.

The events backplane (:mod:`.streams`) has one; the domain actors' parts share another.

The actors' Redis parts (leases, snapshots, remote calls) share one
:class:`RedisLink`: one connection pool, configured like the events
backplane's (``FLAMIGO_REDIS_URL``; no retries inside redis-py, so a failure
surfaces at once), and one notion of "Redis is up". A part that sees a link
error calls :meth:`RedisLink.lost`: the link goes down and one greenlet
pings with the backplane's exponential backoff with jitter until Redis
answers, then the link is up again. While it is down, the parts fail fast
(:class:`~flamigo_actors.runtime.actor_errors.ActorUnavailable`) instead of waiting
for timeouts.

**Redis Cluster** (``cluster=True``, ``FLAMIGO_REDIS_CLUSTER``): the URL names any
one node; the client is redis-py's ``RedisCluster`` (gevent-patched sockets, no
threads), which learns the slot map from that node and sends each command to the
master of its key's slot (following ``MOVED``/``ASK`` itself). Each node gets its
own bounded pool of ``max_connections``. A node that stops answering, a slot
without a master (``CLUSTERDOWN``) or redirections without end count as a lost
link: the slot map is refreshed, the link goes down (calls in flight fail, as
with one Redis) and the reconnector's ``PING`` of every master brings it up once
the cluster serves all slots again (a replica promoted). Raw connections for a
key (:meth:`RedisLink.connection_for`) come from the pool of the master of the
key's slot as the client knows it; a stale map shows as a ``MOVED`` answer on
them, which their users report as a lost link (refreshing the map).

``import redis`` happens in :meth:`RedisLink.start` only.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import gevent
from gevent.event import Event

__all__ = ["RedisLink", "RedisUnavailable", "backoff", "import_redis", "redact"]

_log = logging.getLogger("flamigo_actors.actors.redis")


class RedisUnavailable(RuntimeError):
    """Redis cannot be reached at start and ``FLAMIGO_REDIS_REQUIRED`` is true."""

    def __init__(self, url: str, error: BaseException | str) -> None:
        super().__init__(
            f"cannot reach Redis at {redact(url)} ({error}): start Redis or fix the URL "
            "(--redis / FLAMIGO_REDIS_URL); or set FLAMIGO_REDIS_REQUIRED=false to start "
            "local-only (events stay in this process until Redis is reachable)"
        )
        self.url = url


def import_redis() -> tuple[Any, Any, Any]:
    """redis-py, its ``NoBackoff`` and ``Retry`` (imported when Redis is configured, not before).

    Raises:
        RuntimeError: redis-py is not installed (says which extra installs it).
    """
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        raise RuntimeError(
            "FLAMIGO_REDIS_URL is set but redis-py is not installed: "
            "pip install 'flamigo-actors[redis]'"
        ) from None
    return redis, NoBackoff, Retry


def redact(url: str) -> str:
    """``url`` without its password (for messages and inspection)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def backoff(attempt: int, base: float = 0.1, cap: float = 3.0) -> float:
    """Seconds to wait before reconnect ``attempt`` (0, 1, 2...).

    Exponential (``base * 2**attempt``, at most ``cap``) with "equal jitter":
    half of it fixed, half random, so that many processes losing the same
    Redis do not hammer it in lockstep when it comes back.
    """
    delay = min(cap, base * (2 ** min(attempt, 30)))
    return delay / 2 + random.uniform(0, delay / 2)


class RedisLink:
    """A Redis client shared by the actor parts, and the state of the link.

    Args:
        url: ``redis://[:password@]host:port/db`` (``FLAMIGO_REDIS_URL``).
        socket_timeout: a Redis call silent for this long counts as a lost link.
        block: longest blocking read (``XREAD BLOCK``) done through this link.
        reconnect_base / reconnect_cap: backoff of reconnection attempts (seconds).
        max_connections: connections to Redis at most (callers beyond wait for one).
        log_changes: log losing and regaining Redis (off when the owner logs its own
            account in :meth:`when_down` / :meth:`when_up` callbacks).
        cluster: ``url`` names one node of a Redis Cluster (see the module docstring).
    """

    def __init__(self, url: str, *, socket_timeout: float = 5.0, block: float = 2.0,
                 reconnect_base: float = 0.1, reconnect_cap: float = 3.0,
                 max_connections: int = 64, log_changes: bool = True, cluster: bool = False) -> None:
        self.log_changes = log_changes
        self.cluster = cluster
        self._pools: dict[int, Any] = {}  # id(raw connection) -> its node's pool (cluster)
        self.last_outage: tuple[float, int] = (0.0, 0)
        """(seconds down, reconnection attempts) of the last outage, once it ended."""
        self.url = url
        self.max_connections = max_connections
        self.socket_timeout = socket_timeout
        self.block = block
        self.reconnect_base = reconnect_base
        self.reconnect_cap = reconnect_cap
        self.client: Any = None
        self.up = Event()
        self.reconnects = 0
        self.last_error: str | None = None
        self.link_errors: tuple[type[BaseException], ...] = (OSError,)
        """Exceptions meaning "Redis is unreachable" (redis-py's, once started)."""
        self.redis_error: Any = OSError
        """Any error from Redis, an error reply included (a class, or a tuple of them on a cluster)."""
        self._on_up: list[Callable[[], None]] = []
        self._on_down: list[Callable[[], None]] = []
        self._reconnector: gevent.Greenlet | None = None
        self._down_since: float | None = None
        self._closed = False

    @property
    def connected(self) -> bool:
        """Whether the link is up right now."""
        return self.up.is_set()

    def when_up(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` each time the link comes back."""
        self._on_up.append(callback)

    def when_down(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` each time the link is lost (e.g. to fail waiting calls at once)."""
        self._on_down.append(callback)

    def start(self, *, required: bool = True) -> None:
        """Connect and check with ``PING``.

        Raises:
            RedisUnavailable: Redis cannot be reached and ``required`` is true, or the
                URL is not a Redis URL.
            RuntimeError: redis-py is not installed.
        """
        if self.client is not None:
            raise RuntimeError("this Redis link was already started")
        redis, NoBackoff, Retry = import_redis()
        self.link_errors = (redis.ConnectionError, redis.TimeoutError, OSError)
        self.redis_error = redis.RedisError
        if self.cluster:
            self._start_cluster(redis, NoBackoff, Retry, required)
            return
        try:
            # Bounded: a thousand greenlets activating at once share max_connections sockets
            # (waiting for a free one, never failing for want of one).
            pool = redis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=self.max_connections,
                timeout=None,
                socket_timeout=self.socket_timeout + self.block,
                socket_connect_timeout=min(2.0, self.socket_timeout),
                socket_keepalive=True,
                retry=Retry(NoBackoff(), 0),  # a failure surfaces at once: we reconnect ourselves
                health_check_interval=0,
            )
            self.client = redis.Redis(connection_pool=pool)
        except ValueError as err:
            raise RedisUnavailable(self.url, f"not a Redis URL: {err}") from None
        try:
            self.client.ping()
        except redis.RedisError as err:
            if required:
                self.client.connection_pool.disconnect()
                self.client = None
                raise RedisUnavailable(self.url, err) from None
            self.lost(err)
        else:
            self.up.set()

    def _start_cluster(self, redis: Any, NoBackoff: Any, Retry: Any, required: bool) -> None:
        try:
            self.client, self.link_errors = _cluster_client(self, redis, NoBackoff, Retry)
            self.redis_error = (redis.RedisError, self.link_errors[-1])  # + RedisClusterException
        except ValueError as err:
            raise RedisUnavailable(self.url, f"not a Redis URL: {err}") from None
        except redis.RedisError as err:  # no node answers, or not a cluster
            if required or "cluster support disabled" in str(err).lower():
                raise RedisUnavailable(self.url, f"not a usable Redis Cluster: {err}") from None
            self.client = None
            self.lost(err)
            return
        try:
            self.client.ping(target_nodes="primaries")
        except redis.RedisError as err:
            if required:
                self.client.close()
                self.client = None
                raise RedisUnavailable(self.url, err) from None
            self.lost(err)
        else:
            self.up.set()

    def dedicated(self) -> Any:
        """A client holding one connection of the pool for itself (a reading or writing greenlet's)."""
        import redis

        if self.cluster:
            raise RuntimeError("on a Redis Cluster a connection belongs to one node: use connection_for(key)")
        return redis.Redis(connection_pool=self.client.connection_pool, single_connection_client=True)

    def connection(self) -> Any:
        """A raw connection taken from the pool for one greenlet's own use (give it back with :meth:`release`).

        For the remote calls' reader and sender, which write pipelines and read their
        answers themselves (no per-command client machinery on the latency path).
        """
        if self.cluster:
            raise RuntimeError("on a Redis Cluster a raw connection belongs to one node: use connection_for(key)")
        return self.client.connection_pool.get_connection()

    def connection_for(self, key: str) -> Any:
        """A raw connection to the node serving ``key`` (the master of its slot on a cluster;
        the one Redis otherwise), for one greenlet's own use: give it back with :meth:`release`.

        Raises:
            the link's errors (:attr:`link_errors`): no node serves the slot right now.
        """
        if not self.cluster:
            return self.connection()
        return self.connection_to(self.client.get_redis_connection(self.client.get_node_from_key(key)))

    def connection_to(self, node_client: Any) -> Any:
        """A raw connection from a cluster node's client's pool (give it back with :meth:`release`)."""
        pool = node_client.connection_pool
        connection = pool.get_connection()
        self._pools[id(connection)] = pool
        return connection

    def same_node(self, key: str, other: str) -> bool:
        """Whether ``key`` and ``other`` are served by the same node (always, without a cluster)."""
        if not self.cluster:
            return True
        try:
            return bool(self.client.get_node_from_key(key) is self.client.get_node_from_key(other))
        except Exception:  # noqa: BLE001 - no map for one of them: treat as elsewhere
            return False

    def release(self, connection: Any, *, broken: bool = False) -> None:
        """Give back a connection from :meth:`connection` / :meth:`connection_for` (``broken``: close it first).

        A broken connection on a cluster also refreshes the slot map (a failover may be under way).
        """
        pool = self._pools.pop(id(connection), None) if self.cluster else self.client.connection_pool
        try:
            if broken:
                connection.disconnect()
            if pool is not None:
                pool.release(connection)
        except Exception:  # noqa: BLE001 - the pool may be closed already
            pass
        if broken and self.cluster:
            self.refresh()

    def refresh(self) -> None:
        """Reload the cluster's slot map (after a link error on a raw connection; nothing without a cluster)."""
        if not self.cluster or self.client is None:
            return
        try:
            self.client.nodes_manager.initialize()
        except Exception as err:  # noqa: BLE001 - no node answers: the reconnector retries
            self.last_error = f"{type(err).__name__}: {err}"

    def lost(self, err: BaseException) -> None:
        """Report a link error: the link goes down and reconnection starts (idempotent)."""
        self.last_error = f"{type(err).__name__}: {err}"
        if self._closed:
            return
        if self.up.is_set() or self._down_since is None:
            self.up.clear()
            self._down_since = time.monotonic()
            if self.log_changes:
                _log.error("domain actors: lost Redis at %s (%s): remote calls fail at once, local "
                           "actors go on; reconnecting with backoff", redact(self.url), err)
            for callback in list(self._on_down):
                callback()
        if self._reconnector is None or self._reconnector.dead:
            self._reconnector = gevent.spawn(self._reconnect_loop)

    def _reconnect_loop(self) -> None:
        attempt = 0
        while not self._closed:
            gevent.sleep(backoff(attempt, self.reconnect_base, self.reconnect_cap))
            attempt += 1
            try:
                if self.client is None:  # a cluster that no node answered for at start
                    self._start_cluster(*import_redis(), False)
                    if self.client is None:
                        continue
                if self.cluster:
                    self.refresh()  # a promoted replica serves the dead master's slots now
                    self.client.ping(target_nodes="primaries")  # every master answers
                else:
                    self.client.ping()
            except self.redis_error as err:
                self.last_error = f"{type(err).__name__}: {err}"
                continue
            down = time.monotonic() - (self._down_since or time.monotonic())
            self.reconnects += 1
            self._down_since = None
            self.last_outage = (down, attempt)
            if self.log_changes:
                _log.warning("domain actors: Redis at %s is back after %.1fs (%d attempts)",
                             redact(self.url), down, attempt)
            self.up.set()
            for callback in list(self._on_up):
                callback()
            return

    def greenlets(self) -> list[gevent.Greenlet]:
        """The link's live greenlets (the reconnector, while reconnecting)."""
        return [g for g in (self._reconnector,) if g is not None and not g.dead]

    def close(self) -> None:
        """Stop reconnecting and close the connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.up.clear()
        gevent.killall(self.greenlets(), block=True, timeout=1.0)
        if self.client is not None:
            try:
                self.client.close()
                if not self.cluster:
                    self.client.connection_pool.disconnect()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    def snapshot(self) -> dict[str, Any]:
        """State as plain data (for inspection)."""
        return {"url": redact(self.url), "cluster": self.cluster, "connected": self.connected,
                "reconnects": self.reconnects, "last_error": self.last_error}


def _cluster_client(link: RedisLink, redis: Any, NoBackoff: Any, Retry: Any) -> tuple[Any, tuple[type[BaseException], ...]]:
    """A ``RedisCluster`` configured like the link's one-Redis pool (bounded per node, no
    retries inside redis-py), and the errors that mean the cluster is unusable right now."""
    from redis.cluster import RedisCluster
    from redis.exceptions import AskError, ClusterDownError, ClusterError, RedisClusterException, TryAgainError

    client = RedisCluster.from_url(
        link.url,
        connection_pool_class=redis.BlockingConnectionPool,  # per node, bounded as with one Redis
        max_connections=link.max_connections,
        timeout=None,
        socket_timeout=link.socket_timeout + link.block,
        socket_connect_timeout=min(2.0, link.socket_timeout),
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),  # a failure surfaces at once: the link reconnects itself
    )
    # A slot without a master, redirections without end, a stale slot map seen on a raw
    # connection (MOVED/ASK): the cluster is (briefly) unusable, as an unreachable Redis is.
    return client, (redis.ConnectionError, redis.TimeoutError, OSError, ClusterDownError, ClusterError,
                    TryAgainError, AskError, RedisClusterException)

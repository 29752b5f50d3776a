"""Which master of a Redis Cluster holds an interest channel: the cluster's :class:`~.interest_keys.Nodes`.

The interest-based backplane (``interest.py``) asks its ``nodes`` which node holds a
channel's slot, and groups by that: one reading greenlet per master (``SSUBSCRIBE``
must reach the master owning the channel's slot), one writing pipeline per master.
:class:`ClusterNodes` answers from the slot map redis-py's ``RedisCluster`` keeps
(``link.client``); a node is named by its ``host:port``.

Failure behaviour: a node that is no longer a master raises the link's
``ConnectionError``, a channel whose slot no known master serves is sent to any node,
which answers ``MOVED``: the caller counts it as a lost
link (as a dead master, ``MOVED`` or ``CLUSTERDOWN`` on a node's connection are), the
link refreshes the slot map and comes back once every slot has a master again; the
readers then move their channels to the masters now serving them (``interest_reader``).

:meth:`ClusterNodes.replicas` is what the sender waits for (``WAIT``) before it counts
a write done: a write the dead master had acknowledged but not replicated is then
written again (the readers skip it if it was not lost), or counted when no replica
confirmed it in time (``unreplicated``), never lost silently.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["ROLE_TTL", "ClusterNodes"]

ROLE_TTL = 10.0
"""Seconds a master's count of replicas is trusted before it is asked again (``ROLE``)."""


class ClusterNodes:
    """The masters of a Redis Cluster, through a cluster :class:`~.link.RedisLink` (see the module docstring)."""

    def __init__(self, link: Any) -> None:
        self.link = link
        self._replicas: dict[str, tuple[int, float]] = {}  # node -> (replicas, when asked)

    def node_of(self, key: str) -> Any:
        """The ``host:port`` of the master holding ``key``'s slot, as the slot map knows it
        (while no master serves the slot: any node, which answers ``MOVED``, a lost link).

        Raises:
            the link's ``ConnectionError``: the cluster never answered.
        """
        client = self.link.client
        if client is None:
            raise _unreachable("the cluster has not answered yet")
        served = client.nodes_manager.slots_cache.get(client.keyslot(key))
        if not served:  # a failover under way: any node answers MOVED, a lost link, until the map is whole
            return client.get_default_node().name
        return served[0].name

    def script_group(self, key: str) -> Any:
        """``key``'s slot: a script writes keys of one slot only."""
        client = self.link.client
        if client is None:
            raise _unreachable("the cluster has not answered yet")
        return client.keyslot(key)

    def replicas(self, node: Any) -> int:
        """Replicas connected to master ``node`` (its ``ROLE``, asked again every :data:`ROLE_TTL` seconds).

        Raises:
            the link's errors: ``node`` does not answer.
        """
        known = self._replicas.get(node)
        now = time.monotonic()
        if known is None or now - known[1] > ROLE_TTL:
            role = self.client(node).execute_command("ROLE")
            count = len(role[2]) if bytes(role[0]) == b"master" else 0
            known = self._replicas[node] = (count, now)
        return known[0]

    def client(self, node: Any) -> Any:
        """A redis-py client of master ``node`` (its own bounded pool).

        Raises:
            the link's ``ConnectionError``: ``node`` is not in the slot map any more.
        """
        client = self.link.client
        found = client.get_node(node_name=node) if client is not None else None
        if found is None:
            raise _unreachable(f"{node} is not a node of the cluster any more (failed over?)")
        return client.get_redis_connection(found)

    def serves(self, node: Any) -> bool:
        """Whether ``node`` is a master of the cluster, as the slot map knows it."""
        client = self.link.client
        found = client.get_node(node_name=node) if client is not None else None
        return found is not None and found.server_type == "primary"

    def connection(self, node: Any) -> Any:
        """A raw connection to ``node`` from its pool (give it back with :meth:`release`)."""
        return self.link.connection_to(self.client(node))

    def release(self, node: Any, connection: Any, *, broken: bool = False) -> None:
        """Give back a connection from :meth:`connection` (``broken``: close it, refresh the slot map)."""
        self.link.release(connection, broken=broken)


def _unreachable(message: str) -> BaseException:
    from redis.exceptions import ConnectionError as RedisConnectionError

    return RedisConnectionError(message)

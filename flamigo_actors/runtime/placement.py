"""Which process runs each domain actor: the :class:`Placement` and :class:`RemoteCalls` seams.

In one process, :class:`LocalPlacement` grants every (kind, key) to this
node and there are no remote calls. With Redis, the backplane layer provides
a lease-based placement (exactly one live activation per key across
processes, fenced writes) and a RemoteCalls that routes a call to the owner
node's inbox; the actor space only talks to these Protocols.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Lease", "LocalPlacement", "Placement", "RemoteCalls", "node_id"]


def node_id() -> str:
    """This process's node id: ``"<host>:<pid>"``."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Lease:
    """The right of ``owner`` to run (kind, key); ``fence`` orders owners (newer is larger)."""

    kind: str
    key: str
    owner: str
    fence: int


class Placement(Protocol):
    """Decides and records which node runs each (kind, key).

    Optional: ``known_owner(kind, key) -> str | None``, the other node remembered as the
    owner without asking anyone (calls to it then skip the forwarding activation).
    """

    node_id: str
    renew_interval: float | None
    """Seconds between lease renewals by the actor space's sweeper (``None``: leases never expire)."""

    def acquire(self, kind: str, key: str) -> Lease | str:
        """Lease if this node now owns (kind, key) (set-if-absent with expiry, new fence), else the owner's node id.

        A lease this node already holds (its release still in flight after a
        passivation) must be granted again with a new fence, never answered
        with this node's own id (the actor space refuses to forward to itself).
        """

    def renew(self, leases: list[Lease]) -> list[Lease]:
        """Extend the leases; returns those that were lost (the activation must stop at once, without saving)."""

    def release(self, lease: Lease) -> None:
        """Give (kind, key) up (after its snapshot is stored)."""


class RemoteCalls(Protocol):
    """Carries calls to actors owned by other nodes."""

    def call(
        self, owner: str, kind: str, key: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
        *, want_reply: bool, timeout: float, future: Any = None, chain: list[str] | None = None,
    ) -> Any:
        """Send a call to the owner node; the returned ActorFuture (or None without reply) resolves with the reply
        or fails (ActorUnavailable on timeout / no Redis).

        ``future``: resolve this one (and return it) rather than a new one, if the carrier can.
        ``chain``: the actors (``kind:key``) waiting for the reply, the caller last; the owner's
        handler gets it (``chain=``) to refuse a call that closes an ask cycle.
        """

    def serve(self, handler: Callable[..., Any]) -> None:
        """Receive calls for this node: ``handler(kind, key, method, args, kwargs, want_reply[, chain=])``
        runs them locally (the actor space's ``handle_remote``)."""

    def close(self) -> None:
        """Stop receiving and sending."""


class LocalPlacement:
    """Every (kind, key) runs in this process: always a lease with fence 1, nothing to renew."""

    renew_interval: float | None = None
    """Seconds between lease renewals (``None``: leases never expire)."""

    def __init__(self, node: str | None = None) -> None:
        self.node_id = node or node_id()

    def acquire(self, kind: str, key: str) -> Lease | str:
        return Lease(kind, key, self.node_id, 1)

    def renew(self, leases: list[Lease]) -> list[Lease]:
        return []

    def release(self, lease: Lease) -> None:
        pass

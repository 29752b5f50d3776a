"""The domain actors' Redis parts, built from settings and handed to an actor space.

:class:`RedisActors` builds one :class:`~.link.RedisLink` (``FLAMIGO_REDIS_URL``,
``FLAMIGO_REDIS_REQUIRED``) shared by a :class:`~.leases.RedisPlacement`
(``FLAMIGO_ACTOR_LEASE``), a :class:`~.snapshots.RedisSnapshotStore` and a
:class:`~.actor_calls.RedisRemoteCalls`, all under ``FLAMIGO_REDIS_CHANNEL``.
:meth:`RedisActors.attach` sets them on the actor space before it starts (the
space renews the leases: the placement's ``renew_interval``). :class:`RedisActors`
is the space's ``remote`` itself (it passes calls on to the remote calls), so
that ``space.stop()``, which closes ``remote`` after the actors stored their
snapshots and released their leases, closes every Redis part.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .actor_calls import RedisRemoteCalls
from .leases import RedisPlacement
from .link import RedisLink
from .snapshots import RedisSnapshotStore

if TYPE_CHECKING:
    from ..core.settings import Settings

__all__ = ["RedisActors", "Space"]


class Space(Protocol):
    """What :meth:`RedisActors.attach` sets on the actor space."""

    store: Any
    placement: Any
    remote: Any


class RedisActors:
    """The Redis link, placement, snapshot store and remote calls of one process."""

    def __init__(self, link: RedisLink, placement: RedisPlacement, store: RedisSnapshotStore,
                 remote: RedisRemoteCalls) -> None:
        self.link, self.placement, self.store, self.remote = link, placement, store, remote
        self._handler: Callable[..., Any] | None = None
        placement.prepare = self._first_use

    @classmethod
    def from_settings(cls, settings: Settings, *, future_factory: Callable[[], Any]) -> RedisActors:
        """Connect (see :meth:`RedisLink.start` for the errors) and build the parts.

        ``future_factory`` makes the futures remote calls return (the runtime's ``ActorFuture``).
        """
        if not settings.redis_url:
            raise ValueError("FLAMIGO_REDIS_URL is not set: domain actors stay in this process")
        link = RedisLink(settings.redis_url, cluster=settings.redis_cluster)
        link.start(required=settings.redis_required)
        placement = RedisPlacement(link, channel=settings.redis_channel, lease=settings.actor_lease)
        return cls(
            link,
            placement,
            RedisSnapshotStore(link, channel=settings.redis_channel),
            RedisRemoteCalls(link, placement.node_id, channel=settings.redis_channel,
                             future_factory=future_factory, on_unreachable=placement.forget_owner),
        )

    def attach(self, space: Space) -> None:
        """Make ``space`` use these parts (before ``space.start()``)."""
        space.store, space.placement, space.remote = self.store, self.placement, self

    # -- the RemoteCalls protocol, for the space: passed on ---------------------------

    def call(self, owner: str, kind: str, key: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
             *, want_reply: bool, timeout: float, future: Any = None, chain: list[str] | None = None) -> Any:
        """See :meth:`RedisRemoteCalls.call`."""
        remote = self.remote
        if not remote.started:
            self._first_use()
        return remote.call(owner, kind, key, method, args, kwargs, want_reply=want_reply, timeout=timeout,
                           future=future, chain=chain)

    def serve(self, handler: Callable[..., Any]) -> None:
        """Serve calls from other nodes with ``handler`` from the first use on (see :meth:`_first_use`)."""
        self._handler = handler
        if self.remote.started:  # used before the space started
            self.remote.serve(handler)

    def _first_use(self) -> None:
        """Start the inbox reader and sender (a connection each) on the first remote call or
        placement: an app without domain actors holds none. Before any lease is granted,
        so that a call sent by a node that learnt of the lease is read."""
        remote = self.remote
        if not remote.started:
            if self._handler is not None:
                remote.serve(self._handler)
            else:
                remote.start()
        remote.start(wait=True)  # (at once when positioned already)

    def close(self) -> None:
        """Stop remote calls, lease renewal and the link (after the space stopped; idempotent)."""
        self.remote.close()
        self.placement.close(release=True)
        self.link.close()

    def snapshot(self) -> dict[str, Any]:
        """The link, lease and call counters (for inspection)."""
        return {"link": self.link.snapshot(), "placement": self.placement.snapshot(),
                "snapshots": {"saved": self.store.saved, "refused": self.store.refused},
                "remote": self.remote.snapshot()}

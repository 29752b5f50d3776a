"""The actor space: virtual domain actors addressed by (kind, key).

``space.get(Room, "lobby")`` returns an :class:`ActorRef` at once; the
actor is activated by its first message. Get-or-activate never yields
between the lookup and the insert, so any number of concurrent first calls
make exactly one activation per (kind, key) in the process.

Where an activation runs is asked of the :class:`Placement` seam, snapshots
go to the :class:`SnapshotStore` seam, and calls to keys owned elsewhere go
through the :class:`RemoteCalls` seam (none in one process). One sweeper
greenlet per space passivates idle activations (and renews leases when the
placement has them); it exists only while activations do.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.event

from .activation import PASSIVATE, STOP, Activation
from .actor_errors import ActorUnavailable
from .domain import DomainActor, check_method
from .futures import DEFAULT_TIMEOUT, ActorFuture
from .placement import LocalPlacement, Placement, RemoteCalls
from .remote_routing import (ask_future, call_remote, handle_remote, owner_elsewhere, refused_cycle,
                             remote_chained, send_remote)
from .snapshots import MemorySnapshotStore, SnapshotStore

__all__ = ["ActorRef", "ActorSpace", "ActorStats"]

_log = logging.getLogger("flamigo_actors.actors")

SWEEP_INTERVAL = 0.25
"""Seconds between the sweeper's rounds: passivation happens within ``idle_timeout`` + this."""
_SWEEP_BATCH = 1000  # markers posted before the sweeper (or stop) yields to the runners


@dataclass
class ActorStats:
    """Counters of an actor space (``flamigo.actors.stats``)."""

    activations: int = 0
    """Successful ``on_activate`` calls (first activations, re-activations and restarts)."""
    passivations: int = 0
    """Activations stopped after their snapshot was stored (idle, or the space stopping)."""
    restarts: int = 0
    """Crashes followed by a restart."""
    downs: int = 0
    """Crashes past ``max_restarts``: the actor went down for ``restart_window``."""
    deadlocks: int = 0
    """Asks refused because waiting would close a cycle."""
    overloads: int = 0
    """Messages refused because the mailbox was full."""
    asks: int = 0
    """Calls expecting a reply."""
    tells: int = 0
    """Calls without a reply."""
    remote_calls: int = 0
    """Calls forwarded to another process."""

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return dataclasses.asdict(self)


class ActorRef:
    """A handle to the domain actor (kind, key): cheap, never waits, valid across passivations."""

    __slots__ = ("space", "cls", "key", "_act")

    def __init__(self, space: ActorSpace, cls: type[DomainActor], key: str) -> None:
        self.space = space
        self.cls = cls
        self.key = key
        self._act: Activation | None = None

    @property
    def kind(self) -> str:
        """The actor type's name."""
        return self.cls.kind

    def __repr__(self) -> str:
        return f"ActorRef({self.cls.kind}:{self.key})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorRef) and other.cls is self.cls and other.key == self.key

    def __hash__(self) -> int:
        return hash((self.cls.kind, self.key))

    def _activation(self) -> Activation:
        act = self._act
        if act is None or act.closed:
            act = self._act = self.space._activation(self.cls, self.key)
        return act

    def ask(self, method: str, *args: Any, **kwargs: Any) -> ActorFuture:
        """Call ``method(*args, **kwargs)`` on the actor; returns a future of its reply.

        Raises at once: AttributeError (no such public method),
        :class:`ActorOverloaded` (mailbox full), :class:`ActorUnavailable` (down, or stopped).
        """
        check_method(self.cls, method)
        act = self._act
        if (act is None or act.closed) and self.space._owner_lookup is not None:
            owner = owner_elsewhere(self.space, self.cls.kind, self.key)
            if owner is not None:  # straight to the owner's inbox: no forwarder, no future chain
                return call_remote(self.space, owner, self.cls.kind, self.key, method, args, kwargs, True)  # type: ignore[return-value]
        act = self._activation()
        # Not placed yet (maybe elsewhere), or asked by an actor that a remote caller waits
        # for: the future carries the chain on (the owner's cycle check across processes).
        if act.lease is None or remote_chained():
            future = ask_future(self.space, act, method)
            if refused_cycle(self.space, act, future):
                return future
        else:
            future = ActorFuture(act, self.space.call_timeout, f"{act.name}.{method}")
        act.post((method, args, kwargs, future))
        self.space.stats.asks += 1
        return future

    def tell(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Call ``method`` without waiting for (or receiving) a reply.

        Raises at once like :meth:`ask`. An exception in the method is a crash.
        """
        check_method(self.cls, method)
        act = self._act
        if (act is None or act.closed) and self.space._owner_lookup is not None:
            owner = owner_elsewhere(self.space, self.cls.kind, self.key)
            if owner is not None:
                call_remote(self.space, owner, self.cls.kind, self.key, method, args, kwargs, False)
                return
        self._activation().post((method, args, kwargs, None))
        self.space.stats.tells += 1

    def proxy(self) -> Any:
        """Pykka-style: ``ref.proxy().post("ann", "hi")`` is ``ref.ask("post", "ann", "hi")``."""
        return _Proxy(self)


class _Proxy:
    __slots__ = ("_ref",)

    def __init__(self, ref: ActorRef) -> None:
        self._ref = ref

    def __getattr__(self, name: str) -> Any:
        check_method(self._ref.cls, name)
        ref = self._ref
        return lambda *args, **kwargs: ref.ask(name, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<proxy of {self._ref!r}>"


class ActorSpace:
    """Every domain actor of one application (``flamigo.actors``, ``ctx.actors``).

    Args:
        store: where snapshots go (default: in memory).
        placement: which node runs each key (default: this one).
        remote: how calls reach other nodes (default: none).
        call_timeout: default wait of a future's ``get`` (``FLAMIGO_ACTOR_CALL_TIMEOUT``).
        mailbox_max: messages queued per actor before refusing (``FLAMIGO_ACTOR_MAILBOX_MAX``).
    """

    def __init__(
        self,
        store: SnapshotStore | None = None,
        placement: Placement | None = None,
        remote: RemoteCalls | None = None,
        *,
        call_timeout: float = DEFAULT_TIMEOUT,
        mailbox_max: int = 10_000,
        publisher: Callable[[object], None] | None = None,
    ) -> None:
        self.publisher = publisher
        """Publishes an event on the app's bus (``DomainActor.publish``); the extension sets it."""
        self.store: SnapshotStore = store if store is not None else MemorySnapshotStore()
        self.placement: Placement = placement if placement is not None else LocalPlacement()
        self.remote: RemoteCalls | None = remote
        self.call_timeout = call_timeout
        self.mailbox_max = mailbox_max
        self.stats = ActorStats()
        self._by_kind: dict[str, dict[str, Activation]] = {}
        # Per idle_timeout, least recently touched first (an OrderedDict: popping its
        # front leaves no tombstones for the next scan to skip).
        self._idle: dict[float, OrderedDict[Activation, None]] = {}
        self._count = 0
        self._sweeper: gevent.Greenlet | None = None
        self._stopped = False
        self._emptied: gevent.event.Event | None = None
        self._owner_lookup: Callable[[str, str], str | None] | None = None

    @property
    def node_id(self) -> str:
        """This process's node id (``"<host>:<pid>"``)."""
        return self.placement.node_id

    def get(self, cls: type[DomainActor], key: str) -> ActorRef:
        """A ref to the ``cls`` actor named ``key``, without waiting (activated on its first message)."""
        if not (isinstance(cls, type) and issubclass(cls, DomainActor)):
            raise TypeError(f"actors.get() takes a DomainActor subclass, got {cls!r}")
        if not cls.kind:
            raise TypeError(f"{cls.__name__} must set the class attribute kind (e.g. kind = 'room')")
        if not isinstance(key, str) or not key:
            raise TypeError(f"an actor key must be a non-empty string, got {key!r}")
        return ActorRef(self, cls, key)

    def __len__(self) -> int:
        return self._count

    # -- activations (never yield) -----------------------------------------------

    def _activation(self, cls: type[DomainActor], key: str) -> Activation:
        acts = self._by_kind.get(cls.kind)
        if acts is None:
            acts = self._by_kind[cls.kind] = {}
        act = acts.get(key)
        if act is None:
            if self._stopped:
                raise ActorUnavailable(f"{cls.kind}:{key}: the actor space is stopped")
            act = acts[key] = Activation(self, cls, key)
            self._count += 1
            if self._sweeper is None:
                self._sweeper = gevent.spawn(self._sweep)
        elif act.cls is not cls:
            raise TypeError(
                f"kind {cls.kind!r} is already used by {act.cls.__qualname__}: "
                f"{cls.__qualname__} needs another kind"
            )
        return act

    def _remove(self, act: Activation) -> None:
        acts = self._by_kind.get(act.cls.kind)
        if acts is not None and acts.get(act.key) is act:
            del acts[act.key]
            if not acts:
                del self._by_kind[act.cls.kind]
            self._count -= 1
        timeout = act.cls.idle_timeout
        if timeout is not None:
            order = self._idle.get(timeout)
            if order is not None:
                order.pop(act, None)
        if self._count == 0 and self._emptied is not None:
            self._emptied.set()

    def _touch(self, act: Activation) -> None:
        act.last_at = time.monotonic()
        timeout = act.cls.idle_timeout
        if timeout is not None:
            order = self._idle.get(timeout)
            if order is None:
                order = self._idle[timeout] = OrderedDict()
            try:
                order.move_to_end(act)
            except KeyError:
                order[act] = None

    def _forward(self, act: Activation, message: tuple[Any, ...]) -> None:
        method, args, kwargs, future = message
        remote, owner = self.remote, act.owner
        if remote is None or owner is None:
            if future is not None:
                future.set_exception(ActorUnavailable(f"{act.name}: owned by {owner}, and no remote calls here"))
            return
        send_remote(self, remote, owner, act.cls.kind, act.key, method, args, kwargs, future)

    def activations(self) -> list[Activation]:
        """Every activation in this process (a copy)."""
        return [act for acts in self._by_kind.values() for act in acts.values()]

    def leases(self) -> list[Any]:
        """The leases held by this process's activations."""
        return [act.lease for act in self.activations() if act.lease is not None]

    # -- sweeping --------------------------------------------------------------

    def _sweep(self) -> None:
        placement = self.placement
        renew_every = getattr(placement, "renew_interval", None)
        renewed = time.monotonic()
        try:
            while self._count > 0:
                gevent.sleep(SWEEP_INTERVAL)
                now = time.monotonic()
                for timeout, order in list(self._idle.items()):
                    while True:
                        expired: list[Activation] = []
                        for act in order:  # least recently touched first: stop at the first fresh one
                            if now - act.last_at < timeout or len(expired) >= _SWEEP_BATCH:
                                break
                            expired.append(act)
                        for act in expired:
                            order.pop(act, None)
                            if not act.closed:
                                act.post_control(PASSIVATE)
                        if len(expired) < _SWEEP_BATCH:
                            break
                        gevent.sleep(0)  # let the runners take this batch first
                if renew_every is not None and now - renewed >= renew_every:
                    renewed = now
                    self._renew()
        finally:
            self._sweeper = None

    def _renew(self) -> None:
        by_lease = {act.lease: act for act in self.activations() if act.lease is not None}
        try:
            lost = self.placement.renew(list(by_lease))
        except Exception:  # noqa: BLE001 - try again next round
            _log.exception("renewing %d actor leases failed", len(by_lease))
            return
        for lease in lost:
            act = by_lease.get(lease)
            if act is not None and act.lease is lease:
                _log.error("domain actor %s lost its lease: stopped without saving", act.name)
                act.lose()

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        """Take calls (again), and serve calls from other nodes when remote calls are configured."""
        self._stopped = False
        if self.remote is not None:
            # A placement that remembers remote owners lets calls to them skip the forwarder.
            self._owner_lookup = getattr(self.placement, "known_owner", None)
            self.remote.serve(self.handle_remote)

    def stop(self, timeout: float = 10.0) -> bool:
        """Store every activation's snapshot and stop it; refuse new activations.

        Returns True when every activation stopped within ``timeout``.
        """
        self._stopped = True
        if self._count:
            self._emptied = gevent.event.Event()
            for n, act in enumerate(self.activations(), 1):
                act.post_control(STOP)
                if n % _SWEEP_BATCH == 0:
                    gevent.sleep(0)  # let runners take this batch (not a greenlet per actor at once)
            self._emptied.wait(timeout)
            self._emptied = None
        if self.remote is not None:
            self.remote.close()
        return self._count == 0

    def handle_remote(
        self, kind: str, key: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], want_reply: bool,
        chain: list[str] | None = None,
    ) -> ActorFuture | None:
        """Run a call that another node routed here (the RemoteCalls handler).

        ``chain``: the actors (``kind:key``) waiting for this reply, the caller last.

        Raises:
            ActorDeadlock: the target, or an actor it waits for here, is in ``chain``.
        """
        return handle_remote(self, kind, key, method, args, kwargs, want_reply, chain)

    def class_of(self, kind: str) -> type[DomainActor]:
        acts = self._by_kind.get(kind)
        if acts:
            return next(iter(acts.values())).cls
        found = [cls for cls in _subclasses(DomainActor) if getattr(cls, "kind", None) == kind]
        if not found:
            raise ActorUnavailable(f"no DomainActor subclass of kind {kind!r} in this process")
        return found[-1]

    # -- inspection --------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """One row per activation: kind, key, owner, mailbox, restarts, activated_at, last_message_at."""
        now_wall, now = time.time(), time.monotonic()
        return [
            {
                "kind": act.cls.kind,
                "key": act.key,
                "owner": act.owner or self.node_id,
                "mailbox": len(act.mailbox or ()),
                "restarts": act.restarts,
                "activated_at": act.activated_at or None,
                "last_message_at": now_wall - (now - act.last_at),
            }
            for act in self.activations()
        ]

    def counts(self) -> dict[str, int]:
        """Activations per kind."""
        return {kind: len(acts) for kind, acts in sorted(self._by_kind.items())}

    def busiest(self, n: int | None = 10) -> list[dict[str, Any]]:
        """The ``n`` deepest non-empty mailboxes (kind, key, mailbox), deepest first (``None``: all)."""
        busy = [act for acts in self._by_kind.values() for act in acts.values() if act.mailbox]
        busy.sort(key=lambda act: len(act.mailbox or ()), reverse=True)
        return [{"kind": a.cls.kind, "key": a.key, "mailbox": len(a.mailbox or ())} for a in busy[:n]]


def _subclasses(cls: type[DomainActor]) -> list[type[DomainActor]]:
    out: list[type[DomainActor]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out

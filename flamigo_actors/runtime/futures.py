"""Futures of domain-actor calls, and ``get`` / ``wait`` over them (Ray style).

:class:`ActorFuture` is a light, gevent-native result holder: a handful of
slots, no lock, no queue; one blocked greenlet costs a list entry and a
timer. It resolves once (later attempts are ignored). Waiters wake in the
hub; done callbacks run there too, so they must not block.

Waiting inside a domain actor records who waits for whom: a wait that would
close a cycle (A waits for B, which waits for A; or an actor for itself)
fails at once with :class:`ActorDeadlock` naming the cycle instead of hanging.
Every wait has a time limit (the actor space's ``FLAMIGO_ACTOR_CALL_TIMEOUT``
unless given) after which it fails with :class:`ActorTimeout`.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import gevent
from gevent.event import Event
from greenlet import getcurrent
from greenlet import greenlet as RawGreenlet

from .actor_errors import ActorDeadlock, ActorTimeout

__all__ = ["ActorFuture", "RemoteCallFuture", "caller_chain", "current_activation", "get", "wait"]

_log = logging.getLogger("flamigo_actors.actors")

_PENDING, _OK, _FAILED = 0, 1, 2
_TIMED_OUT = object()
_MAX_CYCLE = 1000  # a longer wait chain is not followed further

DEFAULT_TIMEOUT = 10.0
"""Wait limit of a future created outside any actor space (``FLAMIGO_ACTOR_CALL_TIMEOUT``'s default)."""

_current: contextvars.ContextVar[Any] = contextvars.ContextVar("flamigo_domain_actor", default=None)


def current_activation() -> Any:
    """The domain-actor activation whose message this greenlet handles, if any."""
    return _current.get()


class ActorFuture:
    """The eventual reply of a call to a domain actor.

    ``target`` is the activation that will answer (for deadlock detection);
    ``timeout`` the default wait limit of :meth:`get`.
    """

    __slots__ = ("_state", "_value", "_waiters", "target", "timeout", "label")

    def __init__(self, target: Any = None, timeout: float = DEFAULT_TIMEOUT, label: str = "call") -> None:
        self._state = _PENDING
        self._value: Any = None
        self._waiters: list[Any] | None = None
        self.target = target
        self.timeout = timeout
        self.label = label

    def __repr__(self) -> str:
        state = ("pending", "done", "failed")[self._state]
        return f"<ActorFuture {self.label} {state}>"

    # -- reading ---------------------------------------------------------------

    def ready(self) -> bool:
        """Whether the reply (value or error) is there."""
        return self._state != _PENDING

    done = ready

    def get(self, timeout: float | None = None) -> Any:
        """The reply, waiting for it at most ``timeout`` seconds (default: the call timeout).

        Raises:
            the method's exception, :class:`ActorRestarted`, :class:`ActorUnavailable`,
            :class:`ActorDeadlock` (waiting would close a cycle), or
            :class:`ActorTimeout` (no reply in time; the call may still run later).
        """
        if self._state == _PENDING:
            self._block(self.timeout if timeout is None else timeout)
        if self._state == _OK:
            return self._value
        raise self._value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The call's error (``None`` when it succeeded), waiting like :meth:`get`."""
        if self._state == _PENDING:
            self._block(self.timeout if timeout is None else timeout)
        return self._value if self._state == _FAILED else None

    def _block(self, timeout: float) -> None:
        hub = gevent.get_hub()
        me = getcurrent()
        if me is hub:
            raise gevent.hub.BlockingSwitchOutError("ActorFuture.get() cannot wait in the gevent hub")
        waiter = _current.get()
        if waiter is not None and self.target is not None:
            _check_cycle(waiter, self.target)
            waiter.waiting_on = self.target
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = []
        waiters.append(me)
        timer = hub.loop.timer(max(0.0, timeout))
        timer.start(me.switch, _TIMED_OUT)
        try:
            while self._state == _PENDING:
                if hub.switch() is _TIMED_OUT and self._state == _PENDING:
                    raise ActorTimeout(
                        f"{self.label}: no reply within {timeout:g} s "
                        "(FLAMIGO_ACTOR_CALL_TIMEOUT or the timeout given); the call may still run"
                    )
        finally:
            timer.close()
            if waiter is not None:
                waiter.waiting_on = None
            try:
                waiters.remove(me)
            except ValueError:
                pass

    # -- settling --------------------------------------------------------------

    def set(self, value: Any = None) -> None:
        """Resolve with ``value`` (ignored if already settled)."""
        if self._state == _PENDING:
            self._state, self._value = _OK, value
            if self._waiters:
                gevent.get_hub().loop.run_callback(self._notify)

    def set_exception(self, error: BaseException) -> None:
        """Fail with ``error`` (ignored if already settled)."""
        if self._state == _PENDING:
            self._state, self._value = _FAILED, error
            if self._waiters:
                gevent.get_hub().loop.run_callback(self._notify)

    def add_done_callback(self, callback: Callable[[ActorFuture], Any]) -> None:
        """Call ``callback(future)`` once settled (in the hub: it must not block).

        Called soon (not inline) when the future is already settled.
        """
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = []
        waiters.append(callback)
        if self._state != _PENDING:
            gevent.get_hub().loop.run_callback(self._notify)

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if isinstance(waiter, RawGreenlet):
                waiter.switch(self)
            else:
                try:
                    waiter(self)
                except Exception:  # noqa: BLE001 - one callback's bug must not starve the others
                    _log.exception("done callback %r of %r failed", waiter, self)


class RemoteCallFuture(ActorFuture):
    """A future that knows which actors wait for it (``via``: ``kind:key`` names, the
    nearest last), possibly in other processes: a call it leads to carries them on, so
    that the owner of an actor among them refuses the call that would close the cycle.

    The future of a call served for another process also tells its carrier at once
    when it settles (:meth:`settle_with`), in the greenlet that settles it: the reply
    goes out without a hop through the hub."""

    __slots__ = ("via", "_settled")

    def __init__(self, target: Any, timeout: float, label: str, via: list[str] | None) -> None:
        super().__init__(target, timeout, label)
        self.via = via
        self._settled: Callable[[ActorFuture], Any] | None = None

    def settle_with(self, callback: Callable[[ActorFuture], Any]) -> None:
        """Call ``callback(future)`` right when it settles, in the settling greenlet (or the
        hub), or now if it is settled already. ``callback`` must not block; an exception it
        raises is logged (the settling code goes on). One such callback per future."""
        if self._state != _PENDING:
            self._run_settled(callback)
        else:
            self._settled = callback

    def set(self, value: Any = None) -> None:
        if self._state == _PENDING:
            ActorFuture.set(self, value)
            if self._settled is not None:
                self._run_settled(self._settled)

    def set_exception(self, error: BaseException) -> None:
        if self._state == _PENDING:
            ActorFuture.set_exception(self, error)
            if self._settled is not None:
                self._run_settled(self._settled)

    def _run_settled(self, callback: Callable[[ActorFuture], Any]) -> None:
        self._settled = None
        try:
            callback(self)
        except Exception:  # noqa: BLE001 - the carrier's bug must not break the actor that settled it
            _log.exception("settle callback %r of %r failed", callback, self)


def caller_chain(activation: Any) -> list[str]:
    """The actors waiting, through other processes, for the message ``activation`` handles now."""
    via = getattr(activation.serving, "via", None)
    return list(via) if via else []


def _check_cycle(waiter: Any, target: Any) -> None:
    # Follow who-waits-for-whom from the target; reaching the waiter closes a cycle.
    path = [waiter, target]
    node = target
    while node is not waiter:
        node = node.waiting_on
        if node is None or len(path) > _MAX_CYCLE:
            return
        path.append(node)
    stats = getattr(waiter.space, "stats", None)
    if stats is not None:
        stats.deadlocks += 1
    raise ActorDeadlock([act.name for act in path])


def get(futures: ActorFuture | Sequence[ActorFuture], timeout: float | None = None) -> Any:
    """The reply of one future, or the list of replies of several (like ``ray.get``).

    ``timeout`` bounds the whole wait (default: each future's call timeout).
    The first failed future's error is raised.
    """
    if isinstance(futures, ActorFuture):
        return futures.get(timeout)
    if timeout is None:
        return [future.get() for future in futures]
    deadline = time.monotonic() + timeout
    return [future.get(max(0.0, deadline - time.monotonic())) for future in futures]


def wait(
    futures: Sequence[ActorFuture], num_returns: int = 1, timeout: float | None = None
) -> tuple[list[ActorFuture], list[ActorFuture]]:
    """Wait until ``num_returns`` futures are settled or ``timeout`` passes (like ``ray.wait``).

    Returns ``(ready, not_ready)``, each in the order given. ``timeout=None``
    waits as long as it takes.
    """
    futures = list(futures)
    if num_returns < 0 or num_returns > len(futures):
        raise ValueError(f"num_returns must be between 0 and {len(futures)}, got {num_returns}")
    pending = [f for f in futures if not f.ready()]
    if len(futures) - len(pending) < num_returns:
        event = Event()
        count = [len(futures) - len(pending)]

        def settled(_: ActorFuture) -> None:
            count[0] += 1
            if count[0] >= num_returns:
                event.set()

        for future in pending:
            future.add_done_callback(settled)
        event.wait(timeout)
    ready = [f for f in futures if f.ready()]
    if len(ready) > num_returns:
        # like ray.wait: at most num_returns in ready; keep the rest for the next wait
        extra = {id(f) for f in ready[num_returns:]}
        ready = ready[:num_returns]
    else:
        extra = set()
    return ready, [f for f in futures if not f.ready() or id(f) in extra]

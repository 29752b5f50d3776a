"""One live activation of a domain actor: its mailbox and its turn-based loop.

Guarantees:

* **One message at a time**, in arrival order per sender: the mailbox is a
  FIFO drained by at most one pooled runner greenlet
  (:func:`~flamigo_actors.runtime.engine.wake`); an idle activation holds no
  greenlet, no timer and no buffer (the deque exists only while mail waits).
* **A method that raises** (asked) sends the exception to the caller; the
  actor keeps its state.
* **A crash** (an exception in a told message or in ``on_activate``, or
  ``self.crash()``) drops the instance: the next message re-activates it from
  the newest stored snapshot. The call in flight fails with
  :class:`ActorRestarted`. More than ``max_restarts`` crashes within
  ``restart_window`` keep the actor down for ``restart_window``: calls fail
  at once with :class:`ActorUnavailable`, and the asks queued then fail too.
* **Passivation** goes through the mailbox (a marker the space's sweeper
  posts), so it never races a message: the snapshot is stored first, and if
  mail arrived meanwhile the activation simply stays.
* A lost lease (another process owns the key) stops the activation at once,
  without saving: its queued asks fail with :class:`ActorUnavailable`.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections import deque
from typing import Any

from greenlet import greenlet as RawGreenlet

from .actor_errors import ActorOverloaded, ActorRestarted, ActorUnavailable
from .domain import ActorCrash, DomainActor
from .engine import wake
from .futures import ActorFuture, _current

__all__ = ["Activation", "PASSIVATE", "STOP"]

_log = logging.getLogger("flamigo_actors.actors")


class _Control:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


PASSIVATE = _Control("passivate if still idle")
STOP = _Control("stop (snapshot stored)")


class Activation:
    """The runtime record of one (kind, key) in this process (about 200 bytes when idle)."""

    __slots__ = (
        "space", "cls", "key", "instance", "mailbox", "_runner", "waiting_on", "lease",
        "owner", "crashes", "down_until", "activated_at", "last_at", "closed", "restarts", "serving",
    )

    def __init__(self, space: Any, cls: type[DomainActor], key: str) -> None:
        self.space = space
        self.cls = cls
        self.key = key
        self.instance: DomainActor | None = None
        self.mailbox: deque[Any] | None = None
        self._runner: RawGreenlet | None = None
        self.waiting_on: Activation | None = None  # the activation whose reply this one waits for
        self.lease: Any = None
        self.owner: str | None = None  # another node's id when that node owns the key
        self.crashes: list[float] | None = None
        self.down_until = self.activated_at = 0.0
        self.last_at = time.monotonic()
        self.closed, self.restarts = False, 0
        self.serving: ActorFuture | None = None  # the future of the message being handled

    @property
    def name(self) -> str:
        """``kind:key``."""
        return f"{self.cls.kind}:{self.key}"

    def __repr__(self) -> str:
        return f"<Activation {self.name}>"

    # -- sending (never yields) ------------------------------------------------

    def post(self, message: tuple[Any, ...]) -> None:
        """Queue ``(method, args, kwargs, future)``; raises at once when down or full."""
        if self.down_until:
            self._check_down()
        items = self.mailbox
        if items is None:
            items = self.mailbox = deque()
        elif len(items) >= self.space.mailbox_max:
            self.space.stats.overloads += 1
            raise ActorOverloaded(
                f"{self.name}: mailbox full ({len(items)} messages, FLAMIGO_ACTOR_MAILBOX_MAX); "
                "the message was not queued: slow down or spread the work over more keys"
            )
        items.append(message)
        if self._runner is None:
            wake(self)

    def post_control(self, marker: _Control) -> None:
        """Queue a passivate/stop marker (past the bound: it must always get in)."""
        items = self.mailbox
        if items is None:
            items = self.mailbox = deque()
        items.append(marker)
        if self._runner is None:
            wake(self)

    def _check_down(self) -> None:
        if time.monotonic() < self.down_until:
            raise ActorUnavailable(
                f"{self.name}: down after more than {self.cls.max_restarts} crashes within "
                f"{self.cls.restart_window:g} s; it takes calls again "
                f"{max(0.0, self.down_until - time.monotonic()):.1f} s from now"
            )
        self.down_until, self.crashes = 0.0, None

    # -- the loop (in a runner greenlet) --------------------------------------

    @property
    def _context(self) -> contextvars.Context:
        return contextvars.Context()  # a fresh one per run: an idle activation keeps none

    def _drain(self) -> None:
        try:
            _current.set(self)
            while not self.closed:
                items = self.mailbox
                if not items:
                    break
                message = items.popleft()
                if message.__class__ is tuple:
                    if self.owner is not None:
                        self.space._forward(self, message)
                    else:
                        self._handle(message)
                else:
                    self._control(message)
            if not self.mailbox:
                self.mailbox = None
            if self.owner is not None and not self.closed:
                # A forwarder lives for one burst: the next call asks who owns the key again.
                self.closed = True
                self.space._remove(self)
            elif not self.closed:
                self.space._touch(self)
        finally:
            self._runner = self.serving = None  # (an idle activation keeps no future)
        # (No yield between the last emptiness check and clearing _runner.)

    def _handle(self, message: tuple[Any, ...]) -> None:
        method, args, kwargs, future = message
        instance = self.instance
        if instance is None:
            if not self._activate(future):
                return
            instance = self.instance
            if instance is None:  # forwarded: another node owns the key
                self.space._forward(self, message)
                return
        self.serving = future
        try:
            result = getattr(instance, method)(*args, **kwargs)
        except ActorCrash as err:
            self._crash(err, future)
            return
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # noqa: BLE001 - SystemExit, gevent.Timeout: this actor's failure only
            if future is None:
                self._crash(err, None)
            else:
                future.set_exception(err)
            return
        if future is not None:
            future.set(result)

    def _activate(self, future: ActorFuture | None) -> bool:
        space = self.space
        kind, key = self.cls.kind, self.key
        if self.lease is None:
            try:
                got = space.placement.acquire(kind, key)
            except ActorUnavailable as err:  # e.g. Redis unreachable: this call fails, the next asks again
                if future is not None:
                    future.set_exception(err)
                return False
            if isinstance(got, str):
                if got == space.node_id:  # never forward to ourselves (a placement must re-grant its own)
                    error = ActorUnavailable(f"{self.name}: this node holds the lease but has no activation; retry")
                    if future is not None:
                        future.set_exception(error)
                    return False
                self.owner = got
                return True
            self.lease = got
        try:
            stored = space.store.load(kind, key)
        except ActorUnavailable as err:  # not a crash: the store is out of reach (the lease is kept)
            if future is not None:
                future.set_exception(err)
            return False
        try:
            instance = self.cls.__new__(self.cls)
            instance.key = key
            instance._activation = self
            self.cls.__init__(instance)
            self.instance = instance  # persist() works inside on_activate
            instance.on_activate(key, None if stored is None else stored[0])
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # noqa: BLE001 - a crash while activating
            self._crash(err, future)
            return False
        self.instance = instance
        self.activated_at = time.time()
        space.stats.activations += 1
        return True

    def _crash(self, err: BaseException, future: ActorFuture | None) -> None:
        cls, space = self.cls, self.space
        now = time.monotonic()
        self.instance = None
        crashes = [t for t in self.crashes or () if now - t < cls.restart_window]
        crashes.append(now)
        self.crashes = crashes
        if len(crashes) > cls.max_restarts:
            self.down_until = now + cls.restart_window
            space.stats.downs += 1
            _log.error(
                "domain actor %s crashed %d times within %g s: down for %g s (%r)",
                self.name, len(crashes), cls.restart_window, cls.restart_window, err,
            )
            if future is not None:
                future.set_exception(ActorUnavailable(f"{self.name}: crashed ({err!r}) and is now down"))
            self._fail_queued(ActorUnavailable, "is down after too many crashes")
            return
        self.restarts += 1
        space.stats.restarts += 1
        _log.warning("domain actor %s crashed (%r): restarting from its last snapshot", self.name, err)
        if future is not None:
            future.set_exception(
                ActorRestarted(f"{self.name}: crashed while handling this call ({err!r}); restarted from its last snapshot")
            )

    def _fail_queued(self, error: type[Exception], why: str) -> None:
        items, self.mailbox = self.mailbox, None
        for message in items or ():
            if message.__class__ is tuple and message[3] is not None:
                message[3].set_exception(error(f"{self.name}: {why}; call {message[0]!r} not run"))

    # -- persistence and passivation -------------------------------------------

    def persist(self) -> None:
        """Store the instance's snapshot now (called by ``DomainActor.persist``)."""
        instance = self.instance
        if instance is None or self.lease is None:
            raise RuntimeError(f"{self.name}: persist() outside an active actor")
        self.space.store.save(self.cls.kind, self.key, instance.snapshot(), self.lease.fence)

    def _control(self, marker: _Control) -> None:
        if marker is PASSIVATE:
            timeout = self.cls.idle_timeout
            if (
                self.mailbox
                or timeout is None
                or time.monotonic() - self.last_at < timeout
                or (self.down_until and time.monotonic() < self.down_until)
            ):
                return  # busy, touched since, or down (stays down): not idle
        self._passivate(stopping=marker is STOP)

    def _passivate(self, *, stopping: bool) -> None:
        instance = self.instance
        if instance is not None and self.lease is not None:
            try:
                self.persist()  # may yield (Redis): mail arriving meanwhile waits in the mailbox
            except Exception:  # noqa: BLE001
                _log.exception("domain actor %s: storing its snapshot failed", self.name)
                if not stopping:
                    return  # stay active rather than lose state
            if self.mailbox and not stopping:
                return  # mail arrived while saving: stay active
        self.closed = True
        self.instance = None
        self._fail_queued(ActorUnavailable, "stopped")
        self.space._remove(self)
        if instance is not None:  # counted as it leaves the space, before the release may yield
            self.space.stats.passivations += 1
        if self.lease is not None:
            lease, self.lease = self.lease, None
            try:
                self.space.placement.release(lease)
            except Exception:  # noqa: BLE001
                _log.exception("domain actor %s: releasing its lease failed", self.name)
        if instance is not None:
            try:
                instance.on_passivate()
            except Exception:  # noqa: BLE001
                _log.exception("domain actor %s: on_passivate failed", self.name)

    def lose(self) -> None:
        """The lease was lost (another process owns the key): stop now, without saving."""
        self.closed = True
        self.instance = None
        self.lease = None
        self._fail_queued(ActorUnavailable, "moved to another process (lease lost)")
        self.space._remove(self)

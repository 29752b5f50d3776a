"""The Pykka actor base every actor of this package builds on.

With gevent's monkey-patching, Pykka's :class:`pykka.ThreadingActor` already
runs each actor in a greenlet. This base keeps Pykka's actor loop, registry,
refs and futures, and swaps two internals for cheaper gevent-native ones:

* the inbox is a :class:`Mailbox`: a FIFO that wakes its actor (a patched
  ``queue.Queue`` pays for three condition variables per actor);
* the loop runs in a greenlet only while the mailbox has work: a ``put``
  into an idle actor's mailbox hands the actor to a *runner* greenlet, which
  handles its messages until the mailbox is empty, then goes back to a small
  pool of parked runners. Messages are still handled one at a time, in
  arrival order, by Pykka's own dispatch, and an actor never has two runners;
  what goes away is a greenlet parked on an empty queue for every idle actor
  (its saved stack, its Greenlet object and spawn tree: about 6 KiB per
  connection, and objects for the garbage collector to walk). Pooled runners
  make a wake-up cheaper than a queue's (no greenlet is created per burst).
  Each actor keeps one ``contextvars.Context`` that every run of its loop
  enters, so context variables set by ``on_start`` (the Flask app context,
  :func:`current_actor`) hold for its whole life, as with one greenlet.

A caller that has a message for an idle actor may also handle it itself,
in its own greenlet (:meth:`FlamigoActor.run_here`: the connection's reader
with one request in flight): it becomes the actor's runner for that one run,
so the order and the one-at-a-time rule are the mailbox's, and nothing is
handed to another greenlet. A libev prepare watcher tells the caller when
such a run yields (so the reader can hand reading to another greenlet).

The same pooled runners drain domain actors' activations (anything
:class:`Drainable`, handed over by :func:`wake`): an idle one of those holds
no greenlet either.

Both matter with ten thousand connection actors alive at once. Without
monkey-patching (``flask shell`` on an offline app) the stock threads are used.

The module also records which actor runs in the current greenlet, so that
``publish_sync`` can refuse to wait where waiting would deadlock.
"""

from __future__ import annotations

import contextvars
import gc
import logging
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import gevent
import pykka
from gevent import monkey
from greenlet import getcurrent
from greenlet import greenlet as RawGreenlet
from pykka._envelope import Envelope

__all__ = [
    "FlamigoActor",
    "Mailbox",
    "current_actor",
    "gevent_patched",
    "live_actor",
    "live_greenlets",
    "parked_runners",
    "wake",
]

_pykka_log = logging.getLogger("pykka")

_live: weakref.WeakValueDictionary[str, FlamigoActor] = weakref.WeakValueDictionary()

_current: contextvars.ContextVar[FlamigoActor | None] = contextvars.ContextVar(
    "flamigo_current_actor", default=None
)


def gevent_patched() -> bool:
    """Whether ``gevent.monkey.patch_all()`` (at least threading) is in effect."""
    return bool(monkey.is_module_patched("threading"))


def live_actor(urn: str) -> FlamigoActor | None:
    """The running :class:`FlamigoActor` with this URN (for inspection), if any."""
    return _live.get(urn)


def current_actor() -> FlamigoActor | None:
    """The actor whose mailbox is being processed in this greenlet, if any."""
    return _current.get()


_free_runners: list[RawGreenlet] = []
_MAX_FREE_RUNNERS = 128  # parked runners kept for reuse; a burst beyond makes new ones


def parked_runners() -> list[RawGreenlet]:
    """Runner greenlets parked in the pool, waiting for an actor with mail.

    They are reused, not leaked: at most ``_MAX_FREE_RUNNERS`` (128) stay
    parked. Leak checks count live greenlets *besides* these.
    """
    return list(_free_runners)


def live_greenlets() -> list[RawGreenlet]:
    """Greenlets alive in this thread (started, not finished), found through the GC,
    besides the parked runners (a bounded, reused pool): what leak checks count.

    Greenlets of other threads (gevent's resolver pool) are not ours to count.
    """
    gc.collect()
    main = _root(getcurrent())
    parked = {id(g) for g in _free_runners}
    return [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, RawGreenlet) and not obj.dead and _root(obj) is main and id(obj) not in parked
    ]


def _root(g: RawGreenlet) -> RawGreenlet:
    while g.parent is not None:
        g = g.parent
    return g


class Drainable(Protocol):
    """What a runner greenlet drains: a :class:`FlamigoActor`, or a domain actor's activation.

    ``_runner`` is the runner holding it (``None`` when idle); ``_drain``
    handles its mail until none is left and clears ``_runner`` without
    yielding after its last emptiness check; ``_context`` is entered around it.
    """

    _runner: RawGreenlet | None

    @property
    def _context(self) -> contextvars.Context | None: ...

    def _drain(self) -> None: ...


def wake(target: Drainable) -> None:
    """Hand ``target`` to a pooled runner greenlet unless one already has it.

    The same hand-over as :meth:`FlamigoActor._wake` (which keeps its own
    inlined copy: connection actors are the hot path).
    """
    if target._runner is None:
        hub = gevent.get_hub()
        runner = _free_runners.pop() if _free_runners else RawGreenlet(_runner_main, hub)
        target._runner = runner
        hub.loop.run_callback(runner.switch, target)


def _runner_main(actor: Drainable) -> None:
    # A runner greenlet: drain one actor's mailbox (or any Drainable), park in the pool, repeat.
    me = getcurrent()
    hub = me.parent
    while True:
        context = actor._context
        assert context is not None
        context.run(actor._drain)
        if len(_free_runners) >= _MAX_FREE_RUNNERS:
            return
        _free_runners.append(me)
        try:
            actor = hub.switch()  # parked until FlamigoActor._wake hands over the next actor
        except BaseException:  # noqa: BLE001 - thrown into a parked runner: drop it
            if me in _free_runners:
                _free_runners.remove(me)
            return


# Runs in a calling greenlet (run_here) that have not yielded yet, and the
# libev prepare watcher that tells them when they do: it runs when the loop
# is about to poll, i.e. only once some greenlet gave control back to the
# hub. A hub callback would do too, but a pending callback makes the loop
# poll without blocking once more per request, a system call each time.
_inline_runs: list[Callable[[], Any]] = []
_watch: Any = None


def _yield_watch() -> Any:
    global _watch
    loop = gevent.get_hub().loop
    if _watch is None or _watch.loop is not loop:  # (a hub destroyed and made anew)
        _watch = loop.prepare(ref=False)
    return _watch


def _inline_run_yielded() -> None:
    # Called from the hub: every run in progress has yielded (it was not its
    # caller that gave control back, or the loop would not be polling).
    _yield_watch().stop()
    runs = list(_inline_runs)
    _inline_runs.clear()
    for on_yield in runs:
        on_yield()


class Mailbox:
    """An actor's inbox under gevent: a FIFO whose ``put`` wakes the actor.

    Offers what Pykka and this package use of a queue: ``put``, ``get``
    (only on a non-empty mailbox: nobody blocks on it), ``empty``, ``qsize``.
    The deque is created on the first message and dropped when drained: an
    idle actor's mailbox holds no buffer.
    """

    __slots__ = ("_items", "_actor")

    def __init__(self, actor: FlamigoActor) -> None:
        self._items: deque[Any] | None = None
        self._actor = actor

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        items = self._items
        if items is None:
            items = self._items = deque()
        items.append(item)
        self._actor._wake()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        items = self._items
        if not items:
            raise IndexError("get() from an empty mailbox: check empty() first")
        item = items.popleft()
        if not items:
            self._items = None
        return item

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        items = self._items
        return len(items) if items is not None else 0

    __len__ = qsize


class FlamigoActor(pykka.ThreadingActor):
    """A Pykka actor whose mailbox is drained by a pooled greenlet while it has messages.

    Subclasses override :meth:`on_receive` (plain ``tell`` messages are the
    hot path: no proxy, no future) and may override :meth:`on_start` /
    :meth:`on_stop` (calling ``super()``).
    """

    kind: str = "actor"
    """A short label for inspection (``"connection"``, ``"bus"``, ``"listener"``)."""

    def __init__(self) -> None:
        self._patched = gevent_patched()
        self._runner: RawGreenlet | None = None  # the greenlet handling the mailbox, if any
        self._set_up = False
        self._context: contextvars.Context | None = None
        super().__init__()
        self.started_at = time.time()
        _live[self.actor_urn] = self

    def _create_actor_inbox(self) -> Any:  # type: ignore[override]
        if self._patched:
            return Mailbox(self)
        return super()._create_actor_inbox()

    def _start_actor_loop(self) -> None:
        if self._patched:
            self._context = contextvars.Context()
            self._wake()  # runs on_start, then whatever was told meanwhile
        else:
            super()._start_actor_loop()

    def idle(self) -> bool:
        """True when no greenlet is handling (or about to handle) this actor's mailbox.

        The actor is then waiting on an empty mailbox with nothing in progress:
        not starting, not in a handler (even one that yields), nothing queued.
        Always False without gevent (threads may preempt).
        """
        return self._runner is None and self._set_up and self._patched

    def _wake(self) -> None:
        # Called by Mailbox.put (and at start): hand this actor to a runner unless one has it.
        if self._runner is None:
            hub = gevent.get_hub()
            runner = _free_runners.pop() if _free_runners else RawGreenlet(_runner_main, hub)
            self._runner = runner
            hub.loop.run_callback(runner.switch, self)

    def run_here(self, message: Any, on_yield: Callable[[], Any]) -> bool:
        """Handle ``message`` in the calling greenlet if the actor is idle; False (nothing done) if not.

        The caller becomes the actor's runner for this one run: the message
        goes into the mailbox and the mailbox is drained here, in the
        actor's own context, exactly as a pooled runner would have drained
        it next (so everything told meanwhile, e.g. by a strategy that
        yields, is handled after it, in order, and :meth:`idle` is False
        throughout). What it saves is the hand-over: a hub callback and two
        greenlet switches per message. ``on_yield`` is called from the hub
        if the run yields (a strategy that blocks), so the caller can hand
        its own work (reading the socket) to another greenlet meanwhile.

        Raises:
            pykka.ActorDeadError: the actor has stopped (as ``tell`` would).
        """
        if self._runner is not None or not self._set_up or not self._patched:
            return False
        if self.actor_stopped.is_set():
            raise pykka.ActorDeadError(f"{self} not found")
        self._runner = getcurrent()  # claimed first: the put below wakes no runner
        self.actor_inbox.put(Envelope(message))
        watched = _inline_runs
        watched.append(on_yield)
        if len(watched) == 1:
            _yield_watch().start(_inline_run_yielded)
        try:
            self._context.run(self._drain)  # type: ignore[union-attr]
        finally:
            if watched:  # not yielded (the usual case): ours is the last one
                if watched[-1] is on_yield:
                    watched.pop()
                elif on_yield in watched:
                    watched.remove(on_yield)
                if not watched:
                    _yield_watch().stop()
        return True

    def _drain(self) -> None:
        # Pykka's actor loop, run until the mailbox is empty instead of forever.
        try:
            if not self._set_up:
                self._set_up = True
                self._actor_loop_setup()
            inbox = self.actor_inbox
            stopped = self.actor_stopped
            while not stopped.is_set() and not inbox.empty():
                self._handle_envelope(inbox.get())
            if stopped.is_set():
                self._actor_loop_teardown()
        finally:
            self._runner = None
        # (No yield between the empty check and clearing _runner: a later put
        # always finds _runner None and starts the next run.)

    def _handle_envelope(self, envelope: Any) -> None:
        # The body of pykka.Actor._actor_loop_running, for one envelope.
        try:
            response = self._handle_receive(envelope.message)
            if envelope.reply_to is not None:
                envelope.reply_to.set(response)
        except Exception:
            if envelope.reply_to is not None:
                _pykka_log.info(f"Exception returned from {self} to caller:", exc_info=sys.exc_info())
                envelope.reply_to.set_exception()
            else:
                self._handle_failure(*sys.exc_info())
                try:
                    self.on_failure(*sys.exc_info())
                except Exception:  # noqa: BLE001
                    self._handle_failure(*sys.exc_info())
        except BaseException:  # noqa: BLE001
            _pykka_log.debug(f"{sys.exc_info()[1]!r} in {self}. Stopping all actors.")
            self._stop()
            pykka.ActorRegistry.stop_all()

    def on_start(self) -> None:
        _current.set(self)

    def _handle_receive(self, message: Any) -> Any:
        try:
            return super()._handle_receive(message)
        except gevent.Timeout as err:
            # gevent.Timeout is a BaseException: escaping here would make Pykka
            # stop *every* actor in the process. Make it an ordinary failure.
            raise RuntimeError(f"unhandled gevent.Timeout in {self}: {err}") from err
        except KeyboardInterrupt:
            raise  # the operator's: Pykka stops every actor, as it should
        except BaseException as err:  # noqa: BLE001 - SystemExit, GreenletExit...
            # Likewise: one actor's failure, never the whole process's.
            raise RuntimeError(f"unhandled {type(err).__name__} in {self}: {err}") from err

    def mailbox_depth(self) -> int:
        """Messages waiting in the inbox (not counting the one being handled)."""
        return self.actor_inbox.qsize()  # type: ignore[attr-defined,no-any-return]

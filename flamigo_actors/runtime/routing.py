"""Routing one event, inside the bus actor: match, admit a ``publish_sync``, deliver.

The :class:`Router` holds no actor and no greenlet: the bus actor calls
:meth:`Router.route` for each :class:`InFlight` event, one at a time.

* **Match**: the topics are looked up in the subscription trie; a
  subscription's ``client_only`` / ``event_type`` filters apply.
* **Admit**: a ``publish_sync`` whose publisher is (directly, or through a
  chain of waits) one of the matched subscribers fails with
  :class:`DeadlockError` instead of waiting forever.
* **Deliver**: each subscriber's ``deliver`` is called in match order;
  refusals are counted in :class:`BusStats` and count as done for a waiter.

Crash bookkeeping: only when an exception interrupts the routing does an
:class:`InFlight` get a :class:`Progress` (its targets, the one being served:
found by identity, as targets are distinct), so the normal path pays nothing. After the bus actor restarts,
:meth:`Router.recover` decides what becomes of it: the delivery that crashed
is counted refused and never retried, the targets not yet served get the
event (none twice); a crash outside any delivery is retried once, and a
second one drops the event, counts it refused and fails its ``publish_sync``
at once with an error naming the crash.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from .subscriptions import Subscription, SubscriptionIndex, SyncWaiter
from ..core.errors import FlamigoError
from ..core.identity import Identity
from ..core.topics import Topic

__all__ = ["BusStats", "DeadlockError", "InFlight", "Progress", "Router"]

_log = logging.getLogger("flamigo_actors.bus")

MAX_ROUTE_CRASHES = 2
"""Crashes outside any delivery (matching an event) after which the event is dropped."""


class DeadlockError(FlamigoError):
    """``publish_sync`` would wait for itself (directly or through a chain of waits)."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"publish_sync: deadlock: {detail}; use publish() (asynchronous) here instead",
            status=500,
        )


@dataclass
class BusStats:
    """Counters of the bus (read them in the shell with ``stats()``)."""

    published: int = 0
    """Events published in this process."""
    delivered: int = 0
    """Deliveries put into a subscriber's mailbox."""
    refused: int = 0
    """Deliveries refused because a subscriber was over its bound or gone, or
    whose delivery crashed the bus actor; events dropped after repeated crashes."""
    listener_errors: int = 0
    """Listener calls that raised (logged with the event and topic)."""
    deadlocks: int = 0
    """``publish_sync`` calls refused because they would deadlock."""
    restarts: int = 0
    """Times the bus actor died and was restarted."""
    remote_received: int = 0
    """Events received from other processes through the backplane."""


class InFlight:
    """One event on its way through the bus actor.

    ``progress`` stays None unless a crash interrupted its routing (nothing
    more to set per publish on the hot path).
    """

    __slots__ = ("event", "topics", "frame", "identity", "waiter", "progress")

    def __init__(
        self,
        event: object,
        topics: tuple[Topic, ...],
        frame: bytes | None,
        identity: Identity,
        waiter: SyncWaiter | None,
    ) -> None:
        self.event = event
        self.topics = topics
        self.frame = frame
        self.identity = identity
        self.waiter = waiter
        self.progress: Progress | None = None


class Progress:
    """How far an interrupted event got: its targets (None: not matched yet), the
    index of the target being served when it crashed, and the crashes so far."""

    __slots__ = ("targets", "next", "delivering", "crashes")

    def __init__(self, targets: list[Subscription] | None, next: int, delivering: bool) -> None:
        self.targets = targets
        self.next = next
        self.delivering = delivering
        self.crashes = 0


class Router:
    """Routes events to the subscriptions of one bus (see the module docstring).

    Args:
        index: the bus's subscriptions and their trie.
        waiting: who waits for whom (``caller urn -> subscriber urns``), shared
            with the :class:`SyncWaiter` objects that end the waits.
        stats: the bus's counters.
    """

    __slots__ = ("index", "waiting", "stats")

    def __init__(self, index: SubscriptionIndex, waiting: dict[str, set[str]], stats: BusStats) -> None:
        self.index = index
        self.waiting = waiting
        self.stats = stats

    def route(self, message: InFlight) -> None:
        """Deliver ``message`` to its subscribers not yet served (all of them, the first time)."""
        waiter = message.waiter
        progress = message.progress
        targets = None if progress is None else progress.targets
        start = 0 if progress is None else progress.next
        if targets is None:
            targets = self.match(message)
            if waiter is not None and not self.admit_wait(waiter, targets):
                targets = []
        event, frame, identity = message.event, message.frame, message.identity
        stats = self.stats
        sub = None
        try:
            for sub in targets if start == 0 else targets[start:]:
                if sub.subscriber.deliver(event, frame, identity, waiter):
                    stats.delivered += 1
                else:
                    stats.refused += 1
                    if waiter is not None:
                        waiter.done()
        except BaseException:
            # Note where (for recover()); no per-target bookkeeping on the hot path.
            if progress is None:
                progress = message.progress = Progress(targets, 0, False)
            progress.targets = targets
            if sub is not None:
                progress.next = targets.index(sub)
                progress.delivering = True
            raise
        if waiter is not None and waiter.pending == 0:
            waiter.finish()

    def match(self, message: InFlight) -> list[Subscription]:
        """The subscriptions ``message`` goes to, each once, in subscription order."""
        matched: dict[Subscription, None] = {}
        trie = self.index.trie
        for topic in message.topics:
            trie.collect(topic.split("/"), matched)
        event, frame = message.event, message.frame
        return [
            sub
            for sub in matched
            if not (sub.client_only and frame is None)
            and (sub.event_type is None or isinstance(event, sub.event_type))
        ]

    def admit_wait(self, waiter: SyncWaiter, targets: list[Subscription]) -> bool:
        """Register a ``publish_sync`` wait for ``targets``; False (waiter failed) if it would deadlock."""
        owners = {sub.subscriber.urn for sub in targets}
        caller = waiter.caller
        if caller is not None:
            cycle = self.waits_on(owners, caller)
            if cycle is not None:
                self.stats.deadlocks += 1
                waiter.fail(DeadlockError(cycle))
                return False
            self.waiting[caller] = owners
        waiter.owners = owners
        waiter.pending = len(targets)
        return True

    def waits_on(self, owners: set[str], caller: str) -> str | None:
        """Why waiting for ``owners`` would deadlock ``caller``, or None if it would not."""
        if caller in owners:
            return f"the publishing actor {caller} is itself a subscriber of the event"
        seen: set[str] = set()
        stack = list(owners)
        while stack:
            urn = stack.pop()
            if urn in seen:
                continue
            seen.add(urn)
            waits_for = self.waiting.get(urn, ())
            if caller in waits_for:
                return f"subscriber {urn} is waiting for the publishing actor {caller}"
            stack.extend(waits_for)
        return None

    def recover(self, message: InFlight, why: str, route_again: Callable[[InFlight], None]) -> None:
        """After a crash while routing ``message``: route it on, or drop and count it.

        ``route_again`` puts it at the head of the restarted bus actor's mailbox.
        """
        name = type(message.event).__name__
        waiter = message.waiter
        progress = message.progress
        if progress is None:  # crashed before any delivery (matching it)
            progress = message.progress = Progress(None, 0, False)
        targets = progress.targets
        if targets is not None and progress.delivering:
            # That delivery crashed the actor: refused, never retried (it could crash again).
            culprit = targets[progress.next]
            progress.next += 1
            progress.delivering = False
            self.stats.refused += 1
            _log.error(
                "delivering %s to %s crashed the bus actor (%s): counted refused; routing it "
                "on to the %d subscribers not yet served",
                name, culprit.subscriber.describe(), why, len(targets) - progress.next,
            )
            if waiter is not None:
                waiter.done()
            route_again(message)
            return
        progress.crashes += 1
        if progress.crashes < MAX_ROUTE_CRASHES:
            _log.error("routing %s crashed the bus actor (%s): routing it again", name, why)
            route_again(message)
            return
        self.stats.refused += 1 if targets is None else max(1, len(targets) - progress.next)
        _log.error(
            "routing %s crashed the bus actor %d times (last: %s): dropped, counted refused",
            name, progress.crashes, why,
        )
        if waiter is not None:
            waiter.fail(FlamigoError(
                f"publish_sync: the bus actor crashed routing {name} ({why}); the event was "
                "dropped and counted refused",
                status=500,
            ))

"""Subscriptions: who receives which topics, and how a ``publish_sync`` waits for them.

The bus owns one :class:`SubscriptionIndex` (a topic trie plus every live
subscription); a :class:`Subscription` adds and removes its patterns there at
run time. A :class:`Subscriber` is where deliveries go (a connection, an
in-process listener): the bus only ever calls its three members below.

A :class:`SyncWaiter` counts the outstanding deliveries of one ``publish_sync``:
each subscriber calls :meth:`SyncWaiter.done` once it handled the event (a
refused delivery counts as done), and the publisher wakes when the count
reaches zero, or at once when :meth:`SyncWaiter.fail` is called.

This module knows nothing of the bus actor, connections or listeners, so
each of them may import it.
"""

from __future__ import annotations

import itertools
from typing import Any, Protocol

from gevent.event import AsyncResult

from ..core.identity import Identity
from ..core.topics import Topic, TopicTrie

__all__ = ["InterestWatch", "Subscriber", "Subscription", "SubscriptionIndex", "SyncWaiter"]


class Subscriber(Protocol):
    """Where a subscription delivers: a connection or an in-process listener."""

    @property
    def urn(self) -> str:
        """The Pykka actor URN that handles deliveries (for deadlock detection)."""
        ...

    def deliver(
        self, event: object, frame: bytes | None, identity: Identity, waiter: SyncWaiter | None
    ) -> bool:
        """Put one delivery in the subscriber's mailbox; False when refused.

        ``frame`` is the push frame of a client event (encoded once per publish).
        When ``waiter`` is given, call ``waiter.done()`` once the event is handled.
        """
        ...

    def describe(self) -> str:
        """A short label for inspection."""
        ...


class InterestWatch(Protocol):
    """Told of every pattern a subscription adds or removes (the interest-based backplane
    subscribes this process to what its subscribers match, ``backplane/interest.py``)."""

    def added(self, patterns: list[Topic]) -> None:
        """``patterns`` gained a subscriber (one entry per subscription); may wait briefly
        until events published elsewhere from now on are sure to arrive."""
        ...

    def removed(self, patterns: list[Topic]) -> None:
        """``patterns`` lost a subscriber (one entry per subscription); never waits."""
        ...


class SubscriptionIndex:
    """Every live subscription of one bus, and the topic trie that finds them by topic."""

    __slots__ = ("trie", "by_id", "interest")

    def __init__(self) -> None:
        self.trie: TopicTrie[Subscription] = TopicTrie()
        self.by_id: dict[int, Subscription] = {}
        self.interest: InterestWatch | None = None
        """Told of added and removed patterns (None: nobody asks, nothing is done)."""


_ids = itertools.count(1)


class Subscription:
    """Patterns a subscriber listens to; add and remove them at run time.

    Attributes:
        client_only: only client events are delivered.
        event_type: only events of this class (or a subclass) are delivered.
    """

    __slots__ = ("id", "index", "subscriber", "patterns", "client_only", "event_type", "cancelled")

    def __init__(
        self,
        index: SubscriptionIndex,
        subscriber: Subscriber,
        *,
        client_only: bool,
        event_type: type[Any] | None,
    ) -> None:
        self.id = next(_ids)
        self.index = index
        self.subscriber = subscriber
        self.patterns: set[Topic] = set()
        self.client_only = client_only
        self.event_type = event_type
        self.cancelled = False
        index.by_id[self.id] = self

    def __repr__(self) -> str:
        return f"<Subscription #{self.id} {self.subscriber.describe()} {sorted(self.patterns)}>"

    def add(self, *patterns: str) -> None:
        """Start receiving events matching ``patterns`` (``"*"`` for everything).

        Raises:
            TopicError: a pattern is malformed.
            RuntimeError: the subscription was cancelled.
        """
        if self.cancelled:
            raise RuntimeError(f"subscription #{self.id} was cancelled; subscribe again")
        added = []
        for pattern in [Topic(p) for p in patterns]:
            if pattern not in self.patterns:
                self.patterns.add(pattern)
                self.index.trie.add(pattern, self)
                added.append(pattern)
        interest = self.index.interest
        if interest is not None and added:
            interest.added(added)

    def remove(self, *patterns: str) -> None:
        """Stop receiving events matching ``patterns``; unknown ones are ignored."""
        removed = []
        for pattern in [Topic(p) for p in patterns]:
            if pattern in self.patterns:
                self.patterns.discard(pattern)
                self.index.trie.remove(pattern, self)
                removed.append(pattern)
        interest = self.index.interest
        if interest is not None and removed:
            interest.removed(removed)

    def cancel(self) -> None:
        """Remove every pattern and forget the subscription (idempotent)."""
        if self.cancelled:
            return
        self.remove(*self.patterns)
        self.cancelled = True
        self.index.by_id.pop(self.id, None)
        on_cancel = getattr(self.subscriber, "on_cancel", None)
        if on_cancel is not None:
            on_cancel()


class SyncWaiter:
    """Counts outstanding deliveries of one ``publish_sync`` and wakes the publisher.

    Args:
        waiting: the bus's record of who waits for whom (``caller urn -> owner urns``),
            for deadlock detection; the waiter removes its caller from it when it ends.
        caller: the URN of the publishing actor, or None outside any actor.
    """

    __slots__ = ("caller", "pending", "result", "owners", "waiting")

    def __init__(self, waiting: dict[str, set[str]], caller: str | None) -> None:
        self.waiting = waiting
        self.caller = caller
        self.pending = 0
        self.owners: set[str] = set()
        self.result: AsyncResult = AsyncResult()

    def done(self) -> None:
        """One subscriber finished handling the event (or refused it)."""
        self.pending -= 1
        if self.pending == 0:
            self.finish()

    def finish(self) -> None:
        """Wake the publisher: every delivery is accounted for (idempotent)."""
        if self.caller is not None:
            self.waiting.pop(self.caller, None)
        if not self.result.ready():
            self.result.set(None)

    def fail(self, error: BaseException) -> None:
        """Wake the publisher with ``error`` (unless it already woke)."""
        if self.caller is not None:
            self.waiting.pop(self.caller, None)
        if not self.result.ready():
            self.result.set_exception(error)

"""The realtime event bus: a blinker-backed Pykka actor routing events by topic.

Publishing sends the :data:`~flamigo_actors.runtime.signals.event_published` blinker
signal; the bus's receiver validates the event, encodes a client event's push
frame once, and tells the bus actor. The bus actor looks the topics up in a
:class:`~flamigo_actors.core.topics.TopicTrie` and tells each matching subscriber:

* a connection: the frame goes into that connection's mailbox, behind
  whatever it was already doing;
* an in-process listener: the event goes into the listener's own actor.

Promises:

* **Ordering**: events published from one greenlet reach each subscriber in
  publish order (one mailbox in, FIFO mailboxes out).
* **No silent loss**: a subscriber over its bound is not skipped quietly: a
  connection is disconnected (1013), a listener's delivery is refused; both
  are counted in :attr:`Bus.stats` and logged.
* **Routing cost** grows with the topic's depth and the number of matches,
  not with the number of subscriptions.
* ``publish_sync`` raises :class:`DeadlockError` instead of hanging when the
  waiting actor is (directly or through other waits) a subscriber.
* The bus actor is supervised: if it dies it is restarted with its
  subscriptions and its unprocessed mailbox; :attr:`Bus.stats` counts restarts.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import gevent
from gevent.event import AsyncResult

from .engine import FlamigoActor, current_actor
from ..core.errors import FlamigoError
from ..core.events import topics_of
from ..core.identity import BackendIdentity, Identity
from ..websocket.protocol import encode_push
from .signals import event_published
from ..core.topics import Topic, TopicTrie
from ..websocket.transport import text_frame

if TYPE_CHECKING:
    from ..integration.extension import Flamigo

__all__ = ["Bus", "BusStats", "DeadlockError", "Subscriber", "Subscription"]

_log = logging.getLogger("flamigo_actors.bus")

BACKEND = BackendIdentity("bus")


class DeadlockError(FlamigoError):
    """``publish_sync`` would wait for itself (directly or through a chain of waits)."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"publish_sync: deadlock: {detail}; use publish() (asynchronous) here instead",
            status=500,
        )


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


_ids = itertools.count(1)


class Subscription:
    """Patterns a subscriber listens to; add and remove them at run time.

    Attributes:
        client_only: only client events are delivered.
        event_type: only events of this class (or a subclass) are delivered.
    """

    __slots__ = ("id", "bus", "subscriber", "patterns", "client_only", "event_type", "cancelled")

    def __init__(
        self,
        bus: Bus,
        subscriber: Subscriber,
        *,
        client_only: bool,
        event_type: type[Any] | None,
    ) -> None:
        self.id = next(_ids)
        self.bus = bus
        self.subscriber = subscriber
        self.patterns: set[Topic] = set()
        self.client_only = client_only
        self.event_type = event_type
        self.cancelled = False

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
        for pattern in [Topic(p) for p in patterns]:
            if pattern not in self.patterns:
                self.patterns.add(pattern)
                self.bus._trie.add(pattern, self)

    def remove(self, *patterns: str) -> None:
        """Stop receiving events matching ``patterns``; unknown ones are ignored."""
        for pattern in [Topic(p) for p in patterns]:
            if pattern in self.patterns:
                self.patterns.discard(pattern)
                self.bus._trie.remove(pattern, self)

    def cancel(self) -> None:
        """Remove every pattern and forget the subscription (idempotent)."""
        if self.cancelled:
            return
        self.remove(*self.patterns)
        self.cancelled = True
        self.bus._subscriptions.pop(self.id, None)
        on_cancel = getattr(self.subscriber, "on_cancel", None)
        if on_cancel is not None:
            on_cancel()


class SyncWaiter:
    """Counts outstanding deliveries of one ``publish_sync`` and wakes the publisher."""

    __slots__ = ("caller", "pending", "result", "owners", "bus")

    def __init__(self, bus: Bus, caller: str | None) -> None:
        self.bus = bus
        self.caller = caller
        self.pending = 0
        self.owners: set[str] = set()
        self.result: AsyncResult = AsyncResult()

    def done(self) -> None:
        """One subscriber finished handling the event."""
        self.pending -= 1
        if self.pending == 0:
            self._finish()

    def _finish(self) -> None:
        if self.caller is not None:
            self.bus._waiting.pop(self.caller, None)
        if not self.result.ready():
            self.result.set(None)

    def fail(self, error: BaseException) -> None:
        if self.caller is not None:
            self.bus._waiting.pop(self.caller, None)
        if not self.result.ready():
            self.result.set_exception(error)


@dataclass
class BusStats:
    """Counters of the bus (read them in the shell with ``stats()``)."""

    published: int = 0
    """Events published in this process."""
    delivered: int = 0
    """Deliveries put into a subscriber's mailbox."""
    refused: int = 0
    """Deliveries refused because a subscriber was over its bound or gone."""
    listener_errors: int = 0
    """Listener calls that raised (logged with the event and topic)."""
    deadlocks: int = 0
    """``publish_sync`` calls refused because they would deadlock."""
    restarts: int = 0
    """Times the bus actor died and was restarted."""
    remote_received: int = 0
    """Events received from other processes through the backplane."""


class _Publish:
    __slots__ = ("event", "topics", "frame", "identity", "waiter")

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


class BusActor(FlamigoActor):
    """The Pykka actor that routes every published event of one application."""

    kind = "bus"

    def __init__(self, bus: Bus) -> None:
        super().__init__()
        self.bus = bus

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Publish):
            self.bus._route(message)
        else:
            return super().on_receive(message)
        return None

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self.bus._restart(self, f"{exception_type.__name__}: {exception_value}")

    def on_stop(self) -> None:
        if not self.bus._closing:
            self.bus._restart(self, "stopped while the application was running")


class Bus:
    """The application's event bus (one per :class:`~flamigo_actors.Flamigo`).

    Publish with :meth:`publish` / :meth:`publish_sync` (or the module-level
    :func:`flamigo_actors.publish` inside a request), subscribe in-process
    listeners with :meth:`subscribe`. Connections subscribe through their
    identity (``ctx.identity.subscribe("rooms/lobby")``).
    """

    def __init__(self, flamigo: Flamigo) -> None:
        self.flamigo = flamigo
        self.stats = BusStats()
        self._trie: TopicTrie[Subscription] = TopicTrie()
        self._subscriptions: dict[int, Subscription] = {}
        self._waiting: dict[str, set[str]] = {}
        self._ref: Any = None
        self._closing = False
        self._app: Any = None
        self.backplane: Any = None
        """Set by the Redis backplane (:class:`~flamigo_actors.backplane.streams.RedisBackplane`):
        an object with ``send(event, identity)``, which must never block."""

    # -- lifecycle -----------------------------------------------------------

    def bind(self, app: Any) -> None:
        """Connect to the app's :data:`event_published` signal (done by ``init_app``)."""
        self._app = app
        event_published.connect(self._on_signal, sender=app, weak=False)

    def start(self) -> None:
        """Start the bus actor now rather than on the first publish."""
        self._actor()

    def _actor(self) -> Any:
        ref = self._ref
        if ref is None or not ref.is_alive():
            if self._closing:
                raise RuntimeError("the bus is closed: the application shut down")
            self._ref = ref = BusActor.start(self)
        return ref

    def _restart(self, dead: BusActor, why: str) -> None:
        self.stats.restarts += 1
        _log.error("bus actor died (%s); restarting it with its subscriptions", why)
        self._ref = BusActor.start(self)
        # Hand over what the dead actor had not processed yet: nothing is lost.
        inbox = dead.actor_inbox
        while not inbox.empty():
            self._ref.actor_inbox.put(inbox.get())

    def close(self, timeout: float = 5.0) -> None:
        """Process what was published so far, then stop the bus actor."""
        if self._app is not None:
            event_published.disconnect(self._on_signal, sender=self._app)
        self._closing = True
        ref = self._ref
        if ref is not None and ref.is_alive():
            ref.stop(block=True, timeout=timeout)
        subscribers = [sub.subscriber for sub in self._subscriptions.values()]
        for subscription in list(self._subscriptions.values()):
            subscription.cancel()
        for subscriber in subscribers:  # listeners finish what they have, then stop
            join = getattr(subscriber, "join", None)
            if join is not None:
                join(timeout)

    # -- publishing ----------------------------------------------------------

    def publish(self, event: object, identity: Identity | None = None) -> None:
        """Publish ``event``; returns at once.

        Raises:
            TypeError: not an event (no topics) or a client payload that is not JSON.
            TopicError: a malformed topic.
        """
        event_published.send(self._app, event=event, identity=identity)

    def publish_sync(
        self, event: object, identity: Identity | None = None, timeout: float | None = None
    ) -> None:
        """Publish ``event`` and wait until every matching subscriber handled it.

        Handled means: a listener returned (or raised: its error is logged, not
        raised here), a connection queued the push for its socket.

        Raises:
            DeadlockError: the calling actor is a matching subscriber, or one of
                them is already waiting for the caller.
            FlamigoError: status 504 when ``timeout`` (default
                ``FLAMIGO_PUBLISH_SYNC_TIMEOUT``) passes first.
        """
        actor = current_actor()
        if isinstance(actor, BusActor):
            raise DeadlockError("called from inside the bus actor")
        waiter = SyncWaiter(self, actor.actor_urn if actor is not None else None)
        event_published.send(self._app, event=event, identity=identity, waiter=waiter)
        limit = timeout if timeout is not None else self.flamigo.settings.publish_sync_timeout
        try:
            waiter.result.get(timeout=limit)
        except gevent.Timeout:
            waiter.fail(FlamigoError("publish_sync: timeout", public="timed out", status=504))
            waiter.result.get()

    def _on_signal(
        self,
        sender: Any,
        *,
        event: object,
        identity: Identity | None = None,
        waiter: SyncWaiter | None = None,
        **_: Any,
    ) -> None:
        topics = topics_of(event)
        frame = push_frame_of(event)
        if identity is None:
            identity = BACKEND
        self.stats.published += 1
        self._actor().tell(_Publish(event, topics, frame, identity, waiter))
        if self.backplane is not None:  # publish_sync waits for local subscribers only
            self.backplane.send(event, identity)

    def deliver_remote(self, event: object, identity: Identity) -> None:
        """Route an event that another process published (called by the backplane)."""
        self.stats.remote_received += 1
        self._actor().tell(_Publish(event, topics_of(event), push_frame_of(event), identity, None))

    # -- routing (runs in the bus actor) ---------------------------------------

    def _route(self, message: _Publish) -> None:
        matched: dict[Subscription, None] = {}
        trie = self._trie
        for topic in message.topics:
            trie.collect(topic.split("/"), matched)
        event, frame, identity, waiter = message.event, message.frame, message.identity, message.waiter
        targets = [
            sub
            for sub in matched
            if not (sub.client_only and frame is None)
            and (sub.event_type is None or isinstance(event, sub.event_type))
        ]
        if waiter is not None and not self._admit_wait(waiter, targets):
            return
        stats = self.stats
        for sub in targets:
            if sub.subscriber.deliver(event, frame, identity, waiter):
                stats.delivered += 1
            else:
                stats.refused += 1
                if waiter is not None:
                    waiter.done()
        if waiter is not None and waiter.pending == 0:
            waiter._finish()

    def _admit_wait(self, waiter: SyncWaiter, targets: list[Subscription]) -> bool:
        owners = {sub.subscriber.urn for sub in targets}
        caller = waiter.caller
        if caller is not None:
            cycle = self._waits_on(owners, caller)
            if cycle is not None:
                self.stats.deadlocks += 1
                waiter.fail(DeadlockError(cycle))
                return False
            self._waiting[caller] = owners
        waiter.owners = owners
        waiter.pending = len(targets)
        return True

    def _waits_on(self, owners: set[str], caller: str) -> str | None:
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
            waits_for = self._waiting.get(urn, ())
            if caller in waits_for:
                return f"subscriber {urn} is waiting for the publishing actor {caller}"
            stack.extend(waits_for)
        return None

    # -- subscribing ---------------------------------------------------------

    def subscription(
        self,
        subscriber: Subscriber,
        *,
        client_only: bool = False,
        event_type: type[Any] | None = None,
    ) -> Subscription:
        """A new, empty subscription for ``subscriber``; add patterns to it."""
        subscription = Subscription(self, subscriber, client_only=client_only, event_type=event_type)
        self._subscriptions[subscription.id] = subscription
        return subscription

    def subscribe(
        self,
        listener: Callable[..., Any],
        *patterns: str,
        event_type: type[Any] | None = None,
        client_only: bool = False,
        name: str | None = None,
    ) -> Subscription:
        """Subscribe an in-process listener ``listener(ctx, event)`` to ``patterns``.

        The listener runs in an actor of its own: its deliveries are handled
        one at a time in publish order, and a slow or failing listener does
        not hold up any other subscriber. Its exceptions are logged with the
        event and topics. ``ctx.identity`` is the publisher's identity.

        Args:
            listener: a function or bound method taking ``(ctx, event)``.
            patterns: topic patterns (``"rooms/*"``; ``"*"`` for every event).
            event_type: deliver only events of this class.
            client_only: deliver only client events.
            name: label for inspection (defaults to the function's name).
        """
        from .listener import ListenerSubscriber

        subscriber = ListenerSubscriber(self, listener, name=name)
        subscription = self.subscription(subscriber, client_only=client_only, event_type=event_type)
        subscriber.subscription = subscription
        if patterns:
            subscription.add(*patterns)
        return subscription

    # -- inspection ----------------------------------------------------------

    def subscriptions(self) -> list[Subscription]:
        """Every live subscription."""
        return list(self._subscriptions.values())

    def patterns(self) -> list[tuple[str, list[str]]]:
        """Every pattern in the trie with the labels of its subscribers."""
        return sorted(
            (pattern, [sub.subscriber.describe() for sub in subs])
            for pattern, subs in self._trie.patterns()
        )

    def index_size(self) -> tuple[int, int]:
        """(pattern entries, trie nodes): both 0 when nothing is subscribed."""
        return len(self._trie), self._trie.node_count()

    def mailbox_depth(self) -> int:
        """Events waiting in the bus actor's mailbox."""
        ref = self._ref
        return ref.actor_inbox.qsize() if ref is not None and ref.is_alive() else 0

    def actor_urn(self) -> str | None:
        """The URN of the running bus actor (changes when it is restarted)."""
        ref = self._ref
        return ref.actor_urn if ref is not None else None


def push_frame_of(event: object) -> bytes | None:
    """The WebSocket frame pushing a client event, encoded once; None for other events.

    Raises:
        TypeError: the client message is malformed or its payload is not JSON-serialisable.
    """
    message = getattr(event, "client_message", None)
    if message is None:
        return None
    try:
        client_topic, payload = message
    except (TypeError, ValueError):
        raise TypeError(
            f"{type(event).__name__}.client_message must be a (client_topic, payload) pair"
        ) from None
    if not isinstance(client_topic, str) or not client_topic:
        raise TypeError(f"{type(event).__name__}: the client topic must be a non-empty string")
    try:
        return text_frame(encode_push(client_topic, payload))
    except TypeError as err:
        raise TypeError(
            f"{type(event).__name__}: client payload is not JSON-serialisable: {err}"
        ) from None


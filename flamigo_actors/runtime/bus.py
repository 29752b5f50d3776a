"""The realtime event bus: a blinker-backed Pykka actor routing events by topic.

Publishing sends the :data:`~flamigo_actors.runtime.signals.event_published`
blinker signal (``flamigo_actors.publish()``, ``flamigo.publish()``,
``ctx.publish()`` and :meth:`Bus.publish` all do just that); the bus's
receiver validates the event, encodes a client event's push frame once
through the encoder it was given, and tells the bus actor. The bus actor
looks the topics up in a :class:`~flamigo_actors.core.topics.TopicTrie` and
tells each matching subscriber:

* a connection: the frame goes into that connection's mailbox, behind
  whatever it was already doing;
* an in-process listener: the event goes into the listener's own actor.

Events from other processes arrive through the same signal, sent by the
backplane with ``remote=True``: observers of the signal see them, the bus
routes them to local subscribers only and never sends them back out.

Promises:

* **Ordering**: events published from one greenlet reach each subscriber in
  publish order (one mailbox in, FIFO mailboxes out).
* **No silent loss**: a subscriber over its bound is not skipped quietly: a
  connection is disconnected (1013), a listener's delivery is refused; both
  are counted in :attr:`Bus.stats` and logged. A publish that no live bus
  receives (closed, never bound) raises
  :class:`~flamigo_actors.runtime.signals.NoBusError`.
* **Routing cost** grows with the topic's depth and the number of matches,
  not with the number of subscriptions.
* ``publish_sync`` raises :class:`DeadlockError` instead of hanging when the
  waiting actor is (directly or through other waits) a subscriber.
* The bus actor is supervised: if it dies it is restarted with its
  subscriptions and its unprocessed mailbox; :attr:`Bus.stats` counts restarts.
  The event it was routing is routed on first: a delivery that crashed the
  actor is counted refused (never retried) and the subscribers not yet served
  get the event, none twice. A crash while matching is retried once; a second
  one drops the event, counts it refused, and a ``publish_sync`` waiting on it
  fails at once with an error naming the crash.

Routing itself (match, deadlock check, delivery, crash bookkeeping) is in
``runtime/routing.py``; subscriptions and ``publish_sync`` waiters in
``runtime/subscriptions.py``.

The bus never sees the wire format (it imports nothing from ``websocket/``):
the extension gives it the push encoder, and the backplane registers itself
as :attr:`Bus.backplane`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import gevent

from .engine import FlamigoActor, current_actor
from .listener import ListenerSubscriber
from .routing import BusStats, DeadlockError, InFlight, Router
from .recovery import TAKEN
from .signals import ROUTED, NoBusError, event_published, send_event
from .subscriptions import InterestWatch, Subscriber, Subscription, SubscriptionIndex, SyncWaiter
from ..core.errors import FlamigoError
from ..core.events import push_frame_of, topics_of
from ..core.identity import BackendIdentity, Identity
from ..core.settings import Settings
from ..core.topics import Topic

__all__ = [
    "BackplaneLink",
    "Bus",
    "BusHost",
    "BusStats",
    "DeadlockError",
    "PushEncoder",
    "push_frame_of",
    "Subscriber",
    "Subscription",
    "SyncWaiter",
]

_log = logging.getLogger("flamigo_actors.bus")

BACKEND = BackendIdentity("bus")

PushEncoder = Callable[[str, Any], bytes]
"""Encodes a client event's push, ``(client_topic, payload) -> frame``; raises TypeError
when the payload is not JSON. Called once per publish, whatever the number of recipients."""


class BusHost(Protocol):
    """What the bus needs from the application's extension."""

    @property
    def app(self) -> Any:
        """The Flask app (listeners push its app context), or None before ``init_app``."""
        ...

    @property
    def settings(self) -> Settings:
        """The ``FLAMIGO_*`` settings (read when used: ``init_app`` replaces them)."""
        ...


class BackplaneLink(Protocol):
    """The backplane, registered on the bus (see ``backplane/streams.py``).

    The bus only calls :meth:`send`; the extension closes the backplane at
    shutdown and inspection reads its snapshot through :attr:`Bus.backplane`.
    """

    def send(self, event: object, identity: Identity) -> None:
        """Queue a locally published event for the other processes; must never block."""
        ...

    def close(self, timeout: float = ...) -> None:
        """Flush what it can, then stop (idempotent)."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """State and counters as plain data (for inspection)."""
        ...


class BusActor(FlamigoActor):
    """The Pykka actor that routes every published event of one application."""

    kind = "bus"

    def __init__(self, bus: Bus) -> None:
        super().__init__()
        self.bus = bus
        self.routing: InFlight | None = None
        """The event being routed (what a crash would interrupt)."""

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, InFlight):
            self.routing = message
            self.bus._route(message)
            self.routing = None  # not in a finally: on_failure needs it after a crash
        else:
            return super().on_receive(message)
        return None

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        crashed, self.routing = self.routing, None
        self.bus._restart(self, f"{exception_type.__name__}: {exception_value}", crashed)

    def on_stop(self) -> None:
        if not self.bus._closing:
            self.bus._restart(self, "stopped while the application was running", None)


class Bus:
    """The application's event bus (one per :class:`~flamigo_actors.Flamigo`).

    Publish with :meth:`publish` / :meth:`publish_sync` (or :func:`flamigo_actors.publish` inside a
    request), subscribe in-process listeners with :meth:`subscribe`. Connections subscribe through
    their identity (``ctx.identity.subscribe("rooms/lobby")``).

    Args:
        flamigo: the extension (what the bus reads of it: :class:`BusHost`).
        encoder: builds a client event's push frame (see :data:`PushEncoder`).
    """

    def __init__(self, flamigo: BusHost, *, encoder: PushEncoder) -> None:
        self.flamigo = flamigo
        self.stats = BusStats()
        self._encode = encoder
        self._index = SubscriptionIndex()
        self._trie = self._index.trie
        self._subscriptions = self._index.by_id
        self._waiting: dict[str, set[str]] = {}
        self._router = Router(self._index, self._waiting, self.stats)
        self._route = self._router.route  # what the bus actor calls (tests replace it to crash it)
        self._ref: Any = None
        self._closing = False
        self._app: Any = None
        self.backplane: BackplaneLink | None = None
        """Set by the backplane when it starts (``backplane/streams.py``)."""
        self.recovery: Any = None
        """Set once a topic is made recoverable (``runtime/recovery.py``): only then
        does a publish look its topics up in the recoverable patterns."""

    @property
    def encoder(self) -> PushEncoder:
        """What builds a client event's push frame (replaceable: output checks wrap it)."""
        return self._encode

    @encoder.setter
    def encoder(self, encoder: PushEncoder) -> None:
        self._encode = encoder

    # -- lifecycle -----------------------------------------------------------

    def bind(self, app: Any) -> None:
        """Connect to the app's :data:`event_published` signal (done by ``init_app``)."""
        self._app = app
        event_published.connect(self._on_signal, sender=app, weak=False)

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` was called (publishes now raise ``NoBusError``)."""
        return self._closing

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

    def _restart(self, dead: BusActor, why: str, crashed: InFlight | None) -> None:
        self.stats.restarts += 1
        _log.error("bus actor died (%s); restarting it with its subscriptions", why)
        self._ref = BusActor.start(self)
        if crashed is not None:  # first, before what was queued behind it
            self._router.recover(crashed, why, self._ref.tell)
        # Hand over what the dead actor had not processed yet: nothing is lost.
        inbox = dead.actor_inbox
        while not inbox.empty():
            self._ref.actor_inbox.put(inbox.get())

    def close(self, timeout: float = 5.0) -> None:
        """Process what was published so far, then stop the bus actor.

        Publishing afterwards raises :class:`~flamigo_actors.runtime.signals.NoBusError`.
        """
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
            NoBusError: the bus is closed, or not bound to an app yet.
            TypeError: not an event (no topics) or a client payload that is not JSON.
            TopicError: a malformed topic.
        """
        # send_event(), inlined: this is the hot path of every publish.
        for _receiver, value in event_published.send(self._app, event=event, identity=identity):
            if value is ROUTED:
                return
        raise NoBusError(event, self._app)

    def publish_sync(
        self, event: object, identity: Identity | None = None, timeout: float | None = None
    ) -> None:
        """Publish ``event`` and wait until every matching subscriber handled it.

        Handled means: a listener returned (or raised: its error is logged, not
        raised here), a connection queued the push for its socket, or the
        delivery was refused (counted in :attr:`stats`).

        Raises:
            DeadlockError: the calling actor is a matching subscriber, or one of
                them is already waiting for the caller.
            NoBusError: the bus is closed, or not bound to an app yet.
            FlamigoError: status 504 when ``timeout`` (default
                ``FLAMIGO_PUBLISH_SYNC_TIMEOUT``) passes first; status 500 at once
                when the bus actor crashed routing the event and dropped it.
        """
        actor = current_actor()
        if isinstance(actor, BusActor):
            raise DeadlockError("called from inside the bus actor")
        waiter = SyncWaiter(self._waiting, actor.actor_urn if actor is not None else None)
        send_event(self._app, event, identity, waiter)
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
        remote: bool = False,
        position: Any = None,
        **_: Any,
    ) -> Any:
        # The bus's only entrance: every publish, local or remote, is a send of the signal.
        topics = topics_of(event)
        if identity is None:
            identity = BACKEND
        recovery = self.recovery  # None until a topic is made recoverable
        if recovery is None or getattr(event, "client_message", None) is None:
            frame = push_frame_of(event, self._encode)
        elif (frame := recovery.frame_of(event, topics, identity, waiter, position)) is TAKEN:
            self.stats.published += 1  # it comes back, positioned, through the backplane
            return ROUTED
        if remote:
            self.stats.remote_received += 1
        else:
            self.stats.published += 1
        self._actor().tell(InFlight(event, topics, frame, identity, waiter))
        if not remote and self.backplane is not None:  # publish_sync waits for local subscribers only
            self.backplane.send(event, identity)
        return ROUTED

    def deliver_remote(self, event: object, identity: Identity, position: Any = None) -> None:
        """Route an event that another process published (called by the backplane).

        It goes through :data:`event_published` with ``remote=True``, so the
        signal's observers see it too; it is routed to local subscribers only.
        ``position``: a recoverable topic's event (see ``runtime/recovery.py``).

        Raises:
            NoBusError: the bus is closed.
        """
        if position is not None and self.recovery is not None:
            self.recovery.deliver_positioned(self, event, identity, position)
            return
        send_event(self._app, event, identity, remote=True)

    def route(self, message: InFlight) -> None:
        """Hand an event over to the bus actor (recovery routes this process's own events back)."""
        self._actor().tell(message)

    # -- subscribing ---------------------------------------------------------

    def subscription(
        self,
        subscriber: Subscriber,
        *,
        client_only: bool = False,
        event_type: type[Any] | None = None,
    ) -> Subscription:
        """A new, empty subscription for ``subscriber``; add patterns to it."""
        return Subscription(self._index, subscriber, client_only=client_only, event_type=event_type)

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
        return sorted((pattern, [sub.subscriber.describe() for sub in subs]) for pattern, subs in self._trie.patterns())

    def subscribers(self, topic: str) -> list[Subscriber]:
        """The subscribers whose patterns match the concrete ``topic`` (e.g. a topic's members)."""
        return [sub.subscriber for sub in self._trie.match(topic) if not sub.cancelled]

    def watch_interest(self, watch: InterestWatch | None) -> list[Topic]:
        """Tell ``watch`` of patterns added and removed (None: stop); returns those subscribed, one per subscription."""
        self._index.interest = watch
        return [Topic(pattern) for pattern, subs in self._trie.patterns() for _ in subs]

    def index_size(self) -> tuple[int, int]:
        """(pattern entries, trie nodes): both 0 when nothing is subscribed."""
        return len(self._trie), self._trie.node_count()

    def mailbox_depth(self) -> int:
        """Events waiting in the bus actor's mailbox."""
        return self._ref.actor_inbox.qsize() if self._ref is not None and self._ref.is_alive() else 0

    def actor_urn(self) -> str | None:
        """The URN of the running bus actor (changes when it is restarted)."""
        ref = self._ref
        return ref.actor_urn if ref is not None else None

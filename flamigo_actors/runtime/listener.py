"""In-process listeners: each one runs in a Pykka actor of its own.

A listener's deliveries are handled one at a time, in publish order, and in
isolation: a listener that is slow or raises holds up nobody else. Its
exceptions are logged with the event and its topics and counted. Beyond
``FLAMIGO_LISTENER_MAX_PENDING`` waiting events, further deliveries to that
listener are refused, logged and counted (a listener cannot be disconnected
the way a slow client is).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .context import Context
from .engine import FlamigoActor

if TYPE_CHECKING:
    from .subscriptions import Subscription, SyncWaiter
    from ..core.identity import Identity

__all__ = ["ListenerActor", "ListenerBus", "ListenerSubscriber"]


class _ErrorCounter(Protocol):
    listener_errors: int


class ListenerBus(Protocol):
    """What a listener needs from its bus (the :class:`~flamigo_actors.Bus` provides it)."""

    @property
    def flamigo(self) -> Any:
        """The application's extension: its ``app``, its ``settings``; the listener's context host."""
        ...

    @property
    def stats(self) -> _ErrorCounter:
        """Where listener failures are counted (``listener_errors``)."""
        ...

_log = logging.getLogger("flamigo_actors.listener")


class _Delivery:
    __slots__ = ("event", "identity", "waiter")

    def __init__(self, event: object, identity: Identity, waiter: SyncWaiter | None) -> None:
        self.event = event
        self.identity = identity
        self.waiter = waiter


class ListenerActor(FlamigoActor):
    """Runs one listener function for each delivered event."""

    kind = "listener"

    def __init__(self, subscriber: ListenerSubscriber) -> None:
        super().__init__()
        self.subscriber = subscriber
        self._app_context: Any = None

    def on_start(self) -> None:
        super().on_start()
        app = self.subscriber.bus.flamigo.app
        if app is not None:
            # Listeners may use current_app, like views do.
            self._app_context = app.app_context()
            self._app_context.push()

    def on_stop(self) -> None:
        if self._app_context is not None:
            self._app_context.pop()
            self._app_context = None

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, _Delivery):
            return super().on_receive(message)
        subscriber = self.subscriber
        subscriber.pending -= 1
        try:
            ctx = Context(subscriber.bus.flamigo, message.identity)
            subscriber.listener(ctx, message.event)
        except (Exception, SystemExit):  # a listener's sys.exit() is its own failure
            subscriber.bus.stats.listener_errors += 1
            _log.exception(
                "listener %s failed on %s (topics %s)",
                subscriber.name,
                type(message.event).__name__,
                ", ".join(getattr(message.event, "topics", ())),
            )
        finally:
            subscriber.handled += 1
            if message.waiter is not None:
                message.waiter.done()
        return None


class ListenerSubscriber:
    """The bus-side handle of a listener: bounds its mailbox and starts its actor."""

    def __init__(self, bus: ListenerBus, listener: Callable[..., Any], *, name: str | None) -> None:
        if not callable(listener):
            raise TypeError(f"a listener must be callable with (ctx, event), got {listener!r}")
        self.bus = bus
        self.listener = listener
        self.name = name or getattr(listener, "__qualname__", repr(listener))
        self.pending = 0
        self.handled = 0
        self.subscription: Subscription | None = None
        self._ref = ListenerActor.start(self)

    @property
    def urn(self) -> str:
        return self._ref.actor_urn  # type: ignore[no-any-return]

    def describe(self) -> str:
        return f"listener:{self.name}"

    def deliver(
        self, event: object, frame: bytes | None, identity: Identity, waiter: SyncWaiter | None
    ) -> bool:
        limit = self.bus.flamigo.settings.listener_max_pending
        if self.pending >= limit or not self._ref.is_alive():
            _log.error(
                "listener %s refused %s: %d events already waiting (limit %d)",
                self.name, type(event).__name__, self.pending, limit,
            )
            return False
        self.pending += 1
        self._ref.tell(_Delivery(event, identity, waiter))
        return True

    def mailbox_depth(self) -> int:
        return self.pending

    def join(self, timeout: float | None = None) -> None:
        """Wait until the listener's actor has stopped."""
        self._ref.actor_stopped.wait(timeout)

    def on_cancel(self) -> None:
        """The subscription was cancelled: let the actor finish what it has, then stop."""
        if self._ref.is_alive():
            self._ref.stop(block=False)

"""The context every strategy and event listener receives.

A context says *who* runs the work (the identity), carries a logger bound to
that identity and an optional deadline, and gives access to the application's
bus and strategy registry, so a strategy can call another strategy or publish
an event without importing globals.

The context reaches the application through a :class:`ContextHost` (in
practice the :class:`~flamigo_actors.Flamigo` extension), a small Protocol
defined here so that this module imports nothing above the runtime layer.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from ..core.errors import FlamigoError
from ..core.identity import Identity, User, describe, user_of

__all__ = ["Context", "ContextHost"]

_log = logging.getLogger("flamigo_actors")


class ContextHost(Protocol):
    """What a context needs from the application (the Flamigo extension provides it)."""

    @property
    def bus(self) -> Any:
        """The application's event bus (``publish``, ``publish_sync``, ``subscribe``)."""

    @property
    def strategies(self) -> Any:
        """The application's strategy registry."""

    @property
    def settings(self) -> Any:
        """The application's settings."""

    @property
    def actors(self) -> Any:
        """The application's domain actors (an ``ActorSpace``)."""

    def call(
        self,
        name: str,
        payload: Any = None,
        *,
        identity: Identity | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> Any:
        """Run strategy ``name`` inline and return its result."""


class _IdentityLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['identity']}] {msg}", kwargs  # type: ignore[index]


class Context:
    """What a strategy or listener knows about the work it does.

    Attributes:
        identity: who triggered the work (backend, websocket connection, custom).
        flamigo: the application's :class:`ContextHost` (the
            :class:`~flamigo_actors.Flamigo` extension).
        deadline: ``time.monotonic()`` value after which the work should give
            up, or ``None`` for no limit.
    """

    __slots__ = ("identity", "flamigo", "deadline", "_logger")

    def __init__(
        self,
        flamigo: ContextHost,
        identity: Identity,
        *,
        deadline: float | None = None,
    ) -> None:
        self.identity = identity
        self.flamigo = flamigo
        self.deadline = deadline
        self._logger: logging.LoggerAdapter | None = None  # type: ignore[type-arg]

    @property
    def actor(self) -> Identity:
        """The Go original's name for :attr:`identity`."""
        return self.identity

    @property
    def user(self) -> User | None:
        """The authenticated user of the identity, if it has one."""
        return user_of(self.identity)

    @property
    def logger(self) -> logging.LoggerAdapter:  # type: ignore[type-arg]
        """A logger whose records start with the identity (``[websocket(c-3, user=42)]``)."""
        if self._logger is None:
            self._logger = _IdentityLogger(_log, {"identity": describe(self.identity)})
        return self._logger

    @property
    def bus(self) -> Any:
        """The application's event bus."""
        return self.flamigo.bus

    @property
    def strategies(self) -> Any:
        """The application's strategy registry."""
        return self.flamigo.strategies

    @property
    def actors(self) -> Any:
        """The application's domain actors: ``ctx.actors.get(Room, "lobby").ask("post", ...)``."""
        return self.flamigo.actors

    @property
    def presence(self) -> Any:
        """Presence as this identity (a ``PresenceHandle``): ``ctx.presence.track("rooms/lobby",
        user.username, {"name": ...})``; a connection's entries are untracked when it ends."""
        return self.flamigo.presence.for_identity(self.identity)  # type: ignore[attr-defined]

    def remaining(self) -> float | None:
        """Seconds left before the deadline (never negative), or ``None`` without one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def check_deadline(self) -> None:
        """Raise a 504 error when the deadline has passed; long loops call this."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise FlamigoError("deadline exceeded", public="timed out", status=504)

    def call(self, name: str, payload: Any = None) -> Any:
        """Run another strategy as the same identity, inline, and return its result.

        The call runs in the current greenlet (never through a mailbox), so a
        strategy calling a strategy cannot deadlock. The deadline carries over.

        Raises:
            FlamigoError: the called strategy's error, wrapped with its name.
        """
        return self.flamigo.call(name, payload, identity=self.identity, deadline=self.deadline)

    def publish(self, event: object) -> None:
        """Publish ``event`` on the bus as this context's identity; returns at once."""
        self.flamigo.bus.publish(event, identity=self.identity)

    def publish_sync(self, event: object, timeout: float | None = None) -> None:
        """Publish and wait until every matching subscriber has handled ``event``.

        Raises:
            DeadlockError: waiting here would deadlock (e.g. this actor is a subscriber).
        """
        self.flamigo.bus.publish_sync(event, identity=self.identity, timeout=timeout)

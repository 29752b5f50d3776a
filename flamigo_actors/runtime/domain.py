"""The base class of application-defined domain actors (a room, a document, a quota).

A subclass names its ``kind`` and defines methods; callers reach an instance
through an :class:`~flamigo_actors.runtime.actor_space.ActorRef`
(``flamigo.actors.get(Room, "lobby")``) and never touch it directly. The
runtime guarantees one message at a time per activation; see
:mod:`flamigo_actors.runtime.activation` for crashes, restarts, persistence
and passivation.
"""

from __future__ import annotations

from typing import Any, ClassVar, NoReturn

__all__ = ["ActorCrash", "DomainActor", "check_method"]


class ActorCrash(BaseException):
    """Raised by :meth:`DomainActor.crash`: a BaseException, so ``except Exception`` in app code cannot swallow it."""


class DomainActor:
    """Subclass, set ``kind``, add methods; activated on its first message.

    Class attributes:
        kind: the type's name (refs, inspection, Redis keys). Required.
        idle_timeout: seconds without a message before passivation (``None``: never).
        max_restarts: crashes tolerated per ``restart_window`` before the actor stays down.
        restart_window: seconds over which crashes are counted, and how long it stays down.

    Hooks (all optional): :meth:`on_activate`, :meth:`snapshot`, :meth:`on_passivate`.
    Methods whose names start with ``_`` cannot be called through a ref.
    """

    __slots__ = ("key", "_activation")  # subclasses get a (compact, managed) __dict__

    kind: ClassVar[str] = ""
    idle_timeout: ClassVar[float | None] = 300.0
    max_restarts: ClassVar[int] = 3
    restart_window: ClassVar[float] = 60.0

    _activation: Any
    key: str

    # -- hooks -----------------------------------------------------------------

    def on_activate(self, key: str, state: Any) -> None:
        """Called before the first message of an activation: ``state`` is the newest
        stored snapshot, or ``None`` the first time. Raising here counts as a crash."""

    def snapshot(self) -> Any:
        """The JSON-able state to store (on ``persist()``, on passivation, on stop). Default: ``None``."""
        return None

    def on_passivate(self) -> None:
        """Called once the snapshot is stored and the activation is about to go (idle or stop)."""

    # -- services --------------------------------------------------------------

    def persist(self) -> None:
        """Store :meth:`snapshot` now, before returning (in Redis too when configured).

        A reply sent after ``persist()`` never describes state that a crash could lose.

        Raises:
            TypeError: the snapshot is not JSON-able.
            StaleOwner: this process lost the actor's lease (another owns it now).
        """
        self._activation.persist()

    def publish(self, event: object) -> None:
        """Publish ``event`` on the bus of the app this actor lives in (as ``flamigo.publish``).

        Raises:
            RuntimeError: the actor space belongs to no app (an ``ActorSpace()`` made by
                hand without ``publisher=``): use ``flamigo.actors``.
            NoBusError: the app's bus is closed (after shutdown).
        """
        publish = self._activation.space.publisher
        if publish is None:
            raise RuntimeError(
                f"{self.kind}:{self.key}: this actor space has no publisher; actors of "
                "flamigo.actors publish on their app's bus"
            )
        publish(event)

    def crash(self, reason: str = "crash requested") -> NoReturn:
        """Crash this actor now (for tests): it restarts from its last snapshot."""
        raise ActorCrash(f"{self.kind}:{self.key}: {reason}")

    @property
    def actors(self) -> Any:
        """The :class:`ActorSpace` this actor lives in (to reach other actors)."""
        return self._activation.space

    @property
    def ref(self) -> Any:
        """An :class:`ActorRef` to this actor (to hand to others)."""
        return self._activation.space.get(type(self), self.key)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind}:{getattr(self, 'key', '?')}>"


_NOT_CALLABLE = frozenset({"on_activate", "on_passivate", "persist", "crash"})


def check_method(cls: type[DomainActor], method: str) -> None:
    """Raise AttributeError unless ``method`` is a public method callers may call on ``cls``."""
    if method.startswith("_") or not callable(getattr(cls, method, None)) or method in _NOT_CALLABLE:
        raise AttributeError(
            f"domain actor {cls.__name__} (kind {cls.kind!r}) has no callable method {method!r}: "
            "call a public method the class defines"
        )

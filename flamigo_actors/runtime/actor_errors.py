"""The errors of domain actors (all :class:`~flamigo_actors.FlamigoError` layers with a status).

Each says what happened to which actor and what the caller can do; a
strategy that lets one escape answers the client with its status and
public message.
"""

from __future__ import annotations

from ..core.errors import FlamigoError

__all__ = [
    "ActorDeadlock",
    "ActorError",
    "ActorOverloaded",
    "ActorRestarted",
    "ActorTimeout",
    "ActorUnavailable",
    "StaleOwner",
]


class ActorError(FlamigoError):
    """Base of the domain-actor errors (catch this to catch them all)."""

    default_status = 500
    default_public = "actor error"

    def __init__(self, message: str, *, public: str | None = None, status: int | None = None) -> None:
        super().__init__(
            message,
            public=self.default_public if public is None else public,
            status=self.default_status if status is None else status,
        )


class ActorRestarted(ActorError):
    """The call was in flight when the actor crashed; the actor restarted from its last snapshot.

    Whether the call's effects survived depends on whether the method had
    called ``persist()``: retry only if the call is idempotent.
    """

    default_status = 503
    default_public = "service restarted: try again"


class ActorUnavailable(ActorError):
    """The actor cannot take calls now: down after too many crashes, its owner
    process unreachable, or the actor space stopped. Retry later."""

    default_status = 503
    default_public = "service unavailable: try again later"


class ActorTimeout(ActorUnavailable):
    """No reply within the call's timeout (``FLAMIGO_ACTOR_CALL_TIMEOUT`` by default).

    The call may still run later (calls are at-most-once, never retried).
    """

    default_status = 504
    default_public = "timed out"


class ActorDeadlock(ActorError):
    """Waiting for this reply would deadlock: the ask cycle is named in the message.

    Use ``tell`` (no reply) on one edge of the cycle, or restructure so that
    actors do not wait for each other in a circle.
    """

    default_status = 500

    def __init__(self, cycle: list[str]) -> None:
        self.cycle = cycle
        super().__init__(
            "actor ask deadlock: " + " -> ".join(cycle)
            + " (each waits for the next); use tell() on one edge or avoid waiting in a cycle"
        )


class ActorOverloaded(ActorError):
    """The actor's mailbox is full (``FLAMIGO_ACTOR_MAILBOX_MAX``); the message was not queued."""

    default_status = 503
    default_public = "service overloaded: slow down"


class StaleOwner(ActorError):
    """A write by a process that no longer holds the actor's lease was refused (internal)."""

    default_status = 503
    default_public = "service unavailable: try again"

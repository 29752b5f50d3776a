"""Declared client events: the pushes a WebSocket client may receive, and their payloads.

A client event is what the bus pushes to subscribed connections as
``{"topic": "chat:message", "payload": {...}}``. Declaring one gives it a
place in the contract (the AsyncAPI document, the JSON Schemas, the
TypeScript client) and, when the application checks its output (debug mode,
tests), a payload check on every push::

    strategies = Registry("app")
    strategies.client_event(
        "chat:message", ChatMessagePayload, topics=("rooms/*",),
        summary="A message said in a room.",
    )

Declaring changes nothing at run time in production: the bus pushes what it
is given, declared or not. An undeclared client topic still works; the
contract lists it as untyped once seen (see :meth:`ClientEvents.observe`).

Failures: a malformed client topic or bus pattern, or a second declaration of
the same client topic (without ``replace=True``), raise ``ValueError`` at
declaration time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..core.topics import Topic, TopicError
from .conformance import check_value

__all__ = ["ClientEventSpec", "ClientEvents"]

# No "::" (the reply of a strategy carries its name as topic) and not "error" (the error reply).
_CLIENT_TOPIC = re.compile(r"^[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)*$")
_RESERVED = frozenset({"error"})


@dataclass(frozen=True)
class ClientEventSpec:
    """One declared client event.

    Attributes:
        topic: the client topic (``chat:message``).
        payload: the payload's model (pydantic model, dataclass, TypedDict or
            type); ``None`` declares the event untyped (any JSON).
        bus_topics: the bus topic patterns whose events carry it (``rooms/*``).
        summary: one line saying what it means.
    """

    topic: str
    payload: Any = None
    bus_topics: tuple[str, ...] = ()
    summary: str = ""

    @property
    def typed(self) -> bool:
        """Whether the payload has a declared model."""
        return self.payload is not None


class ClientEvents:
    """The client events of one application, by client topic."""

    def __init__(self) -> None:
        self._events: dict[str, ClientEventSpec] = {}
        self._observed: dict[str, None] = {}

    def __contains__(self, topic: object) -> bool:
        return topic in self._events

    def __iter__(self) -> Iterator[ClientEventSpec]:
        return iter(self._events.values())

    def __len__(self) -> int:
        return len(self._events)

    def get(self, topic: str) -> ClientEventSpec | None:
        """The declaration of ``topic``, or ``None``."""
        return self._events.get(topic)

    def declare(
        self,
        topic: str,
        payload: Any = None,
        *,
        topics: Iterable[str] = (),
        summary: str | None = None,
        replace: bool = False,
    ) -> ClientEventSpec:
        """Declare the client event ``topic`` with its payload model and bus patterns.

        Raises:
            ValueError: the client topic or a bus pattern is malformed, or the
                topic is declared already (unless ``replace=True``).
        """
        if not isinstance(topic, str) or not _CLIENT_TOPIC.match(topic) or topic in _RESERVED:
            raise ValueError(
                f"invalid client topic {topic!r}: use segments of letters, digits, '_', '.' or '-' "
                "joined by ':' (e.g. 'chat:message'); 'error' and names with '::' are reserved"
            )
        if topic in self._events and not replace:
            raise ValueError(f"client event {topic!r} is already declared; pick another topic")
        if isinstance(topics, str):
            topics = (topics,)
        try:
            patterns = tuple(str(Topic(pattern)) for pattern in topics)
        except TopicError as err:
            raise ValueError(f"client event {topic!r}: bad bus topic pattern: {err}") from None
        doc = summary if summary is not None else (getattr(payload, "__doc__", None) or "")
        spec = ClientEventSpec(topic, payload, patterns, doc.strip().split("\n")[0])
        self._events[topic] = spec
        return spec

    def include(self, other: ClientEvents) -> None:
        """Add every declaration of ``other``; a topic declared in both is refused."""
        for spec in other:
            self.declare(spec.topic, spec.payload, topics=spec.bus_topics, summary=spec.summary)

    def check(self, topic: str, payload: Any) -> None:
        """Validate a push of ``topic`` against its declared model (output checks only).

        An undeclared topic is remembered (:meth:`observed`) so the served
        contract can list it as untyped.

        Raises:
            ContractViolation: the payload does not fit the declared model.
        """
        spec = self._events.get(topic)
        if spec is None:
            self._observed[topic] = None
        elif spec.payload is not None:
            check_value(spec.payload, payload, f"push {topic}")

    def observed(self) -> list[str]:
        """Undeclared client topics pushed while output checks were on, in order first seen."""
        return [topic for topic in self._observed if topic not in self._events]

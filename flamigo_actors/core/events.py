"""Events: what the bus carries.

An event is any object with a ``topics`` attribute (one or more topics). A
*client event* also has a ``client_message``: the ``(client topic, payload)``
pair pushed to WebSocket clients, e.g. ``("chat:message", {...})``.

Events that must cross processes (the Redis backplane) are registered with
:func:`serializable`; they travel as ``{"type": <name>, "data": <fields>}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar, runtime_checkable

from .topics import Topic

__all__ = [
    "ClientEvent",
    "ClientMessage",
    "ClientMessageEvent",
    "Connected",
    "Disconnected",
    "Event",
    "EventEncodingError",
    "UserAuthenticated",
    "decode_event",
    "encode_event",
    "event_type_name",
    "push_frame_of",
    "serializable",
    "topics_of",
]


@runtime_checkable
class Event(Protocol):
    """Anything published on the bus: it provides its topics."""

    @property
    def topics(self) -> Sequence[str]: ...


class ClientMessage(NamedTuple):
    """What a client event pushes to WebSocket clients."""

    topic: str
    """The client topic, e.g. ``chat:message`` (not a bus topic)."""
    payload: Any
    """Any JSON-serialisable value."""


@runtime_checkable
class ClientEvent(Event, Protocol):
    """An event that WebSocket clients receive as ``{"topic": ..., "payload": ...}``."""

    @property
    def client_message(self) -> ClientMessage: ...


def topics_of(event: object) -> tuple[Topic, ...]:
    """The validated topics of ``event``.

    Raises:
        TypeError: the object has no ``topics`` or they are empty.
        TopicError: a topic is malformed.
    """
    topics = getattr(event, "topics", None)
    if topics is None:
        raise TypeError(
            f"{type(event).__name__} is not an event: give it a 'topics' attribute "
            "(a sequence of topic strings such as 'rooms/lobby')"
        )
    if isinstance(topics, str):
        topics = (topics,)
    result = tuple(Topic(t) for t in topics)
    if not result:
        raise TypeError(f"{type(event).__name__} has no topics: an event needs at least one")
    return result


class EventEncodingError(TypeError):
    """An event cannot be encoded for, or decoded from, another process."""


_TYPES: dict[str, type[Any]] = {}
_NAMES: dict[type[Any], str] = {}

E = TypeVar("E")


def serializable(name: str) -> Callable[[type[E]], type[E]]:
    """Register an event class so it can cross processes under ``name``.

    The class must be a dataclass whose fields are JSON values, or define
    ``to_json(self) -> dict`` and ``from_json(cls, data) -> instance``::

        @serializable("chat.message")
        @dataclass(frozen=True)
        class ChatMessage:
            room: str
            text: str
            ...
    """

    def register(cls: type[E]) -> type[E]:
        if name in _TYPES and _TYPES[name] is not cls:
            raise ValueError(
                f"event type name {name!r} is already registered for {_TYPES[name].__qualname__}"
            )
        if not dataclasses.is_dataclass(cls) and not (
            hasattr(cls, "to_json") and hasattr(cls, "from_json")
        ):
            raise TypeError(
                f"{cls.__qualname__} cannot be serializable: make it a dataclass "
                "or give it to_json()/from_json()"
            )
        _TYPES[name] = cls
        _NAMES[cls] = name
        return cls

    return register


def event_type_name(event: object) -> str | None:
    """The registered name of ``event``'s class, or ``None`` if not serializable."""
    return _NAMES.get(type(event))


def encode_event(event: object) -> dict[str, Any]:
    """``{"type": name, "data": fields}`` for a serializable event.

    Raises:
        EventEncodingError: the event's class was not registered with :func:`serializable`.
    """
    name = _NAMES.get(type(event))
    if name is None:
        raise EventEncodingError(
            f"{type(event).__qualname__} is not registered as serializable: decorate it "
            "with @flamigo_actors.serializable('name') to let it cross processes"
        )
    to_json = getattr(event, "to_json", None)
    data = to_json() if to_json is not None else dataclasses.asdict(event)  # type: ignore[call-overload]
    return {"type": name, "data": data}


def decode_event(document: dict[str, Any]) -> object:
    """Rebuild an event from :func:`encode_event`'s output.

    Raises:
        EventEncodingError: unknown type name or fields that do not fit the class.
    """
    try:
        name = document["type"]
        data = document["data"]
    except (KeyError, TypeError) as err:
        raise EventEncodingError(f"not an encoded event: {document!r:.200}") from err
    cls = _TYPES.get(name)
    if cls is None:
        raise EventEncodingError(
            f"unknown event type {name!r}: register it with @serializable({name!r}) "
            "in every process"
        )
    from_json = getattr(cls, "from_json", None)
    try:
        if from_json is not None:
            return from_json(data)
        return cls(**data)
    except Exception as err:  # the class's own constructor said no
        raise EventEncodingError(f"cannot rebuild {name!r} from {data!r:.200}: {err}") from err


@serializable("flamigo.client-message")
@dataclass(frozen=True)
class ClientMessageEvent:
    """The ready-made client event: push ``payload`` under ``client_topic``.

    Example::

        publish(ClientMessageEvent(topics=("rooms/lobby",),
                                   client_topic="chat:message",
                                   payload={"text": "hi"}))
    """

    topics: tuple[str, ...]
    client_topic: str
    payload: Any

    def __post_init__(self) -> None:
        if isinstance(self.topics, str):
            object.__setattr__(self, "topics", (self.topics,))
        elif not isinstance(self.topics, tuple):
            object.__setattr__(self, "topics", tuple(self.topics))

    @property
    def client_message(self) -> ClientMessage:
        return ClientMessage(self.client_topic, self.payload)


@serializable("flamigo.connected")
@dataclass(frozen=True)
class Connected:
    """A WebSocket connection was accepted. Topic ``connection/connected/<conn_id>``."""

    conn_id: str
    remote_addr: str

    @property
    def topics(self) -> tuple[str, ...]:
        return (f"connection/connected/{self.conn_id}",)


@serializable("flamigo.disconnected")
@dataclass(frozen=True)
class Disconnected:
    """A WebSocket connection ended, however it ended.

    Topics ``connection/disconnected/<conn_id>`` and, when a user had
    authenticated, ``user/disconnected/<user_id>``.

    Attributes:
        code: the WebSocket close code (1000 normal, 1001 going away, 1006 dropped...).
        reason: why it ended, in words (``"client closed"``, ``"ping timeout"``...).
    """

    conn_id: str
    user_id: str | None
    code: int
    reason: str

    @property
    def topics(self) -> tuple[str, ...]:
        topics = [f"connection/disconnected/{self.conn_id}"]
        if self.user_id is not None:
            topics.append(f"user/disconnected/{self.user_id}")
        return tuple(topics)


@serializable("flamigo.user-authenticated")
@dataclass(frozen=True)
class UserAuthenticated:
    """A connection authenticated as a user. Topic ``auth/authenticated/<user_id>``."""

    user_id: str
    username: str
    conn_id: str

    @property
    def topics(self) -> tuple[str, ...]:
        return (f"auth/authenticated/{self.user_id}",)


def push_frame_of(event: object, encode: Callable[[str, Any], Any]) -> Any:
    """The push frame of a client event, built by ``encode`` once; None for other events.

    ``encode(client_topic, payload)`` is the bus's push encoder (or the recovery's,
    for a recoverable topic); what it returns is passed through.

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
        return encode(client_topic, payload)
    except TypeError as err:
        raise TypeError(
            f"{type(event).__name__}: client payload is not JSON-serialisable: {err}"
        ) from None

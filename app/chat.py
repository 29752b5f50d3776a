"""The chat strategies clients call; each room is a :class:`~app.room.Room` domain actor."""

from __future__ import annotations

from typing import Any

import gevent
from pydantic import BaseModel, Field

from flamigo_actors import (
    ActorFuture,
    FlamigoError,
    Registry,
    StrategyContext,
    WebsocketClient,
    is_authenticated,
    is_websocket,
    require_identity,
)

from .room import ChatMessage, Room, room_topic, say  # noqa: F401 - the event's home is room.py

ROOM = r"^[A-Za-z0-9_-]{1,64}$"
MAX_TEXT = 2000
DEFAULT_ROOMS = ("lobby", "random")

strategies = Registry("app")


class RoomPayload(BaseModel):
    room: str = Field(pattern=ROOM)


class SendPayload(BaseModel):
    room: str = Field(pattern=ROOM)
    text: str = Field(min_length=1, max_length=MAX_TEXT)


class SlowPayload(BaseModel):
    seconds: float = Field(ge=0, le=60)


class MemberMeta(BaseModel):
    """One connection of a room member (presence): the user's id and the entry's unique ``ref``."""

    id: str
    ref: str


Members = dict[str, list[MemberMeta]]
"""Who is in a room: each username with one meta per connection."""


class StreamPosition(BaseModel):
    """Where a client stands in a recoverable topic's stream (connection-state recovery)."""

    stream: str
    offset: int
    epoch: str


class RoomReply(BaseModel):
    """Reply of ``app::rooms:join`` (with the room's ``members``, and ``pos`` for a client that
    opted in to recovery) and ``app::rooms:leave``."""

    room: str
    joined: bool
    members: Members | None = None
    pos: StreamPosition | None = None


class MembersReply(BaseModel):
    room: str
    members: Members


class PresenceDiffPayload(BaseModel):
    """Who joined and who left a room since the last diff (pushed to its members)."""

    stream: str
    joins: Members
    leaves: Members


class RoomList(BaseModel):
    rooms: list[str]


class SentReply(BaseModel):
    """Reply of ``app::rooms:send``: the message is stored and was published."""

    room: str
    sent: bool


class HistoryMessage(BaseModel):
    user: str
    text: str
    ts: float


class HistoryReply(BaseModel):
    room: str
    messages: list[HistoryMessage]
    owner: str


class Slept(BaseModel):
    slept: float


class ChatMessagePayload(BaseModel):
    """A message said in a room, pushed to every member of it."""

    room: str
    user: str
    text: str
    ts: float


ROOM_DOWN = {503: "the room is unavailable (its actor is overloaded or unreachable): retry"}

strategies.client_event("chat:message", ChatMessagePayload, topics=("rooms/*",))
strategies.client_event("presence:diff", PresenceDiffPayload, topics=("rooms/*",))


class RoomDirectory:
    """Rooms this process has seen joined (plus the default ones)."""

    def __init__(self) -> None:
        self._rooms: dict[str, None] = dict.fromkeys(DEFAULT_ROOMS)

    def add(self, room: str) -> None:
        self._rooms[room] = None

    def names(self) -> list[str]:
        return list(self._rooms)


rooms = RoomDirectory()


@strategies.strategy("app::echo")
def echo(ctx: StrategyContext) -> Any:
    """Return the payload unchanged."""
    return ctx.payload


@strategies.strategy("app::demo:fail")
def fail(ctx: StrategyContext) -> None:
    """Raise an unexpected exception, to show the 500 path."""
    raise RuntimeError("demo failure: this text stays on the server")


@strategies.strategy("app::demo:slow", payload=SlowPayload, reply=Slept, timeout=60)
def slow(ctx: StrategyContext) -> dict[str, float]:
    """Hold this connection's mailbox for ``seconds`` (shows head-of-line blocking)."""
    gevent.sleep(ctx.request.data.seconds)
    return {"slept": ctx.request.data.seconds}


@strategies.strategy("app::demo:deferred", payload=SlowPayload, reply=Slept, timeout=60)
def deferred(ctx: StrategyContext) -> None:
    """Answer after ``seconds`` without holding the mailbox (``ctx.defer``)."""
    seconds = ctx.request.data.seconds

    def work() -> dict[str, float]:
        gevent.sleep(seconds)
        return {"slept": seconds}

    ctx.defer(work)


@strategies.strategy("app::rooms:list", reply=RoomList)
def list_rooms(ctx: StrategyContext) -> dict[str, list[str]]:
    """Rooms known to this server."""
    return {"rooms": rooms.names()}


def presence_on(ctx: StrategyContext) -> bool:
    """Whether the app tracks room members (``DEMO_PRESENCE``, on unless turned off)."""
    app = getattr(ctx.flamigo, "app", None)
    return app is None or bool(app.config.get("DEMO_PRESENCE", True))


@strategies.strategy("app::rooms:join", payload=RoomPayload, reply=RoomReply)
def join(ctx: StrategyContext) -> dict[str, Any]:
    """Subscribe this connection to the room's messages."""
    client = require_identity(ctx, is_websocket, kind=WebsocketClient)
    room = ctx.request.data.room
    client.subscribe(room_topic(room))
    rooms.add(room)
    reply: dict[str, Any] = {"room": room, "joined": True}
    if presence_on(ctx):  # presence: who is in the room (members get presence:diff pushes)
        if client.user is not None:
            ctx.presence.track(room_topic(room), client.user.username, {"id": client.user.id})
        reply["members"] = ctx.presence.list(room_topic(room))
    position = client.stream_position(room_topic(room))
    if position is not None:  # opted in to recovery: where this client starts in the room's stream
        reply["pos"] = position
    return reply


@strategies.strategy("app::rooms:leave", payload=RoomPayload, reply=RoomReply)
def leave(ctx: StrategyContext) -> dict[str, Any]:
    """Unsubscribe this connection from the room's messages."""
    client = require_identity(ctx, is_websocket, kind=WebsocketClient)
    room = ctx.request.data.room
    client.unsubscribe(room_topic(room))
    if client.user is not None and presence_on(ctx):
        ctx.presence.untrack(room_topic(room), client.user.username)
    return {"room": room, "joined": False}


@strategies.strategy("app::rooms:members", payload=RoomPayload, reply=MembersReply)
def members(ctx: StrategyContext) -> dict[str, Any]:
    """Who is in the room, on every server: ``{"room", "members": {username: [meta, ...]}}``
    (nobody with ``DEMO_PRESENCE`` off: nothing is tracked)."""
    room = ctx.request.data.room
    if not presence_on(ctx):  # nobody is tracked: the app does not use presence at all
        return {"room": room, "members": {}}
    return {"room": room, "members": ctx.presence.list(room_topic(room))}


@strategies.strategy("app::rooms:send", payload=SendPayload, reply=SentReply, errors=ROOM_DOWN)
def send(ctx: StrategyContext) -> ActorFuture:
    """Say something in a room: once stored in its history, every member receives a ``chat:message`` push."""
    identity = require_identity(ctx, is_authenticated)
    user = getattr(identity, "user", None)
    if user is None:  # is_authenticated guarantees it; keeps type checkers honest
        raise FlamigoError("send: no user", public="not authenticated", status=401)
    data = ctx.request.data
    # The room appends, stores, publishes, then replies: the connection's mailbox is not held meanwhile.
    return ctx.actors.get(Room, data.room).ask("post", user.username, data.text)


@strategies.strategy("app::rooms:history", payload=RoomPayload, reply=HistoryReply, errors=ROOM_DOWN)
def history(ctx: StrategyContext) -> ActorFuture:
    """The room's last messages (oldest first) and the process holding the room (``owner``)."""
    return ctx.actors.get(Room, ctx.request.data.room).ask("history")

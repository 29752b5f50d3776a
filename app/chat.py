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


@strategies.strategy("app::demo:slow", payload=SlowPayload, timeout=60)
def slow(ctx: StrategyContext) -> dict[str, float]:
    """Hold this connection's mailbox for ``seconds`` (shows head-of-line blocking)."""
    gevent.sleep(ctx.request.data.seconds)
    return {"slept": ctx.request.data.seconds}


@strategies.strategy("app::demo:deferred", payload=SlowPayload, timeout=60)
def deferred(ctx: StrategyContext) -> None:
    """Answer after ``seconds`` without holding the mailbox (``ctx.defer``)."""
    seconds = ctx.request.data.seconds

    def work() -> dict[str, float]:
        gevent.sleep(seconds)
        return {"slept": seconds}

    ctx.defer(work)


@strategies.strategy("app::rooms:list")
def list_rooms(ctx: StrategyContext) -> dict[str, list[str]]:
    """Rooms known to this server."""
    return {"rooms": rooms.names()}


@strategies.strategy("app::rooms:join", payload=RoomPayload)
def join(ctx: StrategyContext) -> dict[str, Any]:
    """Subscribe this connection to the room's messages."""
    client = require_identity(ctx, is_websocket, kind=WebsocketClient)
    room = ctx.request.data.room
    client.subscribe(room_topic(room))
    rooms.add(room)
    reply: dict[str, Any] = {"room": room, "joined": True}
    position = client.stream_position(room_topic(room))
    if position is not None:  # opted in to recovery: where this client starts in the room's stream
        reply["pos"] = position
    return reply


@strategies.strategy("app::rooms:leave", payload=RoomPayload)
def leave(ctx: StrategyContext) -> dict[str, Any]:
    """Unsubscribe this connection from the room's messages."""
    client = require_identity(ctx, is_websocket, kind=WebsocketClient)
    room = ctx.request.data.room
    client.unsubscribe(room_topic(room))
    return {"room": room, "joined": False}


@strategies.strategy("app::rooms:send", payload=SendPayload)
def send(ctx: StrategyContext) -> ActorFuture:
    """Say something in a room: once stored in its history, every member receives a ``chat:message`` push."""
    identity = require_identity(ctx, is_authenticated)
    user = getattr(identity, "user", None)
    if user is None:  # is_authenticated guarantees it; keeps type checkers honest
        raise FlamigoError("send: no user", public="not authenticated", status=401)
    data = ctx.request.data
    # The room appends, stores, publishes, then replies: the connection's mailbox is not held meanwhile.
    return ctx.actors.get(Room, data.room).ask("post", user.username, data.text)


@strategies.strategy("app::rooms:history", payload=RoomPayload)
def history(ctx: StrategyContext) -> ActorFuture:
    """The room's last messages (oldest first) and the process holding the room (``owner``)."""
    return ctx.actors.get(Room, ctx.request.data.room).ask("history")

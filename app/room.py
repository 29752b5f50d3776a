"""A chat room as a domain actor: it owns the room's recent history.

Every message said in a room goes through its ``Room`` actor, one at a time:
the actor appends it, stores its snapshot (in Redis when the app runs with
``--redis``), and only then publishes the ``chat:message`` event and replies.
So an acknowledged message is always in the history, the history's order is
the order the actor received the messages, and there is exactly one ``Room``
per name across every process sharing the Redis.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from flamigo_actors import ClientMessage, DomainActor, serializable

HISTORY = 50
"""Messages a room keeps (the newest)."""

def room_topic(room: str) -> str:
    """The bus topic of a room."""
    return f"rooms/{room}"


@serializable("chat.message")
@dataclass(frozen=True)
class ChatMessage:
    """A message said in a room; every member receives it as ``chat:message``."""

    room: str
    user: str
    text: str
    ts: float

    @property
    def topics(self) -> tuple[str, ...]:
        return (room_topic(self.room),)

    @property
    def client_message(self) -> ClientMessage:
        return ClientMessage(
            "chat:message",
            {"room": self.room, "user": self.user, "text": self.text, "ts": self.ts},
        )


def say(room: str, user: str, text: str) -> ChatMessage:
    """Build a chat-message event stamped now."""
    return ChatMessage(room=room, user=user, text=text, ts=time.time())


class Room(DomainActor):
    """One chat room: its last :data:`HISTORY` messages (oldest first) and its message count."""

    kind = "room"
    idle_timeout = 300.0

    def on_activate(self, key: str, state: Any) -> None:
        state = state or {}
        self.messages: list[dict[str, Any]] = state.get("messages", [])
        self.count: int = state.get("count", 0)

    def snapshot(self) -> dict[str, Any]:
        return {"messages": self.messages, "count": self.count}

    def post(self, user: str, text: str) -> dict[str, Any]:
        """Append, store, then publish ``chat:message``; the reply of ``app::rooms:send``.

        Raises:
            ActorUnavailable: the snapshot could not be stored (e.g. Redis is down):
                the message was not said.
        """
        message = say(self.key, user, text)
        kept = self.messages
        # A new list each time: a history already handed out never changes under its reader.
        self.messages = [*kept[1 - HISTORY:], {"user": user, "text": text, "ts": message.ts}]
        self.count += 1
        try:
            self.persist()
        except Exception:
            self.messages, self.count = kept, self.count - 1  # not stored: not said
            raise
        self.publish(message)  # on this app's bus, after the message is stored
        return {"room": self.key, "sent": True}

    def history(self) -> dict[str, Any]:
        """The reply of ``app::rooms:history``: the messages, oldest first, and who holds the room."""
        return {"room": self.key, "messages": self.messages, "owner": self.actors.node_id}

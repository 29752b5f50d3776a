"""What crosses processes through the backplane, and how it is encoded.

* An event registered with ``@serializable(name)`` travels as itself:
  ``{"type": name, "data": ...}`` (see :mod:`flamigo_actors.core.events`).
* Any other client event travels as a ready-made
  :class:`~flamigo_actors.ClientMessageEvent` (same topics, same push).
* Anything else cannot cross: :func:`encode_for_backplane` raises
  :class:`~flamigo_actors.core.events.EventEncodingError` naming the fix.
* The publisher's identity crosses as a minimal description
  (:func:`describe_identity`) and is rebuilt on the other side as a
  :class:`RemoteIdentity`, whose ``type`` is ``"remote"``.

Pure functions and data: no Redis, no greenlet, no bus.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from ..core.events import (
    ClientMessageEvent,
    EventEncodingError,
    encode_event,
    event_type_name,
    topics_of,
)
from ..core.identity import User, user_of

if TYPE_CHECKING:
    from ..core.identity import Identity

__all__ = [
    "REMOTE",
    "RemoteIdentity",
    "describe_identity",
    "encode_for_backplane",
    "rebuild_identity",
]

REMOTE = "remote"
"""Identity type of an event's publisher in another process."""


@dataclass(frozen=True)
class RemoteIdentity:
    """Who published an event in another process (rebuilt from a minimal description).

    Its ``type`` is ``"remote"``, never the original type: a remote websocket
    user is not a local connection (no ``subscribe``), and a remote backend is
    not trusted as this process's own backend by :func:`is_backend`. The user,
    when there was one, is carried along, so :func:`is_authenticated` and
    :func:`has_permission` work on it.

    Attributes:
        origin_type: the publisher's identity type over there (``"websocket"``, ``"backend"``...).
        process: the origin process id (``host:pid:random``).
        user: the publisher's user, if any.
        interface: the backend interface over there (``"http"``, ``"call"``...), if any.
        conn_id: the publishing connection's id, if it was a connection.
    """

    origin_type: str
    process: str
    user: User | None = None
    interface: str | None = None
    conn_id: str | None = None

    @property
    def type(self) -> str:
        return REMOTE


def describe_identity(identity: Identity) -> dict[str, Any]:
    """The minimal description of a publisher that crosses processes."""
    if isinstance(identity, RemoteIdentity):  # re-published: keep what it was
        doc: dict[str, Any] = {"type": identity.origin_type}
    else:
        doc = {"type": str(identity.type)}
    interface = getattr(identity, "interface", None)
    if isinstance(interface, str):
        doc["interface"] = interface
    conn_id = getattr(identity, "conn_id", None)
    if isinstance(conn_id, str):
        doc["conn"] = conn_id
    user = user_of(identity)
    if user is not None:
        doc["user"] = {"id": user.id, "username": user.username}
        if user.permissions:
            doc["user"]["permissions"] = sorted(user.permissions)
    return doc


def rebuild_identity(doc: dict[str, Any], process: str) -> RemoteIdentity:
    """The :class:`RemoteIdentity` of a description made by :func:`describe_identity`."""
    user_doc = doc.get("user")
    user = None
    if isinstance(user_doc, dict):
        user = User(
            str(user_doc["id"]),
            str(user_doc.get("username", "")),
            frozenset(user_doc.get("permissions", ())),
        )
    return RemoteIdentity(
        origin_type=str(doc.get("type", "unknown")),
        process=process,
        user=user,
        interface=doc.get("interface"),
        conn_id=doc.get("conn"),
    )


def encode_for_backplane(event: object) -> bytes:
    """The JSON document ``{"type": name, "data": ...}`` that carries ``event`` to other processes.

    * An event registered with ``@serializable(name)`` travels as itself.
    * Any other client event travels as a ready-made
      :class:`~flamigo_actors.ClientMessageEvent` (same topics, same push):
      remote connections receive the same frame, remote listeners receive a
      ``ClientMessageEvent`` (register the class to keep it).

    Raises:
        EventEncodingError: the event is neither; or its fields are not JSON.
    """
    try:
        if event_type_name(event) is not None:
            return orjson.dumps(encode_event(event))
        message = getattr(event, "client_message", None)
        if message is not None:
            client_topic, payload = message
            generic = ClientMessageEvent(
                tuple(str(t) for t in topics_of(event)), client_topic, payload
            )
            return orjson.dumps(encode_event(generic))
    except EventEncodingError:
        raise
    except (TypeError, ValueError) as err:  # orjson.JSONEncodeError is a TypeError
        raise EventEncodingError(
            f"{type(event).__qualname__} cannot be encoded as JSON for other processes: {err}; "
            "give its fields JSON values (or to_json()/from_json())"
        ) from None
    raise EventEncodingError(
        f"{type(event).__qualname__} cannot cross processes: it is not a client event and "
        "not registered; decorate the class with @flamigo_actors.serializable('a.name') "
        "(a dataclass of JSON fields, or to_json()/from_json())"
    )

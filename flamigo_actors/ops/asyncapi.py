"""The AsyncAPI 3.0 document of an application: its WebSocket API as a machine-readable contract.

Written from the server's point of view (AsyncAPI's): one WebSocket server
and one channel (the connection at ``FLAMIGO_WS_PATH``). Each strategy is a
``receive`` operation whose message is the whole request envelope
``{topic, payload, ackId}``, with a ``reply`` listing its reply message and
the shared ``error`` message, and a ``correlationId`` at
``$message.payload#/ackId``. Each client event is a ``send`` operation.
Operations carry their strategy name or client topic verbatim (``title`` and
``x-flamigo-strategy`` / ``x-flamigo-client-topic``), the statuses they may
answer (``x-flamigo-errors``) and ``x-flamigo-untyped`` when a model is
missing; the channel describes the connection's lifecycle (authenticate first,
401 before; close codes).

Output is deterministic for one application (registration order; no
timestamps), so a committed copy can be compared (``--check``). Failure:
see :func:`~flamigo_actors.ops.schemas.describe`.
"""

from __future__ import annotations

import re
from typing import Any

from ..websocket.protocol import ERROR_TOPIC
from .schemas import ERROR_SCHEMA, Contract, ContractHost, describe

__all__ = ["CLOSE_CODES", "asyncapi_document"]

CLOSE_CODES: dict[int, str] = {
    1000: "normal closure",
    1002: "protocol error (a malformed WebSocket frame)",
    1001: "the server is shutting down (reconnect)",
    1007: "a text frame was not valid UTF-8",
    1008: "policy: too many refused requests (rate limit)",
    1009: "a message exceeded FLAMIGO_MAX_MESSAGE_SIZE",
    1011: "server error",
    1013: "the client reads too slowly (its outbound queue is full): reconnect later",
    4000: "kicked by the server",
}
"""Close codes the server may use (``x-flamigo-lifecycle.closeCodes``)."""

_REF = "#/components/schemas/{model}"
_CHANNEL = "websocket"


def _ids(names: list[str], prefix: str = "") -> dict[str, str]:
    """Unique component keys (``^[\\w.-]+$``) for names such as ``app::rooms:send``."""
    taken: set[str] = set()
    result: dict[str, str] = {}
    for name in names:
        base = prefix + re.sub(r"[^\w.\-]", "_", name.replace("::", ".").replace(":", "."))
        key, n = base, 2
        while key in taken:
            key, n = f"{base}_{n}", n + 1
        taken.add(key)
        result[name] = key
    return result


def _envelope(topic: str, payload: dict[str, Any], *, ack: bool, payload_required: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {"topic": {"type": "string", "const": topic}, "payload": payload}
    if ack:
        properties["ackId"] = {
            "type": ["string", "number"],
            "description": "the request's ackId, echoed in its reply (absent when the request had none)",
        }
    return {
        "type": "object",
        "required": ["topic", "payload"] if payload_required else ["topic"],
        "properties": properties,
    }


def _lifecycle(contract: Contract) -> str:
    auth = (
        f"Authenticate first: call `{contract.auth_strategy}` with `{{\"token\": ...}}`; until it "
        "succeeds every other non-public strategy answers status 401."
        if contract.auth_required
        else "No authentication is required."
    )
    return (
        f"One WebSocket connection at `{contract.ws_path}`, JSON text frames only. {auth} "
        "Requests are `{topic, payload, ackId?}`; the reply echoes the `ackId` (same JSON type) "
        "and is either `{topic, payload, ackId}` or the error message `{topic: \"error\", "
        "payload: {message, status, trace?, fieldErrors?}, ackId}`. A connection's requests "
        "run one at a time, in order. Pushes (`send` operations) arrive at any time as "
        "`{topic, payload}` without an ackId."
    )


def asyncapi_document(
    host: ContractHost, *, server: str = "localhost:8080", version: str = "1.0.0"
) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of ``host``'s application.

    Args:
        server: the ``host[:port]`` of the WebSocket server in ``servers``.
        version: the API's version (``info.version``).
    """
    contract = describe(host, _REF)
    channel_ref = {"$ref": f"#/channels/{_CHANNEL}"}
    messages: dict[str, Any] = {
        "error": {
            "name": ERROR_TOPIC,
            "title": "error reply",
            "summary": "The reply of any strategy that failed.",
            "payload": _envelope(
                ERROR_TOPIC, {"$ref": _REF.format(model="FlamigoErrorPayload")},
                ack=True, payload_required=True,
            ),
            "correlationId": {"$ref": "#/components/correlationIds/ackId"},
        }
    }
    operations: dict[str, Any] = {}
    ids = _ids([entry.name for entry in contract.strategies])
    for entry in contract.strategies:
        key = ids[entry.name]
        messages[f"{key}.request"] = {
            "name": entry.name,
            "title": f"{entry.name} request",
            "summary": entry.summary or None,
            "payload": _envelope(entry.name, entry.request, ack=True, payload_required=False),
            "correlationId": {"$ref": "#/components/correlationIds/ackId"},
            "x-flamigo-untyped": not entry.typed_request,
        }
        messages[f"{key}.reply"] = {
            "name": entry.name,
            "title": f"{entry.name} reply",
            "payload": _envelope(entry.name, entry.reply, ack=True, payload_required=True),
            "correlationId": {"$ref": "#/components/correlationIds/ackId"},
            "x-flamigo-untyped": not entry.typed_reply,
        }
        statuses = ", ".join(f"{status} {text}" for status, text in entry.errors.items())
        operations[key] = {
            "action": "receive",
            "channel": channel_ref,
            "title": entry.name,
            "summary": entry.summary or None,
            "description": f"Strategy `{entry.name}`. Error statuses: {statuses}.",
            "messages": [{"$ref": f"#/channels/{_CHANNEL}/messages/{key}.request"}],
            "reply": {
                "channel": channel_ref,
                "messages": [
                    {"$ref": f"#/channels/{_CHANNEL}/messages/{key}.reply"},
                    {"$ref": f"#/channels/{_CHANNEL}/messages/error"},
                ],
            },
            "x-flamigo-strategy": entry.name,
            "x-flamigo-public": entry.public,
            "x-flamigo-errors": {str(status): text for status, text in entry.errors.items()},
            "x-flamigo-untyped": entry.untyped,
        }
    push_ids = _ids([event.topic for event in contract.events], prefix="push.")
    for event in contract.events:
        key = push_ids[event.topic]
        messages[key] = {
            "name": event.topic,
            "title": f"{event.topic} push",
            "summary": event.summary or None,
            "payload": _envelope(event.topic, event.payload, ack=False, payload_required=True),
            "x-flamigo-untyped": not event.typed,
        }
        operations[key] = {
            "action": "send",
            "channel": channel_ref,
            "title": event.topic,
            "summary": event.summary or None,
            "description": (
                f"Client event `{event.topic}`, pushed to connections subscribed to "
                + (", ".join(f"`{t}`" for t in event.bus_topics) or "its bus topics")
                + "."
            ),
            "messages": [{"$ref": f"#/channels/{_CHANNEL}/messages/{key}"}],
            "x-flamigo-client-topic": event.topic,
            "x-flamigo-bus-topics": event.bus_topics,
            "x-flamigo-untyped": not event.typed,
            "x-flamigo-declared": event.declared,
        }
    document: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": {
            "title": contract.title,
            "version": version,
            "description": _lifecycle(contract),
        },
        "defaultContentType": "application/json",
        "servers": {
            "websocket": {
                "host": server,
                "protocol": "ws",
                "description": "the flamigo_actors server (wss behind TLS)",
            }
        },
        "channels": {
            _CHANNEL: {
                "address": contract.ws_path,
                "title": "WebSocket connection",
                "description": _lifecycle(contract),
                "servers": [{"$ref": "#/servers/websocket"}],
                "messages": {key: {"$ref": f"#/components/messages/{key}"} for key in messages},
                "x-flamigo-lifecycle": {
                    "authStrategy": contract.auth_strategy
                    if any(e.name == contract.auth_strategy for e in contract.strategies)
                    else None,
                    "authRequired": contract.auth_required,
                    "beforeAuth": "every non-public strategy answers status 401",
                    "closeCodes": {str(code): text for code, text in CLOSE_CODES.items()},
                },
            }
        },
        "operations": operations,
        "components": {
            "schemas": {**contract.definitions, "FlamigoErrorPayload": ERROR_SCHEMA},
            "messages": messages,
            "correlationIds": {
                "ackId": {
                    "description": "a request's ackId, echoed by its reply or error",
                    "location": "$message.payload#/ackId",
                }
            },
        },
    }
    return _drop_none(document)


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value

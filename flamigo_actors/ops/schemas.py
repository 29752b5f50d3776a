"""The contract of an application, read from its code: strategies, client events, JSON Schemas.

:func:`describe` reads what the application declared (its strategy registry
with each strategy's ``payload``/``reply``/``errors`` models and its declared
client events) and the wire envelope, and turns every model into a JSON
Schema (pydantic's, draft 2020-12) with references under one template, so
the AsyncAPI document (:mod:`.asyncapi`), the bare JSON Schemas
(:func:`json_schema_document`, ``--format jsonschema``) and the TypeScript
client (:mod:`.typescript`) all come from the same schemas.

Guarantees: every registered strategy and every declared client event is in
the contract, in registration order; one without a model has the open schema
``{}`` and ``untyped`` set (the contract never omits what it cannot type).
Client topics pushed undeclared while output checks were on are listed too,
untyped. Failure: a model pydantic cannot describe raises ``ValueError``
naming the strategy or event and the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import pydantic

from ..runtime.strategies import PROTOCOL_STATUSES, Strategy
from ..websocket.builtins import auth_strategy_name
from ..websocket.protocol import ERROR_TOPIC

__all__ = [
    "Contract",
    "ContractHost",
    "ERROR_SCHEMA",
    "EventEntry",
    "StrategyEntry",
    "describe",
    "json_schema_document",
]

ERROR_SCHEMA: dict[str, Any] = {
    "title": "FlamigoErrorPayload",
    "description": "The payload of every error reply (topic \"error\").",
    "type": "object",
    "required": ["message", "status"],
    "properties": {
        "message": {"type": "string", "description": "what went wrong, safe to show"},
        "status": {"type": "integer", "description": "HTTP-like status (401, 404, 422, 500...)"},
        "trace": {"type": "string", "description": "the server's trace, in debug mode only"},
        "fieldErrors": {
            "type": "array",
            "description": "422 only: each field that failed validation",
            "items": {
                "type": "object",
                "required": ["field", "error"],
                "properties": {"field": {"type": "string"}, "error": {"type": "string"}},
            },
        },
    },
}
"""The ``error`` reply's payload (the shared error message of every strategy)."""


class ContractHost(Protocol):
    """What the contract is read from (the :class:`~flamigo_actors.Flamigo` extension)."""

    @property
    def strategies(self) -> Any:
        """The strategy registry (with its ``events``)."""

    @property
    def settings(self) -> Any:
        """The settings (``ws_path``, ``namespace``)."""

    @property
    def auth_required(self) -> bool:
        """Whether strategies answer 401 until the connection authenticates."""

    @property
    def app(self) -> Any:
        """The Flask application (its name titles the contract)."""


@dataclass
class StrategyEntry:
    """One strategy as the contract states it."""

    name: str
    summary: str
    public: bool
    request: dict[str, Any]
    reply: dict[str, Any]
    typed_request: bool
    typed_reply: bool
    errors: dict[int, str]
    """Every status it may answer with its meaning: the declared ones and the protocol's."""
    declared_errors: dict[int, str]

    @property
    def untyped(self) -> bool:
        """Whether its request or its reply has no declared model."""
        return not (self.typed_request and self.typed_reply)


@dataclass
class EventEntry:
    """One client event (push) as the contract states it."""

    topic: str
    summary: str
    payload: dict[str, Any]
    bus_topics: list[str]
    typed: bool
    declared: bool = True


@dataclass
class Contract:
    """An application's contract, ready for a generator."""

    title: str
    namespace: str
    ws_path: str
    auth_required: bool
    auth_strategy: str
    strategies: list[StrategyEntry] = field(default_factory=list)
    events: list[EventEntry] = field(default_factory=list)
    definitions: dict[str, Any] = field(default_factory=dict)
    """Named schemas the entries refer to (pydantic's ``$defs``)."""


def describe(host: ContractHost, ref_template: str = "#/$defs/{model}") -> Contract:
    """The contract of ``host``'s application; schema references follow ``ref_template``.

    Raises:
        ValueError: a declared model has no JSON Schema (names it and its owner).
    """
    registry = host.strategies
    settings = host.settings
    strategies: list[Strategy] = list(registry)
    inputs: list[tuple[Any, Any, pydantic.TypeAdapter[Any]]] = []
    for strategy in strategies:
        for role, model in (("payload", strategy.payload), ("reply", strategy.reply)):
            if model is not None:
                inputs.append(((strategy.name, role), "validation", _adapter(model, strategy.name)))
    for spec in registry.events:
        if spec.payload is not None:
            inputs.append(((spec.topic, "push"), "validation", _adapter(spec.payload, spec.topic)))
    schemas: dict[Any, Any] = {}
    definitions: dict[str, Any] = {}
    if inputs:
        try:
            by_key, defs = pydantic.TypeAdapter.json_schemas(inputs, ref_template=ref_template)
        except pydantic.errors.PydanticUserError as err:  # e.g. a field type with no schema
            raise ValueError(f"a declared model has no JSON Schema: {err}") from None
        schemas = {key: value for (key, _mode), value in by_key.items()}
        definitions = defs.get("$defs", {})
    contract = Contract(
        title=getattr(host.app, "name", None) or "flamigo_actors app",
        namespace=settings.namespace,
        ws_path=settings.ws_path,
        auth_required=host.auth_required,
        auth_strategy=auth_strategy_name(settings.namespace),
        definitions=definitions,
    )
    for strategy in strategies:
        gated = host.auth_required and not (strategy.public or strategy.name == contract.auth_strategy)
        declared = dict(strategy.errors)
        statuses = {400: PROTOCOL_STATUSES[400], 429: PROTOCOL_STATUSES[429]}
        if gated:
            statuses[401] = PROTOCOL_STATUSES[401]
        if strategy.payload is not None:
            statuses[422] = PROTOCOL_STATUSES[422]
        statuses.update({500: PROTOCOL_STATUSES[500], 504: PROTOCOL_STATUSES[504]})
        statuses.update(declared)
        contract.strategies.append(
            StrategyEntry(
                name=strategy.name,
                summary=strategy.doc,
                public=not gated,
                request=schemas.get((strategy.name, "payload"), {}),
                reply=schemas.get((strategy.name, "reply"), {}),
                typed_request=strategy.payload is not None,
                typed_reply=strategy.reply is not None,
                errors=dict(sorted(statuses.items())),
                declared_errors=declared,
            )
        )
    for spec in registry.events:
        contract.events.append(
            EventEntry(
                topic=spec.topic,
                summary=spec.summary,
                payload=schemas.get((spec.topic, "push"), {}),
                bus_topics=list(spec.bus_topics),
                typed=spec.payload is not None,
            )
        )
    for topic in registry.events.observed():
        contract.events.append(
            EventEntry(topic, "pushed without a declaration (seen at run time)", {}, [], False, False)
        )
    return contract


def _adapter(model: Any, owner: str) -> pydantic.TypeAdapter[Any]:
    try:
        return pydantic.TypeAdapter(model)
    except pydantic.errors.PydanticUserError as err:
        raise ValueError(f"{owner}: model {model!r} cannot be described: {err}") from None


def json_schema_document(host: ContractHost) -> dict[str, Any]:
    """The bare JSON Schemas (draft 2020-12) of every strategy's request and reply and every push.

    ``$defs`` holds the named models; ``strategies`` and ``events`` map each
    strategy name and client topic to its schemas (``{}`` when untyped) and the
    statuses it may answer; ``error`` is the error reply's payload.
    """
    contract = describe(host, "#/$defs/{model}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{contract.title}: the JSON Schemas of its WebSocket API",
        "$defs": {**contract.definitions, "FlamigoErrorPayload": ERROR_SCHEMA},
        "error": {"$ref": "#/$defs/FlamigoErrorPayload", "x-flamigo-topic": ERROR_TOPIC},
        "strategies": {
            entry.name: {
                "summary": entry.summary,
                "request": entry.request,
                "reply": entry.reply,
                "errors": {str(status): text for status, text in entry.errors.items()},
                "untyped": entry.untyped,
            }
            for entry in contract.strategies
        },
        "events": {
            entry.topic: {
                "summary": entry.summary,
                "payload": entry.payload,
                "busTopics": entry.bus_topics,
                "untyped": not entry.typed,
            }
            for entry in contract.events
        },
    }

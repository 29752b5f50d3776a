"""Conformance: checking what the server sends against what it declared.

A strategy may declare the model of its reply (``reply=``) and a client event
the model of its payload (:class:`~flamigo_actors.runtime.client_events.ClientEvents`).
Requests are always validated (422). Replies and pushes are validated only
when the application turns the checks on (debug mode, tests: see the README's
"The contract"): then a value that does not fit raises
:class:`ContractViolation`, a 500 naming the strategy or client topic and
each field that is wrong, so a wrong shape fails loudly in development and
tests and never silently in production (where nothing is checked and nothing
costs anything).

The check validates the JSON the client would receive (``orjson`` bytes, in
pydantic's strict mode): a reply that only fits after coercion (``"1"`` for an
``int``) is refused, since the client would get the string. A value that is
not JSON-serialisable is left to the wire path, which reports that itself.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson
import pydantic

from ..core.errors import FlamigoError

__all__ = ["ContractViolation", "check_value", "model_name"]


class ContractViolation(FlamigoError):
    """A reply or push that does not match its declared model (status 500).

    Attributes:
        subject: what was checked (``reply of app::rooms:send``, ``push chat:message``).
        problems: ``{"field": ..., "error": ...}`` for each wrong field.
    """

    def __init__(self, subject: str, model: Any, problems: list[dict[str, str]]) -> None:
        listed = "; ".join(f"{p['field']}: {p['error']}" for p in problems)
        text = f"{subject} does not match its declared model {model_name(model)}: {listed}"
        super().__init__(f"contract: {text}", public=text, status=500)
        self.subject = subject
        self.problems = problems


def model_name(model: Any) -> str:
    """A readable name of a model (class name, or its repr for other types)."""
    return str(getattr(model, "__name__", None) or model)


@lru_cache(maxsize=512)
def _adapter(model: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(model)


def check_value(model: Any, value: Any, subject: str) -> None:
    """Raise :class:`ContractViolation` unless ``value``, as JSON, fits ``model``.

    Args:
        model: a pydantic model, dataclass, TypedDict or type.
        value: what is about to be sent.
        subject: names the check in the error (``reply of app::rooms:send``).
    """
    try:
        document = orjson.dumps(value)
    except TypeError:
        return  # not JSON at all: the wire path answers that with its own error
    try:
        _adapter(model).validate_json(document, strict=True)
    except pydantic.ValidationError as err:
        problems = [
            {
                "field": ".".join(str(part) for part in item["loc"]) or "(the whole value)",
                "error": item["msg"],
            }
            for item in err.errors(include_url=False, include_input=False)
        ]
        raise ContractViolation(subject, model, problems) from None

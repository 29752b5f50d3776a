"""Layered errors: each layer wraps the inner one with a short, path-like message.

An error chain reads like an onion peeled from the outside in::

    strategy(app::messages:get): listing messages: find(db_messages): timeout

Any layer may carry a *public* message and a *status* (HTTP-like, default 500).
The outermost public message is what a client sees; the technical text of
inner layers (the "trace") reaches a client only when debugging is on.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from typing import Any

__all__ = [
    "FieldError",
    "as_payload",
    "FlamigoError",
    "GENERIC_PUBLIC_MESSAGE",
    "bad_request",
    "chain",
    "field_errors_of",
    "forbidden",
    "not_found",
    "public_message",
    "status_of",
    "trace_of",
    "unauthorized",
    "wrap",
]

GENERIC_PUBLIC_MESSAGE = "internal error"
"""What a client sees when no layer of the chain chose a public message."""

FieldError = dict[str, str]
"""One per-field validation problem: ``{"field": "room", "error": "field required"}``."""


class FlamigoError(Exception):
    """An error layer: a short technical message plus optional public message and status.

    Args:
        message: short technical text for logs (``"find(db_messages)"``). It is
            never shown to clients unless debugging is on.
        public: message safe to show to a client. When ``None`` the next inner
            layer's public message applies.
        status: HTTP-like status code (``404``, ``422``...). When ``None`` the
            next inner layer's status applies, and 500 when none has one.
        field_errors: per-field validation problems (used with status 422).
    """

    def __init__(
        self,
        message: str,
        *,
        public: str | None = None,
        status: int | None = None,
        field_errors: list[FieldError] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.public = public
        self.status = status
        self.field_errors = field_errors

    def __str__(self) -> str:
        cause = self.__cause__
        if cause is None:
            return self.message
        return f"{self.message}: {_layer_text(cause)}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, public={self.public!r}, "
            f"status={self.status!r})"
        )


def _layer_text(err: BaseException) -> str:
    if isinstance(err, FlamigoError):
        return str(err)
    text = str(err)
    name = type(err).__name__
    # A bare ``TimeoutError()`` has no text: its type name is the useful part.
    return f"{name}: {text}" if text else name


def wrap(
    message: str,
    err: BaseException,
    *,
    public: str | None = None,
    status: int | None = None,
    field_errors: list[FieldError] | None = None,
) -> FlamigoError:
    """Wrap ``err`` in a new layer and return it (the caller raises it).

    The inner error becomes ``__cause__``, so the chain and tracebacks stay
    intact::

        try:
            rows = db.find(query)
        except DatabaseError as err:
            raise wrap("find(db_messages)", err, public="messages unavailable", status=503)
    """
    layer = FlamigoError(message, public=public, status=status, field_errors=field_errors)
    layer.__cause__ = err
    return layer


def chain(err: BaseException) -> Iterator[BaseException]:
    """Yield ``err`` and every error it wraps, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__


def public_message(err: BaseException) -> str:
    """The outermost public message in the chain, or ``"internal error"``.

    Inner technical text is never returned: only messages a layer marked public.
    """
    for layer in chain(err):
        if isinstance(layer, FlamigoError) and layer.public is not None:
            return layer.public
    return GENERIC_PUBLIC_MESSAGE


def status_of(err: BaseException) -> int:
    """The outermost status in the chain; 500 when no layer set one."""
    for layer in chain(err):
        if isinstance(layer, FlamigoError) and layer.status is not None:
            return layer.status
    return 500


def field_errors_of(err: BaseException) -> list[FieldError] | None:
    """The outermost per-field errors in the chain, if any layer has them."""
    for layer in chain(err):
        if isinstance(layer, FlamigoError) and layer.field_errors is not None:
            return layer.field_errors
    return None


def trace_of(err: BaseException) -> str:
    """The full technical story: the path-like message and the traceback.

    Only for logs and for clients when debugging is on.
    """
    text = _layer_text(err)
    tb = "".join(traceback.format_exception(err))
    return f"{text}\n{tb}"


def _error(status: int, public: str, message: str | None) -> FlamigoError:
    return FlamigoError(message or public, public=public, status=status)


def bad_request(public: str, message: str | None = None) -> FlamigoError:
    """A 400 error whose public message is ``public``."""
    return _error(400, public, message)


def unauthorized(public: str = "not authenticated", message: str | None = None) -> FlamigoError:
    """A 401 error: the caller must authenticate first."""
    return _error(401, public, message)


def forbidden(public: str = "forbidden", message: str | None = None) -> FlamigoError:
    """A 403 error: the caller is known but not allowed."""
    return _error(403, public, message)


def not_found(public: str = "not found", message: str | None = None) -> FlamigoError:
    """A 404 error."""
    return _error(404, public, message)


def as_payload(err: BaseException, *, debug: bool) -> dict[str, Any]:
    """The ``payload`` of an ``error`` message on the wire for ``err``.

    ``trace`` is present only when ``debug`` is true; ``fieldErrors`` only for 422.
    """
    status = status_of(err)
    payload: dict[str, Any] = {"message": public_message(err), "status": status}
    if status == 422:
        payload["fieldErrors"] = field_errors_of(err) or []
    if debug:
        payload["trace"] = trace_of(err)
    return payload

"""Who runs the work: identities, users and claim validators.

Flamigo calls these "actors" (the backend actor, the websocket actor). In this
package the word *actor* is kept for Pykka actors (the connection actor, the
bus actor) and the Flamigo ones are called *identities*, so the two never mix.

An identity has a ``type`` string: ``"backend"`` for the system itself,
``"websocket"`` for a live connection, or any custom type an application
defines. Claim validators are small checks on an identity;
:func:`require_identity` runs them and returns the typed identity or raises a
layered error with status 401 or 403.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, overload, runtime_checkable

from .errors import FlamigoError


__all__ = [
    "BACKEND",
    "WEBSOCKET",
    "BackendIdentity",
    "ClaimValidator",
    "Identity",
    "User",
    "UserIdentity",
    "has_permission",
    "is_authenticated",
    "is_backend",
    "is_not_websocket",
    "is_unauthenticated",
    "is_websocket",
    "of_type",
    "require_actor",
    "require_identity",
    "user_of",
]

BACKEND = "backend"
WEBSOCKET = "websocket"


@runtime_checkable
class Identity(Protocol):
    """Anything that says who runs the work: it only needs a ``type`` string."""

    @property
    def type(self) -> str: ...


@dataclass(frozen=True)
class User:
    """An authenticated user.

    Attributes:
        id: stable identifier (used in topics such as ``user/<id>``).
        username: display name.
        permissions: names of what the user may do (``"rooms:moderate"``).
    """

    id: str
    username: str
    permissions: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"User.id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.permissions, frozenset):
            object.__setattr__(self, "permissions", frozenset(self.permissions))

    def public(self) -> dict[str, Any]:
        """The JSON a client may see: id and username (never permissions)."""
        return {"id": self.id, "username": self.username}


@runtime_checkable
class UserIdentity(Identity, Protocol):
    """An identity that may carry an authenticated user (``None`` until then)."""

    @property
    def user(self) -> User | None: ...


@dataclass(frozen=True)
class BackendIdentity:
    """The system itself: jobs, internal calls, events published by the server.

    Attributes:
        interface: which interface called (``"http"``, ``"shell"``, ``"job"``).
        user: the user on whose behalf the backend acts, if any (an HTTP view
            that checked a bearer token passes it here).
    """

    interface: str = "backend"
    user: User | None = None

    @property
    def type(self) -> str:
        return BACKEND


ClaimValidator = Callable[[Identity], None]
"""A check on an identity: returns ``None`` when it passes, raises :class:`FlamigoError` otherwise."""


def user_of(identity: Identity | None) -> User | None:
    """The authenticated user of ``identity``, or ``None`` if it has none."""
    if identity is None:
        return None
    user = getattr(identity, "user", None)
    return user if isinstance(user, User) else None


def _denied(status: int, public: str, detail: str) -> FlamigoError:
    return FlamigoError(f"claim: {detail}", public=public, status=status)


def of_type(*types: str) -> ClaimValidator:
    """Pass when the identity's type is one of ``types`` (403 otherwise)."""
    allowed = frozenset(types)

    def check(identity: Identity) -> None:
        if identity.type not in allowed:
            raise _denied(403, "forbidden", f"type {identity.type!r} not in {sorted(allowed)}")

    check.__name__ = f"of_type({', '.join(types)})"
    return check


def is_backend(identity: Identity) -> None:
    """Pass only for the backend identity."""
    if identity.type != BACKEND:
        raise _denied(403, "forbidden", f"type {identity.type!r} is not backend")


def is_websocket(identity: Identity) -> None:
    """Pass only for a websocket connection's identity."""
    if identity.type != WEBSOCKET:
        raise _denied(403, "forbidden", f"type {identity.type!r} is not websocket")


def is_not_websocket(identity: Identity) -> None:
    """Pass for every identity except a websocket connection's.

    (The Go original checked the opposite by mistake; this one is correct.)
    """
    if identity.type == WEBSOCKET:
        raise _denied(403, "forbidden", "websocket identities are not allowed here")


def is_authenticated(identity: Identity) -> None:
    """Pass when the identity carries an authenticated user (401 otherwise)."""
    if user_of(identity) is None:
        raise _denied(401, "not authenticated", f"{identity.type} identity has no user")


def is_unauthenticated(identity: Identity) -> None:
    """Pass when the identity carries no user (403 when it does)."""
    user = user_of(identity)
    if user is not None:
        raise _denied(403, "already authenticated", f"user {user.id} is authenticated")


def has_permission(*permissions: str) -> ClaimValidator:
    """Pass when the identity's user has every one of ``permissions``.

    No user → 401; a user without one of them → 403.
    """
    wanted = frozenset(permissions)

    def check(identity: Identity) -> None:
        user = user_of(identity)
        if user is None:
            raise _denied(401, "not authenticated", f"{identity.type} identity has no user")
        missing = wanted - user.permissions
        if missing:
            raise _denied(403, "forbidden", f"user {user.id} lacks {sorted(missing)}")

    check.__name__ = f"has_permission({', '.join(permissions)})"
    return check


IdentityT = TypeVar("IdentityT")


class HasIdentity(Protocol):
    """Anything carrying an ``identity`` (a strategy or listener context)."""

    @property
    def identity(self) -> Identity | None: ...


@overload
def require_identity(ctx: HasIdentity, *validators: ClaimValidator) -> Identity: ...
@overload
def require_identity(ctx: HasIdentity, *validators: ClaimValidator, kind: type[IdentityT]) -> IdentityT: ...
def require_identity(
    ctx: HasIdentity, *validators: ClaimValidator, kind: type[Any] | None = None
) -> Any:
    """Return the context's identity once every validator passes.

    Args:
        ctx: the strategy or listener context.
        validators: claim validators run in order; the first failure is raised.
        kind: when given, the identity must be an instance of this class and is
            returned typed as such (403 otherwise).

    Raises:
        FlamigoError: 401 when a user is required and missing, 403 when the
            identity is of the wrong kind or lacks a permission.
    """
    identity = ctx.identity
    if identity is None:
        raise _denied(401, "not authenticated", "no identity in context")
    if kind is not None and not isinstance(identity, kind):
        raise _denied(
            403, "forbidden", f"{type(identity).__name__} is not a {kind.__name__}"
        )
    for validate in validators:
        validate(identity)
    return identity


require_actor = require_identity
"""The Go original's name for :func:`require_identity`."""


def describe(identity: Identity | None) -> str:
    """A short label for logs: ``websocket(c-12, user=42)``."""
    if identity is None:
        return "none"
    parts: list[str] = []
    for attr in ("conn_id", "interface"):
        value = getattr(identity, attr, None)
        if value:
            parts.append(str(value))
    user = user_of(identity)
    if user is not None:
        parts.append(f"user={user.id}")
    return f"{identity.type}({', '.join(parts)})"


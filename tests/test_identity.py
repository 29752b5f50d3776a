"""Identities and claim validators (including is_not_websocket done right)."""

from dataclasses import dataclass

import pytest

from flamigo_actors import (
    BackendIdentity,
    Context,
    FlamigoError,
    User,
    has_permission,
    is_authenticated,
    is_backend,
    is_not_websocket,
    is_unauthenticated,
    is_websocket,
    of_type,
    require_actor,
    require_identity,
    status_of,
)
from flamigo_actors.core.identity import Identity, UserIdentity


@dataclass
class Robot:
    """A custom identity type."""

    type: str = "robot"


@dataclass
class FakeWebsocket:
    """Stands for a websocket identity in unit tests (the real one is tested live)."""

    user: User | None = None
    type: str = "websocket"


ALICE = User("u1", "alice", frozenset({"rooms:moderate"}))


def ctx(identity: Identity) -> Context:
    return Context(flamigo=None, identity=identity)  # type: ignore[arg-type]


def denied(validator, identity) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(FlamigoError) as info:
        validator(identity)
    return status_of(info.value)


def test_backend_identity_type_and_interface() -> None:
    backend = BackendIdentity("http")
    assert backend.type == "backend" and backend.interface == "http"
    assert isinstance(backend, Identity)
    assert isinstance(FakeWebsocket(), UserIdentity)


def test_of_type() -> None:
    of_type("robot", "backend")(Robot())
    of_type("robot", "backend")(BackendIdentity())
    assert denied(of_type("backend"), Robot()) == 403


def test_is_backend() -> None:
    is_backend(BackendIdentity())
    assert denied(is_backend, Robot()) == 403
    assert denied(is_backend, FakeWebsocket()) == 403


def test_is_websocket() -> None:
    is_websocket(FakeWebsocket())
    assert denied(is_websocket, BackendIdentity()) == 403
    assert denied(is_websocket, Robot()) == 403


def test_is_not_websocket_passes_for_every_other_identity() -> None:
    is_not_websocket(BackendIdentity())
    is_not_websocket(BackendIdentity("http", ALICE))
    is_not_websocket(Robot())
    assert denied(is_not_websocket, FakeWebsocket()) == 403
    assert denied(is_not_websocket, FakeWebsocket(ALICE)) == 403


def test_is_authenticated() -> None:
    is_authenticated(FakeWebsocket(ALICE))
    is_authenticated(BackendIdentity("http", ALICE))
    assert denied(is_authenticated, FakeWebsocket()) == 401
    assert denied(is_authenticated, BackendIdentity()) == 401
    assert denied(is_authenticated, Robot()) == 401


def test_is_unauthenticated() -> None:
    is_unauthenticated(FakeWebsocket())
    is_unauthenticated(Robot())
    assert denied(is_unauthenticated, FakeWebsocket(ALICE)) == 403


def test_has_permission() -> None:
    has_permission("rooms:moderate")(FakeWebsocket(ALICE))
    assert denied(has_permission("rooms:moderate"), FakeWebsocket()) == 401
    assert denied(has_permission("rooms:moderate", "admin"), FakeWebsocket(ALICE)) == 403
    bob = User("u2", "bob")
    assert denied(has_permission("rooms:moderate"), BackendIdentity("http", bob)) == 403


def test_require_identity_returns_the_typed_identity() -> None:
    identity = FakeWebsocket(ALICE)
    got = require_identity(ctx(identity), is_websocket, is_authenticated, kind=FakeWebsocket)
    assert got is identity
    assert require_actor is require_identity


def test_require_identity_errors() -> None:
    with pytest.raises(FlamigoError) as info:
        require_identity(ctx(Robot()), kind=FakeWebsocket)
    assert status_of(info.value) == 403
    with pytest.raises(FlamigoError) as info:
        require_identity(ctx(FakeWebsocket()), is_websocket, is_authenticated)
    assert status_of(info.value) == 401
    with pytest.raises(FlamigoError) as info:
        require_identity(ctx(None))  # type: ignore[arg-type]
    assert status_of(info.value) == 401


def test_user_validation_and_public_view() -> None:
    with pytest.raises(ValueError):
        User("", "nobody")
    user = User("7", "carol", ["a"])  # type: ignore[arg-type]
    assert user.permissions == frozenset({"a"})
    assert user.public() == {"id": "7", "username": "carol"}

"""The built-in WebSocket strategies: ``<ns>::websocket:auth`` and ``<ns>::websocket:ping``.

* ``websocket:auth`` (registered when the app gives a token verifier) checks
  ``{"token": ...}`` and marks the connection as the returned user. An app may
  register its own ``<ns>::websocket:auth`` instead (``public=True`` or not):
  whoever registered it, the auth strategy is always callable before
  authentication (see :func:`is_auth_strategy`, used by the connection's 401
  gate), otherwise nobody could ever authenticate.
* ``websocket:ping`` answers a client's application-level heartbeat with
  ``{"pong": true}``. Browsers answer the server's pings without telling page
  scripts, so a client proves its connection alive with this ping (public: it
  works before authentication). The exact frame ``{"topic":"<ns>::websocket:ping"}``
  is answered by the connection's reader without queuing in the mailbox; any
  other form (e.g. with an ``ackId``) reaches this strategy.

An application's own registration of either name always wins: the built-in is
then not registered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pydantic

from ..core.errors import FlamigoError
from ..core.identity import User
from ..runtime.strategies import Registry, StrategyContext
from .client import WebsocketClient
from .resume import ResumePayload, check_owner, open_session
from .protocol import HEARTBEAT_ACTION, HEARTBEAT_PAYLOAD, heartbeat_frames

__all__ = [
    "AUTH_STRATEGY",
    "AuthPayload",
    "AuthReply",
    "PingReply",
    "PublicUser",
    "TokenVerifier",
    "auth_strategy_name",
    "register_auth",
    "register_heartbeat",
]

TokenVerifier = Callable[[str], "User | None"]
"""Checks a client's token; returns the user, or ``None`` (or raises) when it is not valid."""

AUTH_STRATEGY = "websocket:auth"
"""The authentication strategy is ``<namespace>::websocket:auth``."""


class AuthPayload(pydantic.BaseModel):
    """Payload of ``app::websocket:auth``.

    ``recover``/``resume`` opt in to connection-state recovery (``websocket/resume.py``).
    """

    token: str = pydantic.Field(min_length=1)
    recover: bool = False
    resume: ResumePayload | None = None


class PublicUser(pydantic.BaseModel):
    """What a client may see of a user."""

    id: str
    username: str


class AuthReply(pydantic.BaseModel):
    """Reply of ``app::websocket:auth``: the connection is now this user."""

    success: bool
    user: PublicUser


class PingReply(pydantic.BaseModel):
    """Reply of ``app::websocket:ping``."""

    pong: bool


def auth_strategy_name(namespace: str) -> str:
    """``<namespace>::websocket:auth``: the one strategy always callable before authentication."""
    return f"{namespace}::{AUTH_STRATEGY}"


def register_auth(registry: Registry, verify: TokenVerifier) -> None:
    """Register the built-in ``websocket:auth`` on ``registry`` unless the app has its own."""
    name = auth_strategy_name(registry.namespace)
    if name in registry:
        return  # the application customised it

    def authenticate(ctx: StrategyContext) -> dict[str, Any]:
        """Verify a token and mark this connection as its user."""
        token = ctx.request.data.token
        try:
            user = verify(token)
        except FlamigoError:
            raise
        except Exception as err:  # the verifier said no in its own way
            raise FlamigoError(f"verify token: {err}", public="invalid token", status=401) from err
        if user is None:
            raise FlamigoError("verify token: refused", public="invalid token", status=401)
        data = ctx.request.data
        recovery = getattr(ctx.flamigo, "recovery", None)
        # No recoverable topic: no session (nothing could ever be replayed), no store touched.
        recovering = recovery is not None and recovery.enabled and (data.recover or data.resume is not None)
        session = check_owner(recovery, data.resume, str(user.id)) if recovery is not None and recovering else None
        if isinstance(ctx.identity, WebsocketClient):
            ctx.identity.authenticate(user)
        reply: dict[str, Any] = {"success": True, "user": user.public()}
        if recovery is not None and recovering and isinstance(ctx.identity, WebsocketClient):
            connection = ctx.identity._connection  # package-internal: the recovery session lives there
            if connection.session is None:  # a token refresh keeps the session it has
                reply.update(open_session(connection, recovery, str(user.id), data.resume, session))
            else:
                reply["session"] = connection.session.secret
        return reply

    registry.register(
        name, authenticate, payload=AuthPayload, public=True, reply=AuthReply,
        errors={401: "invalid token"},
    )


def register_heartbeat(registry: Registry) -> tuple[bytes, bytes] | None:
    """Register the built-in ``websocket:ping`` unless the app has its own.

    Returns:
        The heartbeat request a connection's reader answers itself and its
        reply, or ``None`` when the app registered its own ping (then every
        ping goes to its strategy).
    """
    name = f"{registry.namespace}::{HEARTBEAT_ACTION}"
    if name in registry:
        return None

    def ping(ctx: StrategyContext) -> dict[str, bool]:
        """Answer a client's heartbeat: ``{"pong": true}``."""
        return dict(HEARTBEAT_PAYLOAD)

    registry.register(name, ping, public=True, reply=PingReply)
    return heartbeat_frames(registry.namespace)

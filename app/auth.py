"""The demo's auth service: signed, expiring tokens (itsdangerous) for a username."""

from __future__ import annotations

import re

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from flamigo_actors import User

USERNAME = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


class InvalidUsername(ValueError):
    """The username is empty, too long or uses characters other than letters, digits, ``_.-``."""


class TokenService:
    """Issues and verifies tokens naming a user.

    Args:
        secret: signing key (``SECRET_KEY``); every process sharing users must use the same.
        max_age: seconds a token stays valid.
    """

    def __init__(self, secret: str, max_age: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="flamigo-demo-login")
        self.max_age = max_age

    def issue(self, username: object) -> tuple[str, User]:
        """A token for ``username`` and the user it names.

        Raises:
            InvalidUsername: the username is missing or malformed.
        """
        if not isinstance(username, str) or not USERNAME.match(username.strip()):
            raise InvalidUsername(
                "username must be 1-32 letters, digits, '_', '.' or '-'"
            )
        user = User(id=username.strip().lower(), username=username.strip())
        token = self._serializer.dumps({"id": user.id, "username": user.username})
        return token, user

    def verify(self, token: str) -> User | None:
        """The user a valid, unexpired token names; ``None`` otherwise."""
        try:
            data = self._serializer.loads(token, max_age=self.max_age)
        except (SignatureExpired, BadSignature):
            return None
        return User(id=data["id"], username=data["username"])

"""Log lines: human-readable or JSON (``FLAMIGO_LOG_FORMAT``), never carrying a secret.

:func:`configure` (called by the server commands: ``flamigo-actors run``,
``python -m app``, each gunicorn worker) sets the format of every handler of
the root logger and of gunicorn's loggers, and installs :class:`Redactor` on
them, in both formats.

* ``text`` (the default): ``time LEVEL logger: message`` as before.
* ``json``: one JSON object per line with ``time`` (ISO 8601, UTC),
  ``level``, ``logger``, ``message``, ``exc`` when there is a traceback,
  and, where one applies, ``conn_id``, ``user_id``, ``strategy`` and
  ``ack_id``: taken from the record's own attributes (``extra={...}``)
  or from the context provider the WebSocket layer installs (the connection
  whose actor is logging). Looking the context up costs nothing until a line
  is written.

Redaction is generic, not a list of call sites: in the rendered message and
traceback, the value of any secret-bearing field (``token``, ``password``,
``secret``, ``session``/``session_id``/``sessionId``, ``authorization``,
``api_key``... as ``key=value``, ``key: value`` or JSON ``"key": "value"``),
``Bearer`` credentials, the password of a URL (``redis://:pw@host``), and
every value passed to :func:`register_secret` (the admin token, the Redis
password, an app's ``SECRET_KEY``...) become ``[REDACTED]``. A line that
cannot be rendered is still written, with its raw template redacted.
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["JsonFormatter", "Redactor", "configure", "redact_text", "register_secret", "set_context_provider"]

REDACTED = "[REDACTED]"

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

SECRET_KEYS = (
    r"(?:access_|refresh_|id_|auth_|api_|csrf_)?tokens?|password|passwd|pwd|secret(?:_key)?|"
    r"session(?:_?id|_?token|_?secret)?|authorization|api_?key|credentials?|cookie"
)
_FIELD = re.compile(
    rf"""(?ix)
    (?P<key>["']?\b(?:{SECRET_KEYS})\b["']?)      # the field name, maybe quoted
    (?P<sep>\s*[:=]\s*)                             # key=value, key: value, "key": "value"
    (?P<value>"[^"]*"|'[^']*'|[^\s,;&}}\])]+)
    """
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*):([^/\s@]+)@")

_secrets: set[str] = set()
_provider: Callable[[], dict[str, Any] | None] | None = None
CONTEXT_FIELDS = ("conn_id", "user_id", "strategy", "ack_id")


def register_secret(value: str | None) -> None:
    """Never write ``value`` in a log line (values shorter than 4 characters are ignored)."""
    if value and len(value) >= 4:
        _secrets.add(value)


def set_context_provider(provider: Callable[[], dict[str, Any] | None] | None) -> None:
    """Install the function that tells the current connection's fields (the WebSocket layer's)."""
    global _provider
    _provider = provider


def _quoted(match: re.Match[str]) -> str:
    value = match.group("value")
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match.group('key')}{match.group('sep')}{quote}{REDACTED}{quote}"


def redact_text(text: str) -> str:
    """``text`` with every secret it shows replaced by ``[REDACTED]``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _URL_PASSWORD.sub(rf"\1:{REDACTED}@", text)
    text = _BEARER.sub(rf"\1 {REDACTED}", text)
    return _FIELD.sub(_quoted, text)


class Redactor(logging.Filter):
    """A handler filter that renders each record's message redacted (and its traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad template still gets written, redacted
            message = f"{record.msg!r} (arguments did not fit: {record.args!r})"
        record.msg, record.args = redact_text(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, exc, and the connection's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = _provider() if _provider is not None else None
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is None and context:
                value = context.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return orjson.dumps(entry, default=str).decode()


def configure(log_format: str = "text", level: int | str | None = None) -> None:
    """Format the root logger's and gunicorn's handlers as ``log_format`` and redact them all.

    Adds a stderr handler to the root logger when it has none.

    Raises:
        ValueError: ``log_format`` is neither ``text`` nor ``json``.
    """
    if log_format not in ("text", "json"):
        raise ValueError(f"FLAMIGO_LOG_FORMAT must be 'text' or 'json', got {log_format!r}")
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    if level is not None:
        root.setLevel(level)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    for logger in (root, logging.getLogger("gunicorn.error"), logging.getLogger("gunicorn.access")):
        for handler in logger.handlers:
            handler.setFormatter(formatter)
            if not any(isinstance(f, Redactor) for f in handler.filters):
                handler.addFilter(Redactor())

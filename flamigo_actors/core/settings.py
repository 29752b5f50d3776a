"""Settings: ``FLAMIGO_*`` keys, with documented defaults.

Every field below can be set, from lowest to highest precedence, by
``app.config["FLAMIGO_<NAME>"]``, by the environment variable
``FLAMIGO_<NAME>`` (what the command-line flags such as ``--redis`` set, so
they reach every worker process), or by a keyword argument of the same
lowercase name to :class:`~flamigo_actors.Flamigo`. Wrong types or values fail
at ``init_app`` with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Settings"]

PREFIX = "FLAMIGO_"

_log = logging.getLogger("flamigo_actors")


@dataclass(frozen=True)
class Settings:
    """All knobs of the extension (see the README's settings table)."""

    ws_path: str = "/ws"
    """URL of the WebSocket endpoint."""
    ws_direct: bool = True
    """Serve upgrades at ``ws_path`` straight from the WebSocket handler, skipping Flask's request
    dispatch (``before_request`` hooks, request signals, the session): about 45% of the server CPU
    of a connect. False runs them (the route's view then serves the connection)."""
    namespace: str = "app"
    """Strategy namespace callable over WebSocket (others answer 403)."""
    debug: bool | None = None
    """Send error traces to clients. ``None`` follows ``app.debug``. Never in production."""
    auth_required: bool | None = None
    """Refuse strategies (401) until ``app::websocket:auth`` succeeds. ``None``: on when an auth verifier is set."""
    max_message_size: int = 64 * 1024
    """Largest inbound message in bytes; larger ones close the connection with 1009."""
    ping_interval: float = 54.0
    """Seconds between server pings."""
    pong_timeout: float = 60.0
    """A connection silent (no frame, no pong) for this long is closed."""
    allowed_origins: tuple[str, ...] = ()
    """Origins allowed besides the server's own (``https://app.example.com``); ``"*"`` allows all."""
    outbound_max_messages: int = 1000
    """Frames queued for a slow client before it is disconnected (1013)."""
    outbound_max_bytes: int = 4 * 1024 * 1024
    """Bytes queued for a slow client before it is disconnected (1013)."""
    mailbox_max_deliveries: int = 1000
    """Event deliveries waiting in a connection's mailbox before it is disconnected (1013)."""
    max_pending_requests: int = 64
    """Requests read ahead of the one running; beyond, the connection stops reading (TCP backpressure)."""
    strategy_timeout: float = 30.0
    """Default time limit of a strategy run over WebSocket; past it the client gets 504."""
    listener_max_pending: int = 10_000
    """Events waiting for one in-process listener before further ones are refused (counted, logged)."""
    publish_sync_timeout: float = 30.0
    """Default wait of ``publish_sync`` before it raises a 504 error."""
    rate_limit: float | None = None
    """Requests per second per connection (token bucket); ``None`` disables. Over it: 429."""
    rate_limit_burst: int | None = None
    """Bucket size; ``None`` means twice ``rate_limit``."""
    rate_limit_close_after: int = 50
    """Consecutive 429 answers after which the connection closes with 1008."""
    connect_rate_limit: float | None = None
    """New connections per second per remote address; ``None`` disables. Over it: HTTP 429."""
    connect_rate_burst: int | None = None
    """Bucket size for connection attempts; ``None`` means twice ``connect_rate_limit``."""
    drain_timeout: float = 10.0
    """Seconds a graceful shutdown waits for in-flight work before closing anyway."""
    close_timeout: float = 2.0
    """Seconds to flush a closing connection's last frames before tearing it down."""
    header_timeout: float = 10.0
    """Seconds a client has to send its HTTP request line and headers (the WebSocket
    handshake included); idle keep-alive HTTP connections end after it too."""
    redis_url: str | None = None
    """Redis URL of the cross-process backplane; ``None`` keeps events in this process."""
    redis_cluster: bool = False
    """``FLAMIGO_REDIS_URL`` names one node of a Redis Cluster: the client discovers the others
    and sends each key to the master of its slot (``--redis-cluster``)."""
    redis_required: bool = True
    """Refuse to start when Redis is unreachable; False starts local-only with a loud warning."""
    redis_channel: str = "flamigo"
    """Prefix of the Redis channels this app uses (several apps may share a Redis)."""
    redis_stream_maxlen: int = 10_000
    """Entries the Redis stream keeps (approximately): how far a briefly disconnected process can catch up."""
    redis_outbox_max: int = 10_000
    """Events waiting to be written to Redis; beyond, the oldest are dropped and counted."""
    redis_backplane: str = "stream"
    """How events cross processes: ``stream`` (every process reads the app's one stream) or
    ``interest`` (a process receives only the topics its own subscribers match; see the
    README, "Interest-based backplane")."""
    actor_call_timeout: float = 10.0
    """Default wait of a domain-actor call's ``future.get()``; past it the call fails with ``ActorTimeout``."""
    actor_mailbox_max: int = 10_000
    """Messages queued for one domain actor; past it ``tell``/``ask`` fail at once with ``ActorOverloaded``."""
    actor_lease: float = 5.0
    """Seconds a domain actor's lease in Redis lives without renewal (renewed every third of it):
    how soon an actor whose process died can be activated in another one."""
    presence_batch: float = 0.05
    """Seconds over which presence changes of one topic are coalesced into one ``presence:diff``
    push per member (per topic, per window)."""
    presence_refresh: float = 10.0
    """Seconds between a process's refreshes of its presence heartbeat and entries in Redis."""
    presence_down_after: float = 30.0
    """Seconds without a refresh after which a process counts as dead (its heartbeat's TTL in
    Redis): a survivor then removes its presence entries, publishing one leave each."""
    recovery_window: float = 120.0
    """Seconds after a disconnect during which an opted-in client can resume its session
    (connection-state recovery); later it answers ``unknown_session``."""
    recovery_history: int = 1000
    """Events kept per recoverable topic; a resume from further back answers ``too_many``."""
    recoverable: tuple[str, ...] = ()
    """Topic patterns whose client events are recoverable (``rooms/*``), besides those given
    to ``flamigo.recoverable()``."""
    inspect_enabled: bool = False
    """Serve the JSON inspection endpoint and the live dashboard."""
    admin_token: str | None = None
    """Token that opens inspection from non-loopback addresses (``Authorization: Bearer``)."""
    serve_client_js: bool = True
    """Serve the browser client at ``/_flamigo/flamigo.js``."""
    check_output: bool | None = None
    """Check replies and pushes against their declared models (a mismatch answers 500 naming the
    strategy or client topic and the field). ``None``: on in debug mode, when ``app.testing``, and
    once the app's ``test_client()`` is used; never costs anything when off."""
    asyncapi_endpoint: bool | None = None
    """Serve the AsyncAPI 3.0 document at ``/_flamigo/asyncapi.json``. ``None``: on in debug mode."""
    metrics: bool = False
    """Serve Prometheus metrics at ``/metrics`` (loopback or ``FLAMIGO_ADMIN_TOKEN``, like inspection)."""
    readiness_grace: float = 1.0
    """Seconds a server keeps serving after SIGTERM with ``/readyz`` answering 503, before the
    drain begins (0 turns it off); taken out of ``FLAMIGO_DRAIN_TIMEOUT``, at most half of it."""
    log_format: str = "text"
    """``text`` (human-readable lines) or ``json`` (one JSON object per line), for the server commands."""

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        overrides: Mapping[str, Any],
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Build settings from ``config``, then ``environ``, then ``overrides``.

        Raises:
            ValueError: an unknown setting in ``config`` or ``overrides``, or a
                value of the wrong type or range. Unknown ``FLAMIGO_*``
                environment variables are only logged.
        """
        names = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in config.items():
            if key.startswith(PREFIX):
                name = key[len(PREFIX):].lower()
                if name not in names:
                    raise ValueError(
                        f"unknown setting {key}: known ones are "
                        + ", ".join(PREFIX + n.upper() for n in sorted(names))
                    )
                values[name] = value
        for key, value in (os.environ if environ is None else environ).items():
            if key.startswith(PREFIX):
                name = key[len(PREFIX):].lower()
                if name in names:
                    values[name] = value
                else:
                    _log.warning("ignoring unknown environment variable %s", key)
        for name, value in overrides.items():
            if name not in names:
                raise ValueError(f"unknown Flamigo option {name!r}: known ones are {sorted(names)}")
            values[name] = value
        for name, value in list(values.items()):
            values[name] = _coerce(name, names[name].type, value)
        settings = cls(**values)
        settings._validate()
        return settings

    def _validate(self) -> None:
        if not self.ws_path.startswith("/"):
            raise ValueError(f"FLAMIGO_WS_PATH must start with '/', got {self.ws_path!r}")
        positive = (
            "max_message_size", "ping_interval", "pong_timeout", "outbound_max_messages",
            "outbound_max_bytes", "mailbox_max_deliveries", "max_pending_requests",
            "strategy_timeout", "listener_max_pending", "publish_sync_timeout",
            "drain_timeout", "close_timeout", "rate_limit_close_after", "header_timeout",
            "redis_stream_maxlen", "redis_outbox_max", "actor_call_timeout", "actor_mailbox_max",
            "actor_lease", "presence_batch", "presence_refresh", "presence_down_after",
            "recovery_window", "recovery_history",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"FLAMIGO_{name.upper()} must be positive, got {getattr(self, name)!r}")
        if self.readiness_grace < 0:
            raise ValueError(f"FLAMIGO_READINESS_GRACE must be 0 or more seconds, got {self.readiness_grace!r}")
        if self.redis_backplane not in ("stream", "interest"):
            raise ValueError(
                f"FLAMIGO_REDIS_BACKPLANE must be 'stream' or 'interest', got {self.redis_backplane!r}"
            )
        if self.log_format not in ("text", "json"):
            raise ValueError(f"FLAMIGO_LOG_FORMAT must be 'text' or 'json', got {self.log_format!r}")
        for name in ("rate_limit", "connect_rate_limit", "rate_limit_burst", "connect_rate_burst"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"FLAMIGO_{name.upper()} must be positive or None, got {value!r}")
        if self.presence_down_after <= self.presence_refresh:
            raise ValueError(
                f"FLAMIGO_PRESENCE_DOWN_AFTER ({self.presence_down_after}) must exceed "
                f"FLAMIGO_PRESENCE_REFRESH ({self.presence_refresh}) or live processes would be "
                "declared dead between two refreshes"
            )
        if self.redis_cluster and not self.redis_url:
            raise ValueError("FLAMIGO_REDIS_CLUSTER is true but FLAMIGO_REDIS_URL is not set: name one node "
                             "of the cluster (e.g. --redis redis://host:7000 --redis-cluster)")
        if self.pong_timeout <= self.ping_interval:
            raise ValueError(
                f"FLAMIGO_PONG_TIMEOUT ({self.pong_timeout}) must exceed "
                f"FLAMIGO_PING_INTERVAL ({self.ping_interval}) or live clients would be dropped"
            )


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    text = str(annotation)
    key = f"FLAMIGO_{name.upper()}"
    optional = "None" in text
    if value is None:
        if optional:
            return None
        raise ValueError(f"{key} may not be None")
    if text.startswith("tuple"):
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise ValueError(f"{key} must be a list of strings, got {value!r}")
        return tuple(str(v) for v in value)
    if text.startswith("bool"):
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
        return value
    if text.startswith("int"):
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be an integer, got {value!r}") from None
    if text.startswith("float"):
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a number, got {value!r}") from None
    if text.startswith("str"):
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a string, got {value!r}")
        return value
    return value

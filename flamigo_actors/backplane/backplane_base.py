"""What the two events backplanes (``streams.py``, ``interest.py``) share: link state and shutdown.

:class:`BackplaneCore` is a base class: the link to Redis (a :class:`~.link.RedisLink`),
its state as seen by inspection, the account of losing and regaining Redis in the
logs, and the shutdown that flushes the outbox first. A subclass provides ``_out``
(the outbox and sender of ``streams.py``), ``stats``, ``url``, ``outbox_max`` and
``greenlets()``. Guarantees: :meth:`close` is idempotent, waits at most ``timeout`` for
the outbox to drain while Redis answers, counts what is left as ``failed`` and leaves
no greenlet or connection behind.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent

from .link import RedisLink, redact

__all__ = ["BackplaneCore"]

_log = logging.getLogger("flamigo_actors.backplane")


class BackplaneCore:
    """Link state, fault logging and shutdown of an events backplane (see the module docstring)."""

    link: RedisLink
    url: str
    outbox_max: int
    stats: Any
    _out: Any
    _closed: bool

    @property
    def connected(self) -> bool:
        """Whether the link to Redis is up right now."""
        return self.link.up.is_set()

    @property
    def last_error(self) -> str | None:
        """The last Redis error seen (for inspection)."""
        return self.link.last_error

    @last_error.setter
    def last_error(self, value: str | None) -> None:
        self.link.last_error = value

    @property
    def _link_errors(self) -> tuple[type[BaseException], ...]:
        return self.link.link_errors

    @property
    def _redis_error(self) -> type[BaseException]:
        return self.link.redis_error

    @property
    def pending(self) -> int:
        """Events waiting in the outbox (or on the wire) to be written to Redis."""
        return int(self._out.pending)

    def greenlets(self) -> list[gevent.Greenlet]:
        """The backplane's live greenlets (none once closed)."""
        raise NotImplementedError

    def _stopping(self) -> None:
        """Called by :meth:`close` once the outbox is flushed, before the greenlets are killed."""

    def close(self, timeout: float = 2.0) -> None:
        """Flush the outbox (while Redis is reachable, within ``timeout``), then stop.

        Events still queued afterwards are counted in ``stats.failed``. No
        greenlet of the backplane is left running. Idempotent.
        """
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        while self.pending and self.link.up.is_set() and time.monotonic() < deadline:
            gevent.sleep(0.01)
        self._closed = True
        self._stopping()
        gevent.killall(self.greenlets(), block=True, timeout=max(0.1, deadline - time.monotonic()))
        left = self._out.drop_all()
        if left:
            self.stats.failed += left
            _log.warning("backplane: %d events not sent to Redis at shutdown", left)
        self.link.close()

    def _warn_local_only(self) -> None:
        _log.warning(
            "!!! REDIS UNREACHABLE at %s (%s): starting LOCAL-ONLY because "
            "FLAMIGO_REDIS_REQUIRED=false. Events published here reach only this "
            "process's clients, and other processes' events do not arrive, until Redis "
            "is reachable; retrying with backoff.",
            redact(self.url), self.link.last_error,
        )

    def _lost(self, err: BaseException) -> None:
        self.link.lost(err)  # once per outage, the link calls _on_lost and starts reconnecting

    def _on_lost(self) -> None:
        if self._closed:
            return
        _log.error(
            "backplane: lost Redis at %s (%s): local delivery goes on; events for other "
            "processes wait in the outbox (up to %d); reconnecting with backoff",
            redact(self.url), self.link.last_error, self.outbox_max,
        )

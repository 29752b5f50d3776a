"""The dashboard's history: the last 10 minutes of a few numbers, sampled every second.

With ``FLAMIGO_INSPECT_ENABLED``, a greenlet samples once a second, into a
ring buffer of :data:`SAMPLES` entries (about 50 KB), kept server-side so a
dashboard opened now shows the minutes before it: connections open,
requests/s, deliveries/s (bus events delivered), p99 strategy time (ms, over
the strategies that ended in that second; ``None`` when none did) and
refusals/s (upgrades refused, slow consumers, rate-limited requests, dropped
frames, listener overflows). The inspection JSON carries it as ``history``.

Cost: one sample a second (a few counter reads and a sort of that second's
strategy durations, at most 4096 of them); nothing per message beyond the
meter's own (see :mod:`flamigo_actors.ops.meter`). A sampling error is
logged and the next second tries again.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

import gevent

from .meter import Meter

if TYPE_CHECKING:
    from .host import Host

__all__ = ["SAMPLES", "History", "history_of"]

SAMPLES = 600
"""Samples kept: 10 minutes at one a second."""
INTERVAL = 1.0

_log = logging.getLogger("flamigo_actors.history")

_histories: weakref.WeakKeyDictionary[Any, History] = weakref.WeakKeyDictionary()


def history_of(flamigo: Host) -> History | None:
    """The dashboard history of ``flamigo`` (``None`` without ``FLAMIGO_INSPECT_ENABLED``)."""
    return _histories.get(flamigo)


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class History:
    """A ring buffer of one-second samples of ``flamigo``'s activity."""

    def __init__(self, flamigo: Host, meter: Meter, clock: Any = time.monotonic) -> None:
        self.flamigo = flamigo
        self.meter = meter
        self.samples: deque[dict[str, Any]] = deque(maxlen=SAMPLES)
        self._clock = clock
        self._previous: tuple[float, dict[str, int]] | None = None
        self._greenlet: gevent.Greenlet | None = None
        _histories[flamigo] = self
        meter.keep_durations()

    def _totals(self) -> dict[str, int]:
        stats, bus = self.flamigo.stats, self.flamigo.bus.stats
        return {
            "requests": stats.messages_in,
            "deliveries": bus.delivered,
            "refusals": stats.connections_refused + stats.slow_consumers + stats.rate_limited
            + stats.frames_dropped + bus.refused,
        }

    def sample(self) -> dict[str, Any]:
        """Take one sample now (rates since the previous one) and keep it."""
        now, totals = self._clock(), self._totals()
        previous = self._previous
        self._previous = (now, totals)
        p99 = _percentile(self.meter.take_durations(), 0.99)
        row: dict[str, Any] = {
            "t": round(time.time(), 3),
            "connections": len(self.flamigo.connections),
            "p99_ms": None if p99 is None else round(p99 * 1000, 3),
        }
        elapsed = now - previous[0] if previous is not None else 0.0
        for key, value in totals.items():
            row[f"{key}_per_s"] = (
                round((value - previous[1][key]) / elapsed, 1) if previous is not None and elapsed > 0 else 0.0
            )
        self.samples.append(row)
        return row

    def rows(self) -> list[dict[str, Any]]:
        """The samples, oldest first (plain data)."""
        return list(self.samples)

    def start(self) -> None:
        """Sample every second in a greenlet until :meth:`stop`."""
        if self._greenlet is None:
            self._previous = None
            self._greenlet = gevent.spawn(self._loop)

    def stop(self) -> None:
        """Stop sampling (the samples stay readable)."""
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=1)
            self._greenlet = None

    def _loop(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - one bad sample must not end the history
                _log.exception("dashboard history: sampling failed")
            gevent.sleep(INTERVAL)

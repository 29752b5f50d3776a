"""The meter: the application's :class:`~flamigo_actors.runtime.instruments.Instruments`.

Installed on the hub (and the Redis backplane) when ``FLAMIGO_METRICS`` or
``FLAMIGO_INSPECT_ENABLED`` is on; otherwise the runtime measures nothing.
Per observation it does a dict increment and a list append (plus, with
metrics on, one Prometheus histogram observation): no I/O, no logging, no
greenlet switch, and it never raises into a request.

* strategy calls are counted by (registered strategy name, status): the
  metrics export them as ``flamigo_strategy_calls_total``;
* the durations of the current second are kept (at most :data:`WINDOW_MAX`)
  for the dashboard's p99; :meth:`Meter.take_durations` hands them over;
* ``histograms`` (set by :mod:`flamigo_actors.ops.metrics`) receive the
  strategy durations, mailbox waits and backplane lags.
"""

from __future__ import annotations

from typing import Any

__all__ = ["WINDOW_MAX", "Meter"]

WINDOW_MAX = 4096
"""Strategy durations kept per sampling interval (more are counted, not kept)."""


class Meter:
    """Counts and recent durations of strategy calls; feeds the Prometheus histograms when set."""

    def __init__(self) -> None:
        self.strategy_calls: dict[tuple[str, int], int] = {}
        """Calls by (strategy name, status); names come from the registry (a closed set)."""
        self.durations: list[float] = []
        self.strategy_histogram: Any = None
        """A ``prometheus_client`` Histogram labelled by strategy, or ``None``."""
        self.mailbox_histogram: Any = None
        self.lag_histogram: Any = None
        self._children: dict[str, Any] = {}

    def strategy_done(self, name: str, status: int, seconds: float) -> None:
        """Count a strategy call and keep its duration."""
        key = (name, status)
        calls = self.strategy_calls
        calls[key] = calls.get(key, 0) + 1
        if len(self.durations) < WINDOW_MAX:
            self.durations.append(seconds)
        histogram = self.strategy_histogram
        if histogram is not None:
            child = self._children.get(name)
            if child is None:
                child = self._children[name] = histogram.labels(name)
            child.observe(seconds)

    def mailbox_wait(self, seconds: float) -> None:
        """Observe a request's wait in its connection's mailbox."""
        if self.mailbox_histogram is not None:
            self.mailbox_histogram.observe(seconds)

    def backplane_lag(self, seconds: float) -> None:
        """Observe how late an event from another process arrived."""
        if self.lag_histogram is not None:
            self.lag_histogram.observe(seconds)

    def take_durations(self) -> list[float]:
        """The strategy durations kept since the last call (and start a new window)."""
        taken, self.durations = self.durations, []
        return taken

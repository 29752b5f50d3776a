"""The meter: the application's :class:`~flamigo_actors.runtime.instruments.Instruments`.

Installed on the hub (and the Redis backplane) when ``FLAMIGO_METRICS`` or
``FLAMIGO_INSPECT_ENABLED`` is on; otherwise the runtime measures nothing.

Per observation it does a bisect and two additions into plain Python
lists (:class:`Buckets`), a dict increment, and a list append for the
dashboard's p99: no lock, no I/O, no logging, no greenlet switch, and it
never raises into a request. (A ``prometheus_client`` histogram observation
takes a lock per bucket and per sum, gevent's lock once monkey-patched:
about 3.5 µs each, measured, where this takes well under 1 µs; so the
metrics copy these buckets into their histograms once a second instead, see
:meth:`flamigo_actors.ops.metrics.Metrics.sync`.)

* strategy calls are counted by (registered strategy name, status);
* their durations go to one :class:`Buckets` per strategy, and those of the
  current second are kept (at most :data:`WINDOW_MAX`) for the dashboard's
  p99 (:meth:`Meter.take_durations`);
* mailbox waits and backplane lags go to one :class:`Buckets` each.
"""

from __future__ import annotations

from bisect import bisect_left

__all__ = ["LAG_BUCKETS", "STRATEGY_BUCKETS", "WAIT_BUCKETS", "WINDOW_MAX", "Buckets", "Meter"]

WINDOW_MAX = 4096
"""Strategy durations kept per sampling interval (more are counted, not kept)."""

STRATEGY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0)


class Buckets:
    """A histogram's running counts: ``counts[i]`` observations ``<= bounds[i]`` (and above
    the previous bound); the last one counts those above every bound."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` (seconds)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


class Meter:
    """Counts and durations of strategy calls, mailbox waits and backplane lags."""

    def __init__(self) -> None:
        self.strategy_time: dict[tuple[str, int], Buckets] = {}
        """Durations by (strategy name, status): the calls are their counts. Names come from
        the registry and statuses are HTTP-like (closed sets)."""
        self.mailbox = Buckets(WAIT_BUCKETS)
        self.lag = Buckets(LAG_BUCKETS)
        self.durations: list[float] | None = None
        """The durations of the current window; ``None`` (not kept) until :meth:`keep_durations`."""

    def keep_durations(self) -> None:
        """Keep each window's strategy durations for :meth:`take_durations` (the dashboard's p99)."""
        if self.durations is None:
            self.durations = []

    def strategy_done(self, name: str, status: int, seconds: float) -> None:
        """Count a strategy call and its duration (inlined :meth:`Buckets.observe`: a hot path)."""
        buckets = self.strategy_time.get((name, status))
        if buckets is None:
            buckets = self.strategy_time[(name, status)] = Buckets(STRATEGY_BUCKETS)
        buckets.counts[bisect_left(STRATEGY_BUCKETS, seconds)] += 1
        buckets.total += seconds
        durations = self.durations
        if durations is not None and len(durations) < WINDOW_MAX:
            durations.append(seconds)

    def strategy_calls(self) -> dict[tuple[str, int], int]:
        """Calls so far by (strategy name, status)."""
        return {key: sum(b.counts) for key, b in list(self.strategy_time.items())}

    def mailbox_wait(self, seconds: float) -> None:
        """Count a request's wait in its connection's mailbox."""
        mailbox = self.mailbox
        mailbox.counts[bisect_left(WAIT_BUCKETS, seconds)] += 1
        mailbox.total += seconds

    def backplane_lag(self, seconds: float) -> None:
        """Count how late an event from another process arrived."""
        self.lag.observe(seconds)

    def take_durations(self) -> list[float]:
        """The strategy durations kept since the last call (and start a new window)."""
        taken, self.durations = self.durations or [], []
        return taken

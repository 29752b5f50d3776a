"""The meter: the application's :class:`~flamigo_actors.runtime.instruments.Instruments`.

Installed on the hub (and the Redis backplane) when ``FLAMIGO_METRICS`` or
``FLAMIGO_INSPECT_ENABLED`` is on; otherwise the runtime measures nothing.

Per request it appends two floats to plain lists (the mailbox wait, and the
strategy's duration to its strategy's list when it answered 200; any other
status appends one small tuple): no lock, no bucket search, no I/O, no
logging, no greenlet switch, and it never raises into a request. The lists
are binned into the histograms' running counts (:class:`Buckets`) in batches
(:meth:`Meter.flush`): at every read (:meth:`Meter.strategy_calls`, the
metrics' sync), and, so they stay small, in a hub callback once
:data:`FLUSH_AT` observations are pending (after the running greenlet
yields: a request's reply is written first). A batch is sorted once and
counted with one bisect per bucket bound instead of one per observation.
Counts are exact: every observation is binned before anything reads them.
(A ``prometheus_client`` histogram observation takes a lock per bucket and
per sum, gevent's lock once monkey-patched: about 3.5 µs each, measured; so
the metrics copy these buckets into their histograms once a second instead,
see :meth:`flamigo_actors.ops.metrics.Metrics.sync`.)

* strategy calls are counted by (registered strategy name, status);
* their durations go to one :class:`Buckets` per (strategy, status), and
  those of the current second are kept (at most :data:`WINDOW_MAX`) for the
  dashboard's p99 (:meth:`Meter.take_durations`);
* mailbox waits and backplane lags go to one :class:`Buckets` each.

A flush called back by the hub never raises into it (it only sorts and
counts floats; were it to fail, that batch would be missing from the
histograms and the failure logged).
"""

from __future__ import annotations

import logging
from bisect import bisect_left, bisect_right
import gevent

__all__ = ["FLUSH_AT", "LAG_BUCKETS", "STRATEGY_BUCKETS", "WAIT_BUCKETS", "WINDOW_MAX", "Buckets", "Meter"]

_log = logging.getLogger("flamigo_actors.metrics")

FLUSH_AT = 1024
"""Pending observations that schedule a flush (bounds the meter's lists between reads)."""

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

    def observe_all(self, values: list[float]) -> None:
        """Count every one of ``values`` (sorts ``values`` in place): one bisect per bound,
        not per value; the same counts as :meth:`observe` on each."""
        if not values:
            return
        values.sort()
        counts = self.counts
        below = 0
        for i, bound in enumerate(self.bounds):
            upto = bisect_right(values, bound, below)  # values <= bound, as bisect_left on bounds
            counts[i] += upto - below
            below = upto
        counts[-1] += len(values) - below
        self.total += sum(values)


class Meter:
    """Counts and durations of strategy calls, mailbox waits and backplane lags."""

    def __init__(self) -> None:
        self.strategy_time: dict[tuple[str, int], Buckets] = {}
        """Durations by (strategy name, status): the calls are their counts. Names come from
        the registry and statuses are HTTP-like (closed sets). Read it after :meth:`flush`."""
        self.mailbox = Buckets(WAIT_BUCKETS)
        self.lag = Buckets(LAG_BUCKETS)
        self.durations: list[float] | None = None
        """The durations of the current window; ``None`` (not kept) until :meth:`keep_durations`."""
        # Observations not binned yet: 200s by strategy name, other statuses as
        # (name, status, seconds), mailbox waits; and how many in all.
        self._ok: dict[str, list[float]] = {}
        self._other: list[tuple[str, int, float]] = []
        self._waits: list[float] = []
        self._pending = 0
        self._flush_scheduled = False

    def keep_durations(self) -> None:
        """Keep each window's strategy durations for :meth:`take_durations` (the dashboard's p99)."""
        if self.durations is None:
            self.durations = []

    def strategy_done(self, name: str, status: int, seconds: float) -> None:
        """Count a strategy call and its duration (a hot path: an append, binned later)."""
        if status == 200:
            pending = self._ok.get(name)
            if pending is None:
                pending = self._ok[name] = []
            pending.append(seconds)
        else:
            self._other.append((name, status, seconds))
        durations = self.durations
        if durations is not None and len(durations) < WINDOW_MAX:
            durations.append(seconds)
        self._pending += 1
        if self._pending >= FLUSH_AT and not self._flush_scheduled:
            self._schedule_flush()

    def mailbox_wait(self, seconds: float) -> None:
        """Count a request's wait in its connection's mailbox (a hot path: an append, binned later)."""
        self._waits.append(seconds)
        self._pending += 1
        if self._pending >= FLUSH_AT and not self._flush_scheduled:
            self._schedule_flush()

    def backplane_lag(self, seconds: float) -> None:
        """Count how late an event from another process arrived."""
        self.lag.observe(seconds)

    def _schedule_flush(self) -> None:
        self._flush_scheduled = True
        try:  # after the running greenlet yields (its reply is written by then)
            gevent.get_hub().loop.run_callback(self._flush_quietly)
        except Exception:  # noqa: BLE001 - no hub to call back: bin now rather than grow
            self.flush()

    def _flush_quietly(self) -> None:
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - never into the hub
            _log.exception("metrics: binning a batch of observations failed")

    def flush(self) -> None:
        """Bin the pending observations into the buckets (every read calls this first)."""
        self._flush_scheduled = False
        if not self._pending:
            return
        ok, other, waits = self._ok, self._other, self._waits
        self._ok, self._other, self._waits, self._pending = {}, [], [], 0
        for name, values in ok.items():
            self._buckets(name, 200).observe_all(values)
        for name, status, seconds in other:
            self._buckets(name, status).observe(seconds)
        self.mailbox.observe_all(waits)

    def _buckets(self, name: str, status: int) -> Buckets:
        buckets = self.strategy_time.get((name, status))
        if buckets is None:
            buckets = self.strategy_time[(name, status)] = Buckets(STRATEGY_BUCKETS)
        return buckets

    def strategy_calls(self) -> dict[tuple[str, int], int]:
        """Calls so far by (strategy name, status)."""
        self.flush()
        return {key: sum(b.counts) for key, b in list(self.strategy_time.items())}

    def take_durations(self) -> list[float]:
        """The strategy durations kept since the last call (and start a new window)."""
        taken, self.durations = self.durations or [], []
        return taken

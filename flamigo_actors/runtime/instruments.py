"""Instruments: where the runtime reports measurements it would not otherwise take.

The WebSocket interface and the backplane hold an optional :class:`Instruments`
(``None`` unless ``FLAMIGO_METRICS`` is on; :mod:`flamigo_actors.ops.metrics`
provides one). With ``None`` nothing is measured: no clock read, no call, on
any hot path; the existing counters (``FlamigoStats``, ``BusStats``...) are
read by the metrics at scrape time instead. An instrument must be cheap and
must never raise (a failing instrument would fail a request).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Instruments"]


class Instruments(Protocol):
    """Observation points for histograms (durations in seconds)."""

    def strategy_done(self, name: str, status: int, seconds: float) -> None:
        """A strategy served over WebSocket ended with ``status`` (200, or its error's status)."""
        ...

    def mailbox_wait(self, seconds: float) -> None:
        """A request waited this long in its connection actor's mailbox before being served."""
        ...

    def backplane_lag(self, seconds: float) -> None:
        """An event from another process reached this one this long after Redis stored it."""
        ...

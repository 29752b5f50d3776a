"""Connection-state recovery and presence in ``/metrics`` (a part of :class:`~flamigo_actors.ops.metrics.Metrics`).

Exported (prefix ``flamigo_``; see the README's Operations section):

* ``recovery_sessions_total``: sessions opened (clients that opted in);
* ``recovery_resumes_total{outcome}``: ``recovered`` (every stream),
  ``not_recovered`` (some stream not: see the next one), ``unknown_session``
  (unknown or past ``FLAMIGO_RECOVERY_WINDOW``), ``forbidden`` (another user's
  session: 403);
* ``recovery_streams_total{result}``: per stream of a resume, ``recovered``,
  ``epoch_mismatch``, ``too_many``, ``expired`` or ``unavailable``;
* ``recovery_replayed_total`` (missed events sent after resumes),
  ``recovery_duplicates_dropped_total`` (pushes a client already had),
  ``recovery_cached_replies_total`` (retried requests answered from the cache);
* ``presence_entries{namespace}`` (gauge): this process's presence entries by
  topic namespace, the topic's first segment (``rooms`` of ``rooms/lobby``);
* ``presence_diffs_total`` (diff frames built), ``presence_diff_pushes_total``;
* ``presence_redis_total{event}`` (with Redis): ``written``, ``published``,
  ``received``, ``reaped`` (entries of dead processes removed here),
  ``dropped`` (diffs dropped from a full outbox), ``errors``, ``resyncs``.

Guarantees: every label comes from a closed set. Namespaces are the app's
own words, so they are bounded too: the first :data:`MAX_NAMESPACES` seen by a
process get a label each, any further one is counted under ``other`` (and
logged once). The values are the runtime's own counters, copied at each sync:
nothing is added to the request or push paths. Failures are the caller's
(:meth:`Metrics.sync` logs them and goes on).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..runtime.recovery import RESUME_OUTCOMES, STREAM_RESULTS

if TYPE_CHECKING:
    from .host import Host

__all__ = ["MAX_NAMESPACES", "StateMetrics"]

MAX_NAMESPACES = 32
"""Topic namespaces with a label of their own in ``flamigo_presence_entries`` (per process)."""

OTHER = "other"

STORE_EVENTS = ("written", "published", "received", "reaped", "dropped", "errors", "resyncs")
"""The Redis presence store's counters (``RedisPresence.stats``)."""

_log = logging.getLogger("flamigo_actors.metrics")

Advance = Callable[[Any, Any, float], None]
"""``advance(counter, key, running_total)``: moves a counter to the runtime's total."""


class StateMetrics:
    """The recovery and presence metrics, in ``registry``."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return Counter(f"flamigo_{name}", doc, list(labels), registry=registry)

        self.sessions = counter("recovery_sessions", "Recovery sessions opened (clients that opted in).")
        self.resumes = counter("recovery_resumes", "Resumes by outcome (recovered, not_recovered, "
                                                   "unknown_session, forbidden).", ("outcome",))
        self.streams = counter("recovery_streams", "Streams of resumes by result (recovered, epoch_mismatch, "
                                                   "too_many, expired, unavailable).", ("result",))
        self.replayed = counter("recovery_replayed", "Missed events sent to clients after resumes.")
        self.duplicates = counter("recovery_duplicates_dropped", "Pushes dropped: the client already had them.")
        self.cached = counter("recovery_cached_replies", "Retried requests answered from a session's reply cache.")
        self.entries = Gauge("flamigo_presence_entries", "Presence entries by topic namespace (first segment).",
                             ["namespace"], registry=registry, multiprocess_mode="livesum")
        self.diffs = counter("presence_diffs", "Presence diff frames built (one per topic per window).")
        self.pushes = counter("presence_diff_pushes", "Presence diff pushes delivered to members.")
        self.store = counter("presence_redis", "Redis presence store events (written, published, received, "
                                               "reaped, dropped, errors, resyncs).", ("event",))
        for outcome in RESUME_OUTCOMES:  # every series from the start, at 0
            self.resumes.labels(outcome)
        for result in STREAM_RESULTS:
            self.streams.labels(result)
        self._namespaces: set[str] = set()
        self._warned = False

    def _namespace(self, name: str) -> str:
        if name in self._namespaces:
            return name
        if len(self._namespaces) < MAX_NAMESPACES:
            self._namespaces.add(name)
            return name
        if not self._warned:
            self._warned = True
            _log.warning("metrics: more than %d presence topic namespaces: the others are counted as %r",
                         MAX_NAMESPACES, OTHER)
        return OTHER

    def sync(self, flamigo: Host, advance: Advance) -> None:
        """Copy the recovery and presence counters of ``flamigo`` (``advance`` moves a counter)."""
        stats = flamigo.recovery.stats
        advance(self.sessions, "rec_sessions", stats.sessions)
        for outcome, count in list(stats.resumes.items()):
            advance(self.resumes.labels(outcome), ("rec_resume", outcome), count)
        for result, count in list(stats.streams.items()):
            advance(self.streams.labels(result), ("rec_stream", result), count)
        advance(self.replayed, "rec_replayed", stats.replayed)
        advance(self.duplicates, "rec_duplicates", stats.duplicates)
        advance(self.cached, "rec_cached", stats.cached_replies)
        presence = flamigo.presence
        counts: dict[str, int] = {}
        for name, count in presence.entries_by_namespace().items():
            label = self._namespace(name)
            counts[label] = counts.get(label, 0) + count
        for label in self._namespaces | ({OTHER} if self._warned else set()):
            self.entries.labels(label).set(counts.get(label, 0))
        advance(self.diffs, "pr_diffs", presence.diffs)
        advance(self.pushes, "pr_pushes", presence.pushes)
        store_stats = getattr(presence.store, "stats", None)
        if isinstance(store_stats, dict):
            for event in STORE_EVENTS:
                advance(self.store.labels(event), ("pr_store", event), store_stats.get(event, 0))

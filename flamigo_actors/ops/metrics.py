"""Prometheus metrics: ``GET /metrics`` in the text exposition format (``FLAMIGO_METRICS``).

What is exported (prefix ``flamigo_``, base units, ``_total`` counters):
connections open, opened and closed (by close reason), refused upgrades,
actors by kind, frames and bytes in and out, strategy calls (by strategy and
status) and their duration, the wait of requests in connection mailboxes,
bus events published, delivered and refused, slow-consumer disconnects and
other refusals (by reason), the Redis backplane (sent, received, failed,
missed, connected, lag), domain actors (activations, passivations, restarts,
active by kind), connection-state recovery (resumes by outcome, streams by
result...) and presence (entries by topic namespace, diffs; see
:mod:`flamigo_actors.ops.metrics_state`) and ``flamigo_build_info``.

Guarantees:

* **Bounded cardinality**: label values come only from closed sets (the
  registered strategy names, close-reason names, HTTP-like statuses, actor
  kinds, refusal reasons); never a topic, a user or a connection id.
* **Off the hot paths**: counters already kept by the runtime (hub, bus,
  backplane, actor space) are copied into ``prometheus_client`` metrics by
  :meth:`Metrics.sync`: at every scrape, and with several workers once a
  second by a greenlet (counters advance by the delta since the last sync). The histograms' per
  event observations go to the meter's lock-free buckets
  (:mod:`flamigo_actors.ops.meter`), copied into the histograms the same way.
* **Many workers**: when ``PROMETHEUS_MULTIPROC_DIR`` is set (the workers'
  arbiter sets it, to a fresh directory), values live in prometheus_client's
  per-process files and a scrape of any worker returns the sum over the
  workers (gauges: live workers only). Known limits of that mode: a scrape
  sees other workers' values as of their last sync (up to a second old); the
  counters of a dead worker stay in the sum (as they should for counters)
  while its gauges are dropped; the files grow with worker restarts until the
  arbiter restarts.

Who may scrape: as for the inspection endpoint (loopback, or
``Authorization: Bearer <FLAMIGO_ADMIN_TOKEN>``); refusals answer 403.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Iterable
from importlib import metadata
from typing import TYPE_CHECKING, Any

import gevent
import pykka
from flask import Flask, Response, jsonify, request

from .dashboard import access_refusal
from .meter import LAG_BUCKETS, STRATEGY_BUCKETS, WAIT_BUCKETS, Buckets, Meter
from .metrics_state import StateMetrics

if TYPE_CHECKING:
    from .host import Host

__all__ = ["METRICS_PATH", "Metrics", "close_reason", "register_metrics"]

METRICS_PATH = "/metrics"
SYNC_INTERVAL = 1.0
"""Seconds between two copies of the runtime's counters into the metrics."""

_log = logging.getLogger("flamigo_actors.metrics")

CLOSE_REASONS = {
    1000: "normal", 1001: "going_away", 1002: "protocol_error", 1003: "unsupported_data",
    1005: "no_status", 1006: "abnormal", 1007: "invalid_payload", 1008: "policy_violation",
    1009: "message_too_big", 1010: "mandatory_extension", 1011: "internal_error",
    1012: "service_restart", 1013: "try_again_later", 4000: "kicked",
}

REFUSED_UPGRADES = {503: "draining", 403: "origin", 429: "rate_limited"}


def close_reason(code: int) -> str:
    """The label of close ``code``: a name for the standard ones, ``application`` for 4000-4999."""
    name = CLOSE_REASONS.get(code)
    if name is not None:
        return name
    return "application" if 4000 <= code <= 4999 else "other"


def _status_label(status: int) -> str:
    return str(status) if 100 <= status <= 599 else "other"


def multiprocess_dir() -> str | None:
    """prometheus_client's multiprocess directory, when this process is one of several workers."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The application's Prometheus metrics, in their own registry (several apps may share a process)."""

    def __init__(self, flamigo: Host, meter: Meter) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.flamigo = flamigo
        self.meter = meter
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self._last: dict[Any, Any] = {}  # running totals at the last sync
        self._kinds_seen: set[str] = {"connection", "bus"}  # reported (maybe 0) from the start
        self._greenlet: gevent.Greenlet | None = None

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Any:
            return Counter(f"flamigo_{name}", doc, list(labels), registry=registry)

        def gauge(name: str, doc: str, labels: Iterable[str] = (), mode: Any = "livesum") -> Any:
            return Gauge(f"flamigo_{name}", doc, list(labels), registry=registry, multiprocess_mode=mode)

        self.build_info = gauge("build_info", "flamigo_actors version and Python.", ("version", "python"), "livemax")
        self.build_info.labels(_version(), platform.python_version()).set(1)
        self.connections = gauge("connections", "WebSocket connections open.")
        self.opened = counter("connections_opened", "WebSocket connections accepted.")
        self.closed = counter("connections_closed", "WebSocket connections ended, by close reason.", ("reason",))
        self.refused = counter("connections_refused", "Upgrades refused before the handshake, by reason.", ("reason",))
        self.actors = gauge("actors", "Live actors by kind (connection, bus, domain:<Kind>...).", ("kind",))
        self.frames = counter("frames", "WebSocket frames by direction (in, out).", ("direction",))
        self.bytes = counter("bytes", "WebSocket bytes by direction (in: payloads; out: frames).", ("direction",))
        self.strategy_calls = counter(
            "strategy_calls", "Strategies served over WebSocket, by strategy and status.", ("strategy", "status"))
        self.strategy_time = Histogram(
            "flamigo_strategy_duration_seconds", "Time strategies ran over WebSocket (until they returned).",
            ["strategy"], registry=registry, buckets=STRATEGY_BUCKETS)
        self.mailbox_wait = Histogram(
            "flamigo_mailbox_wait_seconds", "Time requests waited in their connection actor's mailbox.",
            registry=registry, buckets=WAIT_BUCKETS)
        self.backplane_lag = Histogram(
            "flamigo_backplane_lag_seconds", "Time from Redis storing an event of another process to its reading here.",
            registry=registry, buckets=LAG_BUCKETS)
        self.events = counter("bus_events", "Bus events by outcome (published, delivered, remote).", ("outcome",))
        self.slow_consumers = counter("slow_consumer_disconnects", "Connections closed (1013) for reading too slowly.")
        self.refusals = counter("refusals", "Work refused, by reason.", ("reason",))
        self.backplane = counter(
            "backplane_events", "Redis backplane events by outcome (sent, received, failed, missed).", ("outcome",))
        self.backplane_up = gauge("backplane_connected", "Workers whose link to Redis is up.")
        self.domain = counter(
            "domain_actor_events", "Domain actor lifecycle events (activation, passivation, restart).", ("event",))
        self.state = StateMetrics(registry)  # recovery and presence

    # -- syncing -------------------------------------------------------------------

    def _advance(self, metric: Any, key: Any, value: float) -> None:
        """Advance counter ``metric`` to the runtime's running total ``value``."""
        last = self._last.get(key, 0)
        if value > last:
            metric.inc(value - last)
        self._last[key] = value

    def _transfer(self, histogram: Any, key: Any, buckets: Buckets) -> None:
        """Advance ``histogram`` (a prometheus_client Histogram or child) to the meter's ``buckets``.

        prometheus_client has no public call to add counts in bulk; its value objects
        (``_buckets``, ``_sum``: per-process files in multiprocess mode) take ``inc``.
        tests/test_metrics.py checks they are still there.
        """
        counts, total = list(buckets.counts), buckets.total
        last_counts, last_total = self._last.get(key, ([0] * len(counts), 0.0))
        for value, count, before in zip(histogram._buckets, counts, last_counts):
            if count > before:
                value.inc(count - before)
        if total > last_total:
            histogram._sum.inc(total - last_total)
        self._last[key] = (counts, total)

    def sync(self) -> None:
        """Copy the runtime's counters and gauges into the metrics (cheap: no per-connection work
        except counting actors by kind)."""
        flamigo = self.flamigo
        stats, bus = flamigo.stats, flamigo.bus.stats
        advance = self._advance
        self.connections.set(len(flamigo.connections))
        advance(self.opened, "opened", stats.connections_opened)
        for code, count in list(stats.closed_by_code.items()):
            reason = close_reason(code)
            advance(self.closed.labels(reason), ("closed", code), count)
        for status, count in list(stats.refused_by_status.items()):
            advance(self.refused.labels(REFUSED_UPGRADES.get(status, "other")), ("refused", status), count)
        advance(self.frames.labels("in"), "frames_in", stats.messages_in)
        advance(self.frames.labels("out"), "frames_out", stats.messages_out)
        advance(self.bytes.labels("in"), "bytes_in", stats.bytes_in)
        advance(self.bytes.labels("out"), "bytes_out", stats.bytes_out)
        meter = self.meter
        meter.flush()  # bin what is pending: the histograms below are then exact
        for (name, status), count in meter.strategy_calls().items():
            advance(self.strategy_calls.labels(name, _status_label(status)), ("call", name, status), count)
        for (name, status), buckets in list(meter.strategy_time.items()):  # one histogram per strategy
            self._transfer(self.strategy_time.labels(name), ("time", name, status), buckets)
        self._transfer(self.mailbox_wait, "mailbox", meter.mailbox)
        self._transfer(self.backplane_lag, "lag", meter.lag)
        advance(self.events.labels("published"), "published", bus.published)
        advance(self.events.labels("delivered"), "delivered", bus.delivered)
        advance(self.events.labels("remote"), "remote", bus.remote_received)
        advance(self.slow_consumers, "slow", stats.slow_consumers)
        space = flamigo.actors.stats
        for reason, value in (
            ("rate_limited", stats.rate_limited), ("frame_dropped", stats.frames_dropped),
            ("listener_overflow", bus.refused), ("bus_deadlock", bus.deadlocks),
            ("actor_overload", space.overloads), ("actor_deadlock", space.deadlocks),
        ):
            advance(self.refusals.labels(reason), ("refusal", reason), value)
        for event, value in (
            ("activation", space.activations), ("passivation", space.passivations),
            ("restart", space.restarts), ("down", space.downs),
        ):
            advance(self.domain.labels(event), ("domain", event), value)
        backplane: Any = flamigo.bus.backplane  # the Redis backplane (stats, connected)
        if backplane is not None:
            counts = backplane.stats
            for outcome in ("sent", "received", "failed", "missed"):
                advance(self.backplane.labels(outcome), ("backplane", outcome), getattr(counts, outcome))
            self.backplane_up.set(1 if backplane.connected else 0)
        self.state.sync(flamigo, advance)
        self._sync_actors()

    def _sync_actors(self) -> None:
        kinds: dict[str, int] = {}
        for ref in pykka.ActorRegistry.get_all():
            kind = str(getattr(ref.actor_class, "kind", ref.actor_class.__name__))
            kinds[kind] = kinds.get(kind, 0) + 1
        for name, count in self.flamigo.actors.counts().items():
            kinds[f"domain:{name}"] = count
        for kind in self._kinds_seen - kinds.keys():
            self.actors.labels(kind).set(0)
        for kind, count in kinds.items():
            self.actors.labels(kind).set(count)
        self._kinds_seen |= kinds.keys()

    def start(self) -> None:
        """With several workers, sync once a second in a greenlet (the scrapes other workers
        answer read this process's files); one process alone syncs at each scrape only."""
        if self._greenlet is None and multiprocess_dir() is not None:
            self._greenlet = gevent.spawn(self._loop)

    def stop(self) -> None:
        """Stop the sync greenlet (after a last sync)."""
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=1)
            self._greenlet = None
            self._sync_quietly()

    def _loop(self) -> None:
        while True:
            gevent.sleep(SYNC_INTERVAL)
            self._sync_quietly()

    def _sync_quietly(self) -> None:
        try:
            self.sync()
        except Exception:  # noqa: BLE001 - a metrics bug must not end the loop
            _log.exception("metrics: sync failed")

    # -- exposition ------------------------------------------------------------------

    def exposition(self) -> tuple[bytes, str]:
        """The scrape body and its content type (every worker's values in multiprocess mode)."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        self.sync()
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)
        return generate_latest(registry), CONTENT_TYPE_LATEST


def _version() -> str:
    try:
        return metadata.version("flamigo-actors")
    except metadata.PackageNotFoundError:
        return "unknown"


def register_metrics(flamigo: Host, app: Flask, meter: Meter) -> Metrics:
    """Mount ``GET /metrics`` on ``app`` and return the :class:`Metrics` (``init_app`` does this)."""
    metrics = Metrics(flamigo, meter)

    def scrape() -> Response:
        refusal = access_refusal(flamigo, request.environ, request.headers)
        if refusal is not None:
            response = jsonify({"error": refusal})
            response.status_code = 403
            return response
        body, content_type = metrics.exposition()
        response = Response(body, content_type=content_type)
        response.headers["Cache-Control"] = "no-store"
        return response

    app.add_url_rule(METRICS_PATH, "flamigo_metrics", scrape, methods=["GET"])
    return metrics

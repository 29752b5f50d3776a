"""Installing the operations features on an application: one place the extension calls.

:func:`install` (from ``init_app``) mounts ``/readyz`` always, the inspection
endpoint and dashboard with ``FLAMIGO_INSPECT_ENABLED``, ``/metrics`` with
``FLAMIGO_METRICS``, and, when either is on, the meter that the runtime
reports strategy times, mailbox waits and backplane lags to (with both off,
nothing is measured). :func:`start` (from ``flamigo.start()``) starts the
metrics' sync and the dashboard history's sampling greenlets and attaches the
meter to the Redis backplane; :func:`stop` (from ``flamigo.shutdown()``)
stops them. Each is safe to call again.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from flask import Flask

from .dashboard import register_inspection
from .readiness import register_readiness

if TYPE_CHECKING:
    from .history import History
    from .host import Host
    from .metrics import Metrics

__all__ = ["install", "start", "stop"]

_installed: weakref.WeakKeyDictionary[Any, tuple[Metrics | None, History | None]] = weakref.WeakKeyDictionary()


def install(flamigo: Host, app: Flask) -> None:
    """Mount the operations endpoints of ``flamigo`` on ``app`` as its settings ask."""
    settings = flamigo.settings
    register_readiness(flamigo, app)
    register_inspection(flamigo, app)
    if not (settings.metrics or settings.inspect_enabled):
        return
    from .history import History
    from .meter import Meter

    meter = Meter()
    flamigo.hub.instruments = meter
    metrics = None
    if settings.metrics:
        from .metrics import register_metrics

        metrics = register_metrics(flamigo, app, meter)
    history = History(flamigo, meter) if settings.inspect_enabled else None
    _installed[flamigo] = (metrics, history)


def start(flamigo: Host) -> None:
    """Start sampling and syncing (after the runtime and the backplane started)."""
    metrics, history = _installed.get(flamigo, (None, None))
    backplane = flamigo.bus.backplane
    if backplane is not None and flamigo.hub.instruments is not None:
        setattr(backplane, "instruments", flamigo.hub.instruments)  # the Redis backplane's lag  # noqa: B010
    if metrics is not None:
        metrics.start()
    if history is not None:
        history.start()


def stop(flamigo: Host) -> None:
    """Stop the greenlets :func:`start` started."""
    metrics, history = _installed.get(flamigo, (None, None))
    if metrics is not None:
        metrics.stop()
    if history is not None:
        history.stop()

"""prometheus_client's multiprocess directory for ``--workers N`` (run by gunicorn's arbiter).

The arbiter is not monkey-patched and must not import Flask or Pykka: this
module imports neither (prometheus_client only, when a worker exits).

* :func:`prepare` (arbiter start, before any worker forks): a fresh directory
  in ``PROMETHEUS_MULTIPROC_DIR``. One already named there is emptied of its
  ``*.db`` files (values of a previous run would be summed in); otherwise a
  new temporary one is made, removed by :func:`cleanup` at arbiter exit.
* :func:`worker_exited` (gunicorn's ``child_exit``): the dead worker's live
  gauges (connections, actors...) leave the sums; its counters stay.

Failures are printed to stderr and never stop the arbiter (the metrics would
then be those of each worker alone, or missing: ``/metrics`` says so by its values).
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import tempfile

__all__ = ["ENV", "cleanup", "prepare", "worker_exited"]

ENV = "PROMETHEUS_MULTIPROC_DIR"

_made: list[str] = []


def prepare() -> str:
    """Make ``PROMETHEUS_MULTIPROC_DIR`` a fresh, empty directory and return its path."""
    path = os.environ.get(ENV)
    if path:
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "*.db")):
            os.remove(stale)
    else:
        path = tempfile.mkdtemp(prefix="flamigo-metrics-")
        _made.append(path)
        os.environ[ENV] = path
    return path


def worker_exited(pid: int) -> None:
    """Drop the live gauges of worker ``pid`` from the sums."""
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
    except Exception as err:  # noqa: BLE001 - the arbiter must go on
        print(f"flamigo_actors: cannot mark worker {pid} dead in the metrics: {err}", file=sys.stderr)


def cleanup() -> None:
    """Remove the directory :func:`prepare` made (arbiter exit)."""
    while _made:
        shutil.rmtree(_made.pop(), ignore_errors=True)

"""The open-files limit of a serving process, and the connection ceiling it sets.

Every WebSocket connection holds one file descriptor, so a process can hold at
most about as many connections as its soft ``RLIMIT_NOFILE`` allows (1,024 on
many systems unless raised). At start, the single-process server and each
gunicorn worker call :func:`raise_open_files_limit`:

* the soft limit is raised to the hard limit (an unprivileged process may do
  that; only the hard limit needs root or ``limits.conf``), never lowered;
* the ceiling that follows (the limit, less the descriptors already open, less
  :data:`RESERVED_DESCRIPTORS` for Redis links, HTTP requests, logs) is logged
  once, at INFO, so an operator sees what the process can hold.

Failure behaviour: if the limit cannot be raised (a platform without
``resource``, or ``setrlimit`` refused), nothing fails: the process keeps its
limit and logs a WARNING that says so and how to raise the hard limit. Past
the ceiling, gevent's accept loop logs ``EMFILE`` (too many open files) and
new connections wait in the listen backlog; the ones held are unaffected.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

__all__ = ["OpenFiles", "RESERVED_DESCRIPTORS", "raise_open_files_limit"]

_log = logging.getLogger("flamigo_actors.limits")

RESERVED_DESCRIPTORS = 64
"""Descriptors kept apart from connections: Redis links, HTTP requests, log files, the shell."""


@dataclass(frozen=True)
class OpenFiles:
    """The open-files limit before and after :func:`raise_open_files_limit`.

    Attributes:
        before: the soft limit found at start.
        soft: the soft limit now in effect.
        hard: the hard limit (``None``: unlimited or unknown).
        ceiling: connections this process can hold (``soft`` less the
            descriptors already open and :data:`RESERVED_DESCRIPTORS`).
    """

    before: int
    soft: int
    hard: int | None
    ceiling: int


def _open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: assume stdio and a few libraries' files
        return 16


def raise_open_files_limit(log: logging.Logger | None = None) -> OpenFiles | None:
    """Raise this process's soft open-files limit to its hard limit and log the ceiling.

    Returns the limits, or None where the platform has no ``resource`` module
    (then nothing is changed or logged).
    """
    log = log or _log
    try:
        import resource
    except ImportError:  # Windows
        return None
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit: 1,048,576 is the kernel's default nr_open.
    want = hard if hard != resource.RLIM_INFINITY else 1_048_576
    soft = before
    if before != resource.RLIM_INFINITY and before < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (OSError, ValueError) as err:
            log.warning(
                "open files: cannot raise the soft limit from %d to %d (%s): this process holds at most "
                "about %d connections; raise the hard limit (ulimit -Hn, limits.conf, LimitNOFILE=)",
                before, want, err, max(0, before - _open_descriptors() - RESERVED_DESCRIPTORS),
            )
    effective = soft if soft != resource.RLIM_INFINITY else want
    ceiling = max(0, effective - _open_descriptors() - RESERVED_DESCRIPTORS)
    limits = OpenFiles(
        before=before, soft=effective, hard=None if hard == resource.RLIM_INFINITY else hard, ceiling=ceiling
    )
    raised = f"raised from {before} to {effective}" if effective != before else f"{effective}"
    log.info(
        "open files: soft limit %s (hard limit %s): pid %d holds at most about %d connections",
        raised, "unlimited" if limits.hard is None else limits.hard, os.getpid(), ceiling,
    )
    return limits

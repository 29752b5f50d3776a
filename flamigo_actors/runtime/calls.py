"""Calling a strategy from code: ``flamigo.call``, ``ctx.call``, the debug shell, tests.

:func:`call` runs a strategy in the *calling* greenlet (never through a
mailbox, so a strategy calling a strategy cannot deadlock) and returns its
result. A strategy that defers its reply (``ctx.defer``) is waited for; when
the caller's deadline passes first, the deferred work is cancelled and the
call fails with a 504. Every failure leaves as a :class:`FlamigoError`.
"""

from __future__ import annotations

import time
from typing import Any

import gevent
from gevent.event import AsyncResult

from ..core.errors import FlamigoError
from ..core.identity import BackendIdentity, Identity
from .context import ContextHost
from .strategies import Request, StrategyContext, run_strategy

__all__ = ["call", "wait_deferred"]


def call(
    host: ContextHost,
    name: str,
    payload: Any = None,
    *,
    identity: Identity | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
) -> Any:
    """Run strategy ``name`` of ``host.strategies`` in this greenlet and return its result.

    Args:
        host: the application (its ``strategies`` are resolved; the strategy's
            context reaches the app through it).
        identity: who calls (default: ``BackendIdentity("call")``).
        timeout: seconds before a 504 error (default: none).
        deadline: an absolute ``time.monotonic()`` limit (nested calls pass theirs).

    Raises:
        FlamigoError: 403 outside the namespace, 404 unknown, 422 invalid
            payload, 504 timeout, or the strategy's own error.
    """
    strategy = host.strategies.resolve(name)
    if timeout is not None:
        limit = time.monotonic() + timeout
        deadline = limit if deadline is None else min(deadline, limit)
    ctx = StrategyContext(
        host,
        identity if identity is not None else BackendIdentity("call"),
        Request(name, payload),
        deadline=deadline,
    )
    try:
        with gevent.Timeout(ctx.remaining()):
            result = run_strategy(strategy, ctx)
            if ctx.deferred is not None:
                return wait_deferred(ctx)
            return result
    except gevent.Timeout:
        raise FlamigoError(
            f"strategy({name}): deadline exceeded", public="timed out", status=504
        ) from None


def wait_deferred(ctx: StrategyContext) -> Any:
    """Wait for the reply ``ctx`` deferred; cancel it if the wait is interrupted.

    Raises:
        FlamigoError: the deferred work's error.
    """
    outcome: AsyncResult = AsyncResult()
    reply = ctx.deferred
    if reply is None:
        raise RuntimeError(f"strategy {ctx.request.action} did not defer its reply")

    def settle(value: Any, error: BaseException | None) -> None:
        if error is not None:
            outcome.set_exception(error)
        else:
            outcome.set(value)

    reply.attach(settle)
    try:
        return outcome.get()
    finally:
        if not reply.settled:
            reply.cancel()  # the caller gave up (timeout): stop the work

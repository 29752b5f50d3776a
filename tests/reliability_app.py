"""The demo app plus strategies that exist only to test reliability (never in the demo).

``create_app(config)`` builds the demo chat and adds, in the ``app::test:``
domain:

* ``app::test:hold`` ``{"gate": name}``: holds the connection's mailbox until
  the test opens the gate (``app.extensions["gates"].open(name)``);
* ``app::test:defer`` ``{"gate": name}``: hands its reply off (``ctx.defer``)
  and answers when the gate opens, leaving the mailbox free;
* ``app::test:block`` / ``app::test:defer-forever``: never answer; their 0.5 s
  time limit answers 504 instead;
* ``app::test:sleep`` ``{"seconds": s}``: holds the mailbox, with no time limit
  of its own (``FLAMIGO_STRATEGY_TIMEOUT`` applies);
* ``app::test:defer-fail`` ``{"gate": name}``: a deferred reply that fails;
* ``app::test:exit``: raises ``SystemExit`` (a strategy must not end the process);
* ``app::test:big`` ``{"size": n}``: returns a string of ``n`` characters.

Serve it in a child process with
``python -m flamigo_actors.serving.cli run tests.reliability_app:create_app``.
"""

from __future__ import annotations

from typing import Any

import gevent
from gevent.event import Event
from pydantic import BaseModel, Field

from app import create_app as create_demo_app
from flamigo_actors import StrategyContext

TIME_LIMIT = 0.5
"""Seconds before ``app::test:block`` and ``app::test:defer-forever`` answer 504."""


class Gates:
    """Named gates a test opens to let a held strategy finish."""

    def __init__(self) -> None:
        self._gates: dict[str, Event] = {}
        self.waiting: dict[str, int] = {}

    def get(self, name: str) -> Event:
        return self._gates.setdefault(name, Event())

    def open(self, name: str) -> None:
        self.get(name).set()


class GatePayload(BaseModel):
    gate: str = Field(min_length=1, max_length=64)


class SecondsPayload(BaseModel):
    seconds: float = Field(ge=0, le=3600)


class SizePayload(BaseModel):
    size: int = Field(ge=0, le=10_000_000)


def create_app(config: dict[str, Any] | None = None) -> Any:
    """The demo app with the test-only strategies (``config`` as for the demo)."""
    app = create_demo_app(config)
    flamigo = app.extensions["flamigo"]
    gates = app.extensions["gates"] = Gates()

    @flamigo.strategy("app::test:hold", payload=GatePayload, timeout=30)
    def hold(ctx: StrategyContext) -> dict[str, str]:
        name = ctx.request.data.gate
        gates.waiting[name] = gates.waiting.get(name, 0) + 1
        gates.get(name).wait()
        return {"released": name}

    @flamigo.strategy("app::test:defer", payload=GatePayload, timeout=30)
    def defer(ctx: StrategyContext) -> None:
        name = ctx.request.data.gate
        gates.waiting[name] = gates.waiting.get(name, 0) + 1

        def work() -> dict[str, str]:
            gates.get(name).wait()
            return {"released": name}

        ctx.defer(work)

    @flamigo.strategy("app::test:block", timeout=TIME_LIMIT)
    def block(ctx: StrategyContext) -> None:
        gevent.sleep(3600)

    @flamigo.strategy("app::test:defer-forever", timeout=TIME_LIMIT)
    def defer_forever(ctx: StrategyContext) -> None:
        ctx.defer(gevent.sleep, 3600)

    @flamigo.strategy("app::test:sleep", payload=SecondsPayload)
    def sleep(ctx: StrategyContext) -> dict[str, float]:
        """Holds the mailbox; no time limit of its own (FLAMIGO_STRATEGY_TIMEOUT applies)."""
        gevent.sleep(ctx.request.data.seconds)
        return {"slept": ctx.request.data.seconds}

    @flamigo.strategy("app::test:defer-fail", payload=GatePayload)
    def defer_fail(ctx: StrategyContext) -> None:
        name = ctx.request.data.gate

        def work() -> None:
            gates.get(name).wait()
            raise LookupError("deferred failure: this text stays on the server")

        ctx.defer(work)

    @flamigo.strategy("app::test:exit")
    def exit_(ctx: StrategyContext) -> None:
        raise SystemExit("a strategy asked the process to exit")

    @flamigo.strategy("app::test:big", payload=SizePayload)
    def big(ctx: StrategyContext) -> str:
        return "x" * ctx.request.data.size

    return app

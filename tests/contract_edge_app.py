"""An app whose contract exercises the generators' corners (tests/test_contract_tools.py)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

from typing_extensions import TypedDict

from flask import Flask
from pydantic import BaseModel, ConfigDict, Field

from flamigo_actors import Flamigo, Registry, StrategyContext


class Color(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


class Node(BaseModel):
    """A tree: recursive."""

    name: str
    children: list[Node] = []


class Loose(BaseModel):
    model_config = ConfigDict(extra="allow")

    kind: Literal["loose"] = "loose"


@dataclass
class Pair:
    left: int
    right: Optional[float] = None


class Reading(TypedDict):
    sensor: str
    value: float


class Everything(BaseModel):
    """Every shape the generators must map."""

    color: Color
    tags: dict[str, int]
    point: tuple[int, int]
    either: Union[int, str]
    maybe: Optional[str] = None
    pairs: list[Pair] = Field(default_factory=list)
    tree: Node
    loose: Loose
    reading: Reading
    quoted_key: int = Field(0, alias="quoted-key")
    anything: Any = None


strategies = Registry("app")


@strategies.strategy("app::everything", payload=Everything, reply=Everything)
def everything(ctx: StrategyContext) -> Any:
    """Echo everything."""
    return ctx.payload


@strategies.strategy("app::raw", reply=list[str])
def raw(ctx: StrategyContext) -> list[str]:
    """Named like createClient's raw: no method, reachable through request()."""
    return ["raw"]


@strategies.strategy("app::rooms", reply=int)
def rooms(ctx: StrategyContext) -> int:
    """A leaf named like a group that follows."""
    return 1


@strategies.strategy("app::rooms:send", reply=bool)
def send(ctx: StrategyContext) -> bool:
    return True


@strategies.strategy("app::multi-word:do-it", reply=Pair, errors={409: "conflict", 418: "teapot"})
def do_it(ctx: StrategyContext) -> dict[str, Any]:
    """*/ comment breaker in a summary."""
    return {"left": 1}


strategies.client_event("tree:changed", Node, topics=("trees/*",))
strategies.client_event("reading", Reading)
strategies.client_event("anything:goes")


def create_app() -> Flask:
    app = Flask("edge")
    Flamigo(app, strategies=strategies)
    return app

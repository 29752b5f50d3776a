"""``flamigo-actors new NAME``: a ready project in a new folder.

The project has a ``pyproject.toml``, an app factory (``NAME/app.py``) with
one typed strategy (payload, reply and error models), one declared client
event, one domain actor, a Flask view that publishes the event, tests that
drive it through the shipped test client, the generated contract
(``contract/asyncapi.json``, with a test that fails when it is stale) and a
README with the commands to run it and to install and test it.

Guarantees: nothing is written unless the name is valid and the folder does
not exist yet (an existing folder is never touched). If generating the
contract fails, the new folder is removed again and :class:`ScaffoldError`
says why.
"""

from __future__ import annotations

import keyword
import re
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["ScaffoldError", "create_project"]


class ScaffoldError(Exception):
    """The project cannot be created (bad name, folder exists, contract generation failed)."""


_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def create_project(name: str, directory: str | None = None) -> Path:
    """Create project ``name`` in ``directory`` (default ``./name``); returns its path.

    Raises:
        ScaffoldError: ``name`` is not a lowercase Python package name, or the
            folder exists, or the contract could not be generated.
    """
    if not _NAME.match(name) or keyword.iskeyword(name) or name in {"flamigo_actors", "app", "tests"}:
        raise ScaffoldError(
            f"invalid project name {name!r}: use a lowercase Python package name "
            "(a letter, then letters, digits or '_'), not a keyword, 'app', 'tests' or 'flamigo_actors'"
        )
    root = Path(directory if directory is not None else name).resolve()
    if root.exists():
        raise ScaffoldError(f"{root} exists already: pick a new folder (nothing was written)")
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
        f"{name}/__init__.py": '"""__NAME__: a flamigo_actors application."""\n',
        f"{name}/app.py": _APP,
        "tests/__init__.py": "",
        "tests/conftest.py": _CONFTEST,
        "tests/test_app.py": _TESTS,
        ".gitignore": "__pycache__/\n*.egg-info/\n.venv/\n",
    }
    try:
        for relative, text in files.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text.replace("__NAME__", name), encoding="utf-8")
        (root / "contract").mkdir()
        proc = subprocess.run(
            [sys.executable, "-m", "flamigo_actors", "schema", f"{name}.app:create_app",
             "-o", "contract/asyncapi.json"],
            cwd=root, capture_output=True, text=True, timeout=120,
        )
        if proc.returncode != 0:
            raise ScaffoldError(f"generating the contract failed: {proc.stderr.strip()[-2000:]}")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return root


_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "__NAME__"
version = "0.1.0"
description = "A realtime Flask app on flamigo_actors"
requires-python = ">=3.11"
dependencies = ["flamigo-actors", "pydantic>=2.5"]

[project.optional-dependencies]
test = ["pytest>=8"]

[tool.setuptools]
packages = ["__NAME__"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

_README = """\
# __NAME__

A realtime Flask app on [flamigo_actors](https://pypi.org/project/flamigo-actors/): one typed
strategy (`app::greet:hello`, answered by a `Counter` domain actor), one client event
(`board:note`, published by `POST /boards/<board>/notes`), and tests.

Run it (WebSocket at `ws://127.0.0.1:8080/ws`):

    flamigo-actors run __NAME__.app:create_app --debug

Install and test:

    pip install -e '.[test]' && pytest

## The contract

`contract/asyncapi.json` is the app's AsyncAPI 3.0 document, generated from its declared models;
`tests/test_app.py` fails when it is stale. Regenerate it, and the typed TypeScript client:

    flamigo-actors schema __NAME__.app:create_app -o contract/asyncapi.json
    flamigo-actors schema __NAME__.app:create_app --format typescript -o contract/client.ts
"""

_APP = '''\
"""The __NAME__ app: a typed strategy, a client event, a domain actor and a view that publishes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, jsonify, request
from pydantic import BaseModel, Field

from flamigo_actors import (
    ActorFuture,
    ClientMessage,
    DomainActor,
    Flamigo,
    Registry,
    StrategyContext,
    WebsocketClient,
    is_websocket,
    require_identity,
)

BOARD = r"^[a-z0-9-]{1,32}$"

strategies = Registry("app")


class HelloPayload(BaseModel):
    name: str = Field(min_length=1, max_length=64)


class Greeting(BaseModel):
    """Reply of app::greet:hello."""

    text: str
    count: int


class BoardPayload(BaseModel):
    board: str = Field(pattern=BOARD)


class Following(BaseModel):
    board: str
    following: bool


class Note(BaseModel):
    """A note pinned on a board: every follower receives it."""

    board: str
    text: str
    ts: float


strategies.client_event("board:note", Note, topics=("boards/*",))


@dataclass(frozen=True)
class NotePosted:
    """The bus event behind the board:note push."""

    board: str
    text: str
    ts: float

    @property
    def topics(self) -> tuple[str, ...]:
        return (f"boards/{self.board}",)

    @property
    def client_message(self) -> ClientMessage:
        return ClientMessage("board:note", {"board": self.board, "text": self.text, "ts": self.ts})


class Counter(DomainActor):
    """How often a name was greeted: one actor per name, one message at a time."""

    kind = "counter"

    def on_activate(self, key: str, state: Any) -> None:
        self.count: int = (state or {}).get("count", 0)

    def snapshot(self) -> dict[str, Any]:
        return {"count": self.count}

    def greet(self, name: str) -> dict[str, Any]:
        self.count += 1
        return {"text": f"Hello, {name}!", "count": self.count}


@strategies.strategy(
    "app::greet:hello", payload=HelloPayload, reply=Greeting,
    errors={503: "the counter is unavailable: retry"},
)
def hello(ctx: StrategyContext) -> ActorFuture:
    """Greet someone and count the greetings (a Counter actor per name)."""
    name = ctx.request.data.name
    return ctx.actors.get(Counter, name).ask("greet", name)


@strategies.strategy("app::boards:follow", payload=BoardPayload, reply=Following)
def follow(ctx: StrategyContext) -> dict[str, Any]:
    """Receive the board's notes (board:note pushes)."""
    client = require_identity(ctx, is_websocket, kind=WebsocketClient)
    board = ctx.request.data.board
    client.subscribe(f"boards/{board}")
    return {"board": board, "following": True}


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app (its WebSocket endpoint is /ws)."""
    app = Flask(__name__)
    app.config.update(config or {})
    flamigo = Flamigo(app, strategies=strategies)

    @app.post("/boards/<board>/notes")
    def post_note(board: str) -> Any:
        body = request.get_json(silent=True) or {}
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip():
            return jsonify({"error": "text must be a non-empty string"}), 400
        flamigo.publish(NotePosted(board, text, time.time()))
        return jsonify({"board": board, "published": True}), 202

    return app
'''

_CONFTEST = '''\
"""gevent's monkey-patching first, before anything imports socket, threading or flask."""

from gevent import monkey

monkey.patch_all()
'''

_TESTS = '''\
"""The app through the shipped test client (the real connection code, no network)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flamigo_actors import TestClientError

from __NAME__.app import create_app

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def app():
    app = create_app({"TESTING": True})
    yield app
    app.extensions["flamigo"].shutdown()


def test_hello_is_typed_and_counted(app):
    with app.extensions["flamigo"].test_client() as client:
        assert client.request("app::greet:hello", {"name": "Ada"}) == {"text": "Hello, Ada!", "count": 1}
        assert client.request("app::greet:hello", {"name": "Ada"})["count"] == 2


def test_a_wrong_payload_is_refused_with_the_field(app):
    with app.extensions["flamigo"].test_client() as client:
        with pytest.raises(TestClientError) as caught:
            client.request("app::greet:hello", {"name": ""})
        assert caught.value.status == 422
        assert caught.value.field_errors[0]["field"] == "name"


def test_a_published_note_reaches_the_followers(app):
    with app.extensions["flamigo"].test_client() as client:
        assert client.request("app::boards:follow", {"board": "general"})["following"] is True
        response = app.test_client().post("/boards/general/notes", json={"text": "standup at 10"})
        assert response.status_code == 202
        [push] = client.pushes("board:note", wait=5)
        assert push["payload"]["text"] == "standup at 10"


def test_the_committed_contract_is_current():
    proc = subprocess.run(
        [sys.executable, "-m", "flamigo_actors", "schema", "__NAME__.app:create_app",
         "--check", "contract/asyncapi.json"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
'''

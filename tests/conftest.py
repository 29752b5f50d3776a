"""Shared fixtures. gevent's monkey-patching comes first, before anything imports socket."""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import socket  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from flask import Flask  # noqa: E402

from tests.support import LiveServer, start_live_server  # noqa: E402

ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "artifacts")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def artifacts_dir() -> str:
    """Where tests save screenshots and reports (kept by CI)."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def demo_app() -> Callable[..., Flask]:
    """Build the demo app with config overrides."""
    from app import create_app

    def build(**config: Any) -> Flask:
        return create_app({"TESTING": True, **config})

    return build


@pytest.fixture
def live_server() -> Iterator[Callable[[Flask], LiveServer]]:
    """Serve an app on 127.0.0.1 (a free port) in this process; stopped after the test."""
    started: list[LiveServer] = []

    def start(app: Flask) -> LiveServer:
        server = start_live_server(app)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def demo_server(demo_app: Callable[..., Flask], live_server: Callable[[Flask], LiveServer]) -> LiveServer:
    """The demo app served live with default settings."""
    return live_server(demo_app())

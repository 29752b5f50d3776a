"""Shared fixtures. gevent's monkey-patching comes first, before anything imports socket."""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from flask import Flask  # noqa: E402

from tests.support import LiveServer, RedisServer, start_live_server  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    # Root in a container, no GPU, a closed network: what headless Chromium needs here.
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]

ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "artifacts")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def need_binary(name: str) -> str:
    """The path of a system binary a test needs (redis-server, chromium).

    Missing: under ``CI=true`` the test fails (CI installs them: a missing one
    is a broken run, not a reason to skip); elsewhere it is skipped.
    """
    path = name if os.path.isabs(name) and os.access(name, os.X_OK) else shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (apt-get install -y {os.path.basename(name)})"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Debian Chromium for the session, driven by Playwright."""
    executable = need_binary(CHROMIUM)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright gives every launch a fresh, temporary --user-data-dir.
        instance = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page in a fresh browser context (no shared cookies or storage)."""
    context = browser.new_context()
    yield context.new_page()
    context.close()


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


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free port, for this test only (killed afterwards)."""
    server = RedisServer(need_binary("redis-server"), free_port()).start()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)

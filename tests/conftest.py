"""Shared fixtures and markers. gevent's monkey-patching comes first, before anything imports socket.

Markers (registered below, applied by :func:`pytest_collection_modifyitems`):
``browser`` (headless Chromium), ``redis`` (a real redis-server), ``subprocess``
(starts a child process: a server, node, the CLI, a benchmark) and ``slow``
(several seconds or more). The quick loop skips the slow and browser ones:

    python -m pytest -q -p no:cacheprovider -m "not slow and not browser"

CI runs everything. Helpers that tests import live in tests/support.py.
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import shutil  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from flask import Flask  # noqa: E402

from flamigo_actors import Flamigo  # noqa: E402

from tests.support import (  # noqa: E402
    SLOW,
    SUBPROCESS,
    CHROMIUM,
    CHROMIUM_ARGS,
    LiveServer,
    RedisClusterServers,
    RedisServer,
    ServerProcess,
    clean_flamigo_environment,
    free_port,
    need_binary,
    start_live_server,
)

MARKERS = {
    "browser": "drives headless Chromium (Playwright)",
    "redis": "starts a real redis-server",
    "subprocess": "starts a child process (a server, node, the CLI, a benchmark)",
    "slow": "takes several seconds or more; left out of the quick loop",
}

# Fixtures that imply a marker, wherever they are used.
_FIXTURE_MARKERS = {
    "browser": "browser",
    "page": "browser",
    "redis_server": "redis",
    "redis_cluster": "redis",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test by the fixtures it uses and by tests/support.py's SLOW / SUBPROCESS tables."""
    for item in items:
        module = item.path.stem
        test = item.name.partition("[")[0]
        wanted = {_FIXTURE_MARKERS[f] for f in getattr(item, "fixturenames", ()) if f in _FIXTURE_MARKERS}
        for marker, table in (("slow", SLOW), ("subprocess", SUBPROCESS)):
            entry = table.get(module)
            if entry is not None and (entry == "*" or test in entry):
                wanted.add(marker)
        for marker in sorted(wanted - {m.name for m in item.iter_markers()}):
            item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(autouse=True)
def _no_flamigo_environment() -> Iterator[None]:
    """No ``FLAMIGO_*`` variable of the developer's shell reaches a test (restored afterwards)."""
    with clean_flamigo_environment():
        yield


ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "artifacts")


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
def new_page(browser: Any) -> Iterator[Callable[[], Any]]:
    """Pages in separate browser contexts (separate storage: separate users)."""
    contexts: list[Any] = []

    def make() -> Any:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
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
def app(demo_app: Callable[..., Flask]) -> Iterator[Flask]:
    """The demo app, not served (for the in-memory test client); shut down afterwards."""
    app = demo_app()
    yield app
    app.extensions["flamigo"].shutdown(timeout=1)


@pytest.fixture
def flamigo(app: Flask) -> Flamigo:
    """The ``app`` fixture's Flamigo extension."""
    return app.extensions["flamigo"]


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


@pytest.fixture(params=["stream", "interest"])
def backplane_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test under each Redis backplane mode (``FLAMIGO_REDIS_BACKPLANE``, inherited by
    the server processes it starts)."""
    monkeypatch.setenv("FLAMIGO_REDIS_BACKPLANE", request.param)
    return str(request.param)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free port, for this test only (killed afterwards)."""
    server = RedisServer(need_binary("redis-server"), free_port()).start()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A real Redis Cluster (3 masters, 3 replicas) on free ports, for this test only (killed afterwards)."""
    cluster = RedisClusterServers(need_binary("redis-server"), need_binary("redis-cli"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    """Server processes a test starts: each is stopped (SIGTERM, then SIGKILL) whatever happens."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()

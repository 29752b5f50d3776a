"""The third-party internals flamigo_actors relies on are still there, with the shapes we use.

The engine copies Pykka's private actor loop and overrides its private hooks;
the transport overrides pywsgi's and gevent-websocket's handler methods and
calls gevent's socket with a zero timeout; the workers subclass gunicorn's
worker. A release that renames or reshapes any of these would otherwise
change behaviour silently (actors that never start, a handler method never
called). setup.py bounds these distributions below their next breaking
release; these tests say what broke when the bounds are moved.

Also: every distribution the package imports is declared in setup.py.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import inspect
import re
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "flamigo_actors"


def params(function: object) -> list[str]:
    """Parameter names of ``function`` (``self`` included for plain functions)."""
    assert callable(function), f"{function!r} is not callable"
    return list(inspect.signature(function).parameters)


def require(owner: object, name: str) -> object:
    found = getattr(owner, name, None)
    assert found is not None, (
        f"{getattr(owner, '__module__', '')}.{getattr(owner, '__qualname__', owner)} has no {name!r}: "
        "flamigo_actors overrides or calls it; adapt the code and the bound in setup.py"
    )
    return found


# -- Pykka: runtime/engine.py -------------------------------------------------------

PYKKA_LOOP_SHA256 = "226670085f0c989497b438b01649c9646e99685e524121f5bef4d1af6358a8ae"
"""sha256 of pykka.Actor._actor_loop_running's source (Pykka 4.5), whose body
FlamigoActor._handle_envelope copies."""


def test_pykka_actor_loop_is_the_one_the_engine_copies() -> None:
    from pykka import Actor

    source = textwrap.dedent(inspect.getsource(require(Actor, "_actor_loop_running")))  # type: ignore[arg-type]
    assert hashlib.sha256(source.encode()).hexdigest() == PYKKA_LOOP_SHA256, (
        "pykka.Actor._actor_loop_running changed: re-copy its body into "
        "flamigo_actors.runtime.engine.FlamigoActor._handle_envelope, then update PYKKA_LOOP_SHA256"
        f" (new source:\n{source})"
    )
    # _actor_loop is setup, running, teardown: the engine's _drain splits it the same way.
    calls = re.findall(r"self\.(_actor_loop_\w+)\(\)", inspect.getsource(require(Actor, "_actor_loop")))  # type: ignore[arg-type]
    assert calls == ["_actor_loop_setup", "_actor_loop_running", "_actor_loop_teardown"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("_create_actor_inbox", []),  # a staticmethod in Pykka; the engine overrides it per instance
        ("_start_actor_loop", ["self"]),
        ("_actor_loop_setup", ["self"]),
        ("_actor_loop_teardown", ["self"]),
        ("_handle_receive", ["self", "message"]),
        ("_handle_failure", ["self", "exception_type", "exception_value", "traceback"]),
        ("on_failure", ["self", "exception_type", "exception_value", "traceback"]),
        ("_stop", ["self"]),
        ("on_start", ["self"]),
        ("on_stop", ["self"]),
    ],
)
def test_pykka_private_hooks_the_engine_overrides_or_calls(name: str, expected: list[str]) -> None:
    from pykka import ThreadingActor

    assert params(require(ThreadingActor, name)) == expected, f"pykka.ThreadingActor.{name} changed its signature"


def test_pykka_envelope_and_future_as_the_engine_uses_them() -> None:
    import pykka
    from pykka._envelope import Envelope

    assert params(Envelope)[:2] == ["message", "reply_to"]
    envelope = Envelope("m", reply_to=None)
    assert (envelope.message, envelope.reply_to) == ("m", None)
    assert params(pykka.ThreadingFuture.set) == ["self", "value"]
    assert params(pykka.ThreadingFuture.set_exception) == ["self", "exc_info"]
    assert params(pykka.ActorRegistry.stop_all)[:1] == ["block"]
    # The attributes the engine, bus, listeners and inspection read from a live ref.

    class Probe(pykka.ThreadingActor):
        pass

    ref = Probe.start()
    try:
        missing = [a for a in ("actor_inbox", "actor_stopped", "actor_urn", "actor_class") if not hasattr(ref, a)]
        assert not missing, f"pykka.ActorRef lost {missing}, which flamigo_actors reads"
        assert ref.actor_inbox.qsize() == 0 and not ref.actor_stopped.is_set()
    finally:
        ref.stop()


# -- gevent and gevent-websocket: websocket/transport.py ------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("read_requestline", ["self"]),
        ("read_request", ["self", "raw_requestline"]),
        ("start_response", ["self", "status", "headers", "exc_info"]),
    ],
)
def test_pywsgi_handler_methods_the_transport_overrides_or_calls(name: str, expected: list[str]) -> None:
    from gevent.pywsgi import WSGIHandler

    assert params(require(WSGIHandler, name)) == expected, f"gevent.pywsgi.WSGIHandler.{name} changed"


@pytest.mark.parametrize("name", ["upgrade_websocket", "run_websocket", "upgrade_connection"])
def test_gevent_websocket_handler_methods_the_transport_overrides(name: str) -> None:
    from geventwebsocket.handler import WebSocketHandler

    assert params(require(WebSocketHandler, name)) == ["self"], f"WebSocketHandler.{name} changed"


def test_gevent_websocket_internals_the_transport_uses() -> None:
    from geventwebsocket.websocket import WebSocket

    # Handler.upgrade_connection disarms the replaced WebSocket by swapping its raw_write.
    assert "raw_write" in WebSocket.__slots__, "geventwebsocket's WebSocket no longer has raw_write"
    assert "raw_write" in inspect.getsource(WebSocket.close), "WebSocket.close no longer writes through raw_write"


def test_gevent_socket_send_takes_a_timeout() -> None:
    from gevent.socket import socket

    # SocketTransport.try_send calls send(data, 0, 0.0): a zero timeout never waits.
    assert params(socket.send)[:4] == ["self", "data", "flags", "timeout"]


def test_gevent_hub_and_greenlet_as_the_engine_uses_them() -> None:
    import gevent
    import greenlet

    hub = gevent.get_hub()
    assert callable(hub.loop.run_callback)
    runner = greenlet.greenlet(lambda: None, hub)  # a raw greenlet parented on the hub
    assert runner.parent is hub and not runner.dead


# -- gunicorn: serving/workers.py ---------------------------------------------------


def test_gunicorn_worker_methods_the_workers_override() -> None:
    pytest.importorskip("gunicorn")
    from geventwebsocket.gunicorn.workers import GeventWebSocketWorker

    assert params(require(GeventWebSocketWorker, "load_wsgi")) == ["self"]
    assert params(require(GeventWebSocketWorker, "run")) == ["self"]
    assert params(require(GeventWebSocketWorker, "handle_quit")) == ["self", "sig", "frame"]
    assert hasattr(GeventWebSocketWorker, "wsgi_handler")


# -- setup.py declares what the package imports ------------------------------------


def _declared() -> set[str]:
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[.*\])?\s*([<>=!~].*)?$", node.value)
            if match and (match.group(3) or node.value.islower()):
                names.add(match.group(1).lower().replace("_", "-"))
    return names


def _imported_top_levels() -> set[str]:
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"flamigo_actors", "__future__"}


def test_every_imported_distribution_is_declared_in_setup_py() -> None:
    distributions = importlib.metadata.packages_distributions()
    declared = _declared()
    missing = {}
    for top in sorted(_imported_top_levels()):
        dists = distributions.get(top)
        assert dists, f"flamigo_actors imports {top!r}, which no installed distribution provides"
        if not any(d.lower().replace("_", "-") in declared for d in dists):
            missing[top] = dists
    assert not missing, f"imported but not declared in setup.py: {missing}"


@pytest.mark.parametrize("distribution", ["pykka", "gevent", "gevent-websocket", "greenlet", "gunicorn"])
def test_dependencies_we_reach_into_have_an_upper_bound(distribution: str) -> None:
    text = (ROOT / "setup.py").read_text(encoding="utf-8")
    specs = re.findall(rf'"{re.escape(distribution)}\s*([^"]*)"', text)
    assert specs, f"{distribution} is not declared in setup.py"
    for spec in specs:
        assert "<" in spec or "==" in spec, f"{distribution}{spec}: give it an upper bound below its next breaking release"

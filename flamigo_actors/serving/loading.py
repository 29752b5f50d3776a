"""Finding the user's application: ``MODULE:FACTORY`` targets, shared by the CLI and the workers.

Guarantees: the current working directory is on ``sys.path`` before the
module is imported (as ``gunicorn``, ``uvicorn`` and ``flask --app`` do), so
``flamigo-actors run myapp:create_app`` finds ``myapp.py`` beside the shell,
in the single-process server and in every ``--workers`` worker alike.

Failure behaviour: every way a target can be wrong (bad syntax, a module that
cannot be imported, a missing attribute, something that is not a Flask app
with the Flamigo extension) raises :class:`SystemExit` with a message saying
what was wrong and what to do; nothing is served.

This module imports nothing of the package and neither Flask nor gevent, so
the unpatched gunicorn arbiter may import it.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

__all__ = ["DEFAULT_FACTORY", "load_app", "parse_target", "search_current_directory"]

DEFAULT_FACTORY = "create_app"
"""The attribute looked up when the target names only a module."""


def parse_target(target: str) -> tuple[str, str]:
    """``"module:factory"`` → ``("module", "factory")``.

    ``module`` alone means ``module:create_app``; ``module:factory()`` is
    accepted too.

    Raises:
        SystemExit: the target has no module name.
    """
    module_name, _, attribute = target.strip().partition(":")
    attribute = (attribute.strip() or DEFAULT_FACTORY).removesuffix("()")
    if not module_name:
        raise SystemExit(f"error: {target!r} names no module: give MODULE:FACTORY, e.g. app:create_app")
    return module_name, attribute


def search_current_directory() -> None:
    """Put the current working directory first on ``sys.path`` (once)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def load_app(target: str) -> Any:
    """Import ``module:name`` and return the Flask app it names.

    ``name`` may be an app object or a factory (called without arguments).
    The module is looked up from the current directory first.

    Raises:
        SystemExit: with a clear message when the target cannot be loaded.
    """
    module_name, attribute = parse_target(target)
    search_current_directory()
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise SystemExit(
            f"error: cannot import {module_name!r}: {err} "
            f"(looked in the current directory {os.getcwd()} and on sys.path)"
        ) from None
    try:
        found = getattr(module, attribute)
    except AttributeError:
        raise SystemExit(f"error: module {module_name!r} has no {attribute!r}") from None
    app = found() if callable(found) and not hasattr(found, "wsgi_app") else found
    if not hasattr(app, "extensions") or "flamigo" not in app.extensions:
        raise SystemExit(
            f"error: {target} did not give a Flask app with the Flamigo extension "
            "(call Flamigo(app) in the factory)"
        )
    return app

"""The demo chat application (and the scaffold to copy for your own app).

``create_app()`` builds the Flask app; ``python -m app`` serves it. This
package imports nothing at import time, so ``python -m app`` can apply
gevent's monkey-patching before Flask, Pykka or sockets are imported.
"""

from __future__ import annotations

from typing import Any


def create_app(config: dict[str, Any] | None = None) -> Any:
    """Build the demo app; ``config`` entries override the defaults (tests use this)."""
    from .factory import create_app as build

    return build(config)

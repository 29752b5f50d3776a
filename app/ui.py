"""The demo's browser UI: a static page at ``/`` and its files under ``/ui/``.

Plain HTML, CSS and an ES module (``app/static/``) that imports the browser
client the extension serves at ``/_flamigo/flamigo.js``: no build step, no CDN.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, send_from_directory

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


def register_ui(app: Flask) -> None:
    """Serve the chat page at ``/`` and its assets at ``/ui/<file>``."""

    @app.get("/")
    def chat_page() -> Any:
        response = send_from_directory(STATIC, "index.html")
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.get("/ui/<path:filename>")
    def ui_asset(filename: str) -> Any:
        response = send_from_directory(STATIC, filename)
        response.headers["Cache-Control"] = "no-cache"
        return response

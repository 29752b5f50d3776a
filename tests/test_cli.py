"""The ``flamigo-actors`` console script, run as a new user would: from the folder holding their app.

Regression: ``flamigo-actors run myapp:create_app`` answered "cannot import
'myapp'" for a ``myapp.py`` in the current directory, because a console
script (unlike ``python -m``) does not put the current directory on
``sys.path``; gunicorn, uvicorn and ``flask --app`` do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import requests

from tests.support import REPO, RedisServer, ServerProcess, free_port

MYAPP = textwrap.dedent(
    """
    from flask import Flask

    from flamigo_actors import Flamigo


    def create_app():
        app = Flask(__name__)
        Flamigo(app)

        @app.get("/healthz")
        def healthz():
            return {"status": "ok", "module": __name__}

        return app
    """
)


def console_script() -> str:
    """The installed ``flamigo-actors`` of this interpreter's environment (else the one on PATH)."""
    beside = Path(sys.executable).with_name("flamigo-actors")
    found = str(beside) if beside.exists() else shutil.which("flamigo-actors")
    if found is None:
        pytest.fail("the flamigo-actors console script is not installed: pip install -e .")
    return found


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    """A folder holding only myapp.py, as a new user's would."""
    (tmp_path / "myapp.py").write_text(MYAPP, encoding="utf-8")
    return tmp_path


def env() -> dict[str, str]:
    # This checkout's package, and nothing that would put the user's folder on sys.path.
    return {"PYTHONPATH": REPO}


def test_run_finds_the_module_in_the_current_directory(user_folder: Path) -> None:
    port = free_port()
    server = ServerProcess(
        ["run", "myapp:create_app", "--port", str(port)], port, env(),
        program=console_script(), cwd=str(user_folder),
    )
    try:
        server.wait_ready(30)
        assert requests.get(f"{server.url}/healthz", timeout=5).json() == {"status": "ok", "module": "myapp"}
    finally:
        server.stop()
    assert server.process.returncode == 0, server.log


def test_run_with_workers_finds_the_module_in_the_current_directory(
    user_folder: Path, redis_server: RedisServer
) -> None:
    port = free_port()
    server = ServerProcess(
        ["run", "myapp:create_app", "--port", str(port), "--workers", "2", "--redis", redis_server.url],
        port, env(), program=console_script(), cwd=str(user_folder),
    )
    try:
        server.wait_ready(60)
        assert requests.get(f"{server.url}/healthz", timeout=5).json()["module"] == "myapp"
    finally:
        server.stop()


def test_a_module_that_is_not_there_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [console_script(), "run", "nosuchapp:create_app", "--port", str(free_port())],
        cwd=tmp_path, env={**os.environ, **env()}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "cannot import 'nosuchapp'" in result.stderr
    assert str(tmp_path) in result.stderr  # says where it looked

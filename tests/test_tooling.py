"""The test suite's own tooling: markers, the FLAMIGO_* guard, the one "nothing arrives" helper."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from flamigo_actors.core.settings import Settings
from tests.support import REPO, clean_flamigo_environment


def test_no_flamigo_variable_reaches_a_test() -> None:
    assert [k for k in os.environ if k.startswith("FLAMIGO_")] == []
    assert Settings.from_config({}, {}).debug is None


def test_a_flamigo_variable_in_the_shell_does_not_reach_the_tests() -> None:
    # A developer's shell with FLAMIGO_DEBUG set: the test above still sees none.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"{__file__}::test_no_flamigo_variable_reaches_a_test"],
        cwd=REPO, env={**os.environ, "FLAMIGO_DEBUG": "true", "FLAMIGO_AUTH_REQUIRED": "false"},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_the_guard_restores_the_shell_and_drops_what_a_test_set() -> None:
    os.environ["FLAMIGO_DEBUG"] = "true"  # as if set in the developer's shell
    try:
        with clean_flamigo_environment():
            assert "FLAMIGO_DEBUG" not in os.environ
            os.environ["FLAMIGO_REDIS_URL"] = "redis://127.0.0.1:1/0"  # e.g. by `run --redis`
        assert os.environ["FLAMIGO_DEBUG"] == "true"
        assert "FLAMIGO_REDIS_URL" not in os.environ
    finally:
        os.environ.pop("FLAMIGO_DEBUG", None)


def test_markers_are_registered(pytestconfig: pytest.Config) -> None:
    registered = {line.split(":")[0] for line in pytestconfig.getini("markers")}
    assert {"browser", "redis", "slow", "subprocess"} <= registered


def test_tests_using_a_browser_or_redis_are_marked(request: pytest.FixtureRequest) -> None:
    items = request.session.items
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        marks = {m.name for m in item.iter_markers()}
        if names & {"browser", "page"}:
            assert "browser" in marks, item.nodeid
        if "redis_server" in names:
            assert "redis" in marks, item.nodeid

"""Runs the browser client's JavaScript tests (``node --test tests/js/``).

They start real demo servers (``python -m app`` with this interpreter) and
speak to them with the WHATWG WebSocket that Node ships (global from Node 22,
behind ``--experimental-websocket`` on Node 20): no npm package is needed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from tests.support import REPO, need_binary

JS_TESTS = os.path.join(REPO, "tests", "js", "flamigo.test.mjs")


def node_command() -> list[str]:
    """``node`` (plus the flag its WebSocket needs); fails under CI=true when missing."""
    node = need_binary("node")
    probe = "process.exit(typeof WebSocket === 'function' ? 0 : 1)"
    for flags in ([], ["--experimental-websocket"]):
        if subprocess.run([node, *flags, "-e", probe], capture_output=True).returncode == 0:
            return [node, *flags]
    message = "node has no WebSocket client: Node.js >= 20.10 is needed"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def test_flamigo_js_unit_tests(artifacts_dir: str) -> None:
    command = [*node_command(), "--test", "--test-reporter=tap", JS_TESTS]
    env = {**os.environ, "PYTHON": sys.executable, "FLAMIGO_ARTIFACTS": artifacts_dir}
    # Its own process group: on a timeout the servers the tests started go too.
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"node --test did not finish within 300 s:\n{stdout[-8000:]}{stderr[-2000:]}")
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    report = result.stdout + result.stderr
    with open(os.path.join(artifacts_dir, "flamigo-js-tests.tap"), "w", encoding="utf-8") as handle:
        handle.write(report)
    passed = re.search(r"^# pass (\d+)$", result.stdout, re.M)
    failed = re.search(r"^# fail (\d+)$", result.stdout, re.M)
    assert result.returncode == 0 and failed and failed.group(1) == "0", report[-8000:]
    assert passed and int(passed.group(1)) >= 17, report[-8000:]

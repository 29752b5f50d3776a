"""WebSocket conformance, proven by the field's own suite: Autobahn's cases run by kosoku.

``scripts/autobahn_echo.py`` (the product's framing, transport adapter and
outbound path, echoing every message) runs as a subprocess on a free loopback
port; kosoku (PyPI, the Autobahn TestSuite's own case files without Python 2)
drives sections 1-7, 9 and 10 against it. Every case must be OK or
INFORMATIONAL, for its behaviour and its close behaviour alike: kosoku's exit
status does not fail on NON-STRICT, so the per-case results are read from its
JSON report (``index.json``).

By hand::

    python scripts/autobahn_echo.py --port 9001 &
    kosoku ws://127.0.0.1:9001 -i '1.*' -i '2.*' -i '3.*' -i '4.*' -i '5.*' \\
        -i '6.*' -i '7.*' -i '9.*' -i '10.*' -p 8 -o reports/autobahn

then open ``reports/autobahn/index.html``.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("1", "2", "3", "4", "5", "6", "7", "9", "10")
"""Autobahn has no section 8; 12 and 13 are permessage-deflate, which the product does not offer."""
PASSING = {"OK", "INFORMATIONAL"}
PARALLEL_CASES = 8
"""Cases run at once: section 6.4's one-second waits overlap, the suite takes seconds, not minutes."""


def kosoku_command() -> str:
    found = shutil.which("kosoku") or shutil.which("kosoku", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("kosoku is not installed: pip install 'kosoku>=0.1,<0.2' (in the `test` extra)", pytrace=False)
    return found


@pytest.fixture
def echo_server() -> Iterator[str]:
    """``scripts/autobahn_echo.py`` on a free port of 127.0.0.1; its ws:// URL."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "autobahn_echo.py"), "--port", "0"],
        cwd=ROOT,
        env={**_env(), "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once it accepts connections
        assert line.startswith("listening on ws://"), f"the echo server did not start: {line!r}"
        yield line.split()[-1]
        assert process.poll() is None, "the echo server died during the run"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _env() -> dict[str, str]:
    # A developer's FLAMIGO_* settings must not change what is tested.
    return {k: v for k, v in os.environ.items() if not k.startswith("FLAMIGO_")}


def test_autobahn_sections_1_to_7_9_10_all_pass(echo_server: str, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    args = [kosoku_command(), echo_server, "-p", str(PARALLEL_CASES), "-o", str(reports)]
    for section in SECTIONS:
        args += ["-i", f"{section}.*"]
    run = subprocess.run(args, capture_output=True, text=True, timeout=600)
    index = reports / "index.json"
    assert index.exists(), f"kosoku wrote no report (exit {run.returncode}):\n{run.stdout}\n{run.stderr}"
    (cases,) = json.loads(index.read_text()).values()  # one agent: the echo server

    summary: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for case_id, result in cases.items():
        summary[case_id.split(".")[0]][result["behavior"]] += 1
    print("\nsection  cases  " + "  ".join(sorted({r for c in summary.values() for r in c})))
    for section in SECTIONS:
        print(f"{section:>7}  {sum(summary[section].values()):5}  {dict(summary[section])}")

    assert set(summary) == set(SECTIONS), sorted(summary)
    assert len(cases) >= 300, len(cases)
    failing = {
        case_id: (result["behavior"], result["behaviorClose"], result.get("remoteCloseCode"))
        for case_id, result in cases.items()
        if result["behavior"] not in PASSING or result["behaviorClose"] not in PASSING
    }
    assert not failing, f"cases not OK/INFORMATIONAL (behaviour, close behaviour, close code): {failing}"

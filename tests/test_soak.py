"""The leak soak, shortened to 1,000 cycles: back to the baseline, RSS within 10%.

``scripts/soak.py`` runs in a child process (a fresh interpreter: its memory
is not blurred by the rest of the test session) and reports its census as
JSON. The full run (20,000 cycles) and its figures are in the README.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support import REPO


def test_1000_cycles_leave_nothing_behind() -> None:
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "soak.py"), "--cycles", "1000", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.stdout, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["errors"] == 0, result["first_errors"]
    assert result["connections_opened"] == result["connections_closed"] == 1000
    start, warm, end = result["start"], result["after_warmup"], result["end"]
    for key in ("actors", "domain_actors", "greenlets", "connections", "subscriptions"):
        assert end[key] == start[key], (key, start, end)
        assert warm[key] == start[key], (key, start, warm)
    assert (end["connections"], end["subscriptions"], end["domain_actors"]) == (0, 0, 20)  # the 20 rooms
    assert end["rss"] <= warm["rss"] * 1.10, result
    assert result["passed"] and done.returncode == 0

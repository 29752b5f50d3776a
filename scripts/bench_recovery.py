"""Reconnect storm: opted-in clients all dropped at once, resuming while events are published.

    python scripts/bench_recovery.py [--clients 5000] [--rate 100] [--json out.json]

For each setting (one server with the embedded store; two servers on one
redis-server) and each mode (recovery: resume with the session and last
position; plain: re-authenticate and re-join, no recovery), in the same run:
demo servers (``python -m app``) are started on free loopback ports, the load
generator ``scripts/loadgen/storm.js`` connects the clients (spread over the
servers), posts numbered events over HTTP at ``--rate`` per second, destroys
every socket at once, reconnects them all and keeps publishing. Reported per
run: time until every client is back, missing and duplicate deliveries over all
clients (recovery must show 0 and 0; plain misses what was published during
the storm), and the servers' CPU per client during the storm.

Needs node and npm (``npm ci`` in scripts/loadgen on first use) and, for the
two-server setting, redis-server. Servers and Redis are stopped however the
run ends.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
LOADGEN = ROOT / "scripts" / "loadgen"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready within {timeout} s")


def start_server(port: int, redis_url: str | None) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "app", "--port", str(port)] + (["--redis", redis_url] if redis_url else [])
    # A short window is enough here; the history must hold what a storm misses.
    # Presence off: the storm's 5,000 clients share one room, where presence costs O(N²) (every
    # member hears of every join; README, Presence); this measures recovery.
    env = {**os.environ, "FLAMIGO_RECOVERY_HISTORY": "10000", "FLAMIGO_MAX_PENDING_REQUESTS": "64",
           "DEMO_PRESENCE": "0"}
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ensure_loadgen() -> str:
    node = shutil.which("node")
    if node is None:
        raise SystemExit("node is not installed")
    if not (LOADGEN / "node_modules" / "ws").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=LOADGEN, check=True)
    return node


def storm(node: str, redis_url: str | None, servers: int, recover: bool, args: argparse.Namespace) -> dict[str, Any]:
    processes = []
    try:
        ports = [free_port() for _ in range(servers)]
        processes = [start_server(port, redis_url) for port in ports]
        config = {"ports": ports, "pids": [p.pid for p in processes], "clients": args.clients,
                  "rate": args.rate, "recover": recover, "room": f"storm{int(time.time() * 1000)}",
                  "timeout": args.timeout}
        result = subprocess.run([node, str(LOADGEN / "storm.js"), json.dumps(config)],
                                capture_output=True, text=True, timeout=args.timeout + 30)
        if result.returncode != 0:
            raise RuntimeError(f"storm.js failed: {result.stderr[-2000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
    finally:
        for process in processes:
            stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    node = ensure_loadgen()
    results = []
    redis_binary = shutil.which("redis-server")
    for recover in (True, False):
        results.append({"setting": "1 server (embedded store)", **storm(node, None, 1, recover, args)})
    if redis_binary:
        port = free_port()
        folder = tempfile.mkdtemp(prefix="flamigo-storm-redis-")
        redis = subprocess.Popen([redis_binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", folder], stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            for recover in (True, False):
                results.append({"setting": "2 servers on Redis",
                                **storm(node, f"redis://127.0.0.1:{port}/0", 2, recover, args)})
        finally:
            redis.terminate()
            redis.wait(10)
            shutil.rmtree(folder, ignore_errors=True)
    else:
        print("redis-server not installed: the two-server setting is skipped", file=sys.stderr)
    print(f"{'setting':28} {'mode':9} {'clients':>7} {'events':>6} {'all back ms':>11} {'missing':>7} "
          f"{'dups':>5} {'cpu ms/client':>13}")
    for r in results:
        cpu = r["server_cpu_ms_per_client"]
        print(f"{r['setting']:28} {'recovery' if r['recover'] else 'plain':9} {r['clients']:>7} {r['events']:>6} "
              f"{r['all_back_ms']:>11} {r['missing']:>7} {r['duplicates']:>5} {cpu:>13.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

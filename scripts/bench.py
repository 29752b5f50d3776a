"""Side-by-side benchmark: flamigo_actors vs raw gevent-websocket vs Flask-SocketIO.

One command runs every workload against the three servers, in the same run,
on the same machine: each server pinned to CPU 0, the load generator (Node:
``scripts/loadgen/loadgen.js``) to CPU 1 with ``taskset``. Servers are started
fresh for every (workload, repetition) and the three are interleaved per
repetition, so they share the machine's noise. Prints a table, writes a PNG
chart of the ratios and the raw figures as JSON under ``bench-results/``.

    python scripts/bench.py                 # everything, 3 repetitions (about 15 min)
    python scripts/bench.py --quick         # about 2 s per workload, small counts, 1 repetition
    python scripts/bench.py --workloads rt50x4,fanout1000 --reps 5
    python scripts/bench.py --metrics --servers flamigo --workloads rt1x1,rt50x4,fanout1000,fanout5000
                                            # the cost of FLAMIGO_METRICS: on vs off, side by side
    python scripts/bench.py --plain --servers flamigo,raw
                                            # the demo's rooms with recovery and presence on (flamigo)
                                            # and off (plain), side by side

Workloads (see the README's "Performance" section):

* ``rt1x1``, ``rt50x4``: round trips of ``app::echo`` with an ackId
  (1 client x 1 in flight, 50 clients x 4 in flight), 10 s: requests/s, p50/p99.
* ``fanout1000``, ``fanout5000``: N connections in one room/topic; an HTTP view
  publishes 20 events 200 ms apart; per event the span (publish until the last
  connection has it); deliveries/s = N / median span; missing must be 0; the
  server's CPU time per delivery from ``/proc/<pid>/stat``.
* ``conns10000``: 10,000 idle (authenticated) connections held 10 s: all held,
  server RSS per connection, time to connect all.
* ``routing``: the bus alone, 10 vs 100,000 unrelated subscriptions
  (``scripts/bench_routing.py``, pinned to CPU 0).
* ``conns75000`` (only when named in ``--workloads``; flamigo only): one
  machine, all its cores: ``--workers 4`` on one port with the Redis backplane
  (a redis-server of its own), 4 generator processes each connecting from its
  own source address (127.0.0.2-127.0.0.5), 75,000 authenticated connections
  in one room, held 10 s, then 5 broadcasts to the room: connect rate, all
  held, RSS per connection per worker, span from publish to last delivery,
  missing (0). ``--conns N`` scales it down (e.g. 8,000 on a shared machine).

``--interleave`` runs each workload's repetitions back to back, the servers
taking turns repetition by repetition (the order rotating), and reports
medians of ``--reps`` (default 5) with the per-repetition ratios.
``--baseline DIR`` adds a server ``baseline``: the demo run from another
checkout of the project (e.g. ``git archive main | tar -x -C /tmp/main``),
taking its turn like the others, to measure a change against the code
before it in the same run.

Needs Linux (``taskset``, ``/proc``), Node.js 18+ and npm (``npm ci`` runs in
``scripts/loadgen`` on first use), and ``pip install -e ".[bench]"``. The
open-files limit of the children is raised to the hard limit (10,000
connections need 10,000 descriptors on each side); raise the hard limit
(``ulimit -Hn``, limits.conf) if it is below 12,000.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
LOADGEN = SCRIPTS / "loadgen"
RESULTS = ROOT / "bench-results"

SERVERS = ("flamigo", "raw", "socketio")
METRICS_SERVER = "metrics"
"""flamigo_actors with FLAMIGO_METRICS=true (``--metrics``): the cost of the metrics, side by side."""
PLAIN_SERVER = "plain"
"""flamigo_actors with the demo's recovery and presence off (``--plain``: ``DEMO_RECOVERY=0
DEMO_PRESENCE=0``); ``flamigo`` has both on for the rooms, as the demo ships."""
BASELINE_SERVER = "baseline"
"""flamigo_actors from another checkout (``--baseline DIR``, e.g. the main branch's code), metrics off:
a change measured side by side with the code before it."""
FLAMIGO_KINDS = ("flamigo", METRICS_SERVER, PLAIN_SERVER, BASELINE_SERVER)
SERVER_LABELS = {"flamigo": "flamigo_actors", "raw": "raw gevent-websocket", "socketio": "Flask-SocketIO",
                 METRICS_SERVER: "flamigo_actors + metrics",
                 PLAIN_SERVER: "flamigo_actors, no recovery/presence",
                 BASELINE_SERVER: "flamigo_actors (baseline checkout)"}
SERVER_CPU, LOAD_CPU = "0", "1"
BASELINE_ROOT: Path | None = None
"""The checkout server 'baseline' runs from (``--baseline``)."""


@dataclass(frozen=True)
class Workload:
    name: str
    mode: str  # loadgen mode, or "routing"
    title: str
    config: dict[str, Any]


def workloads(quick: bool) -> list[Workload]:
    """The workloads, full or quick (about 2 s each, small counts)."""
    if quick:
        rt = {"duration": 2, "warmup": 0.3}
        return [
            Workload("rt1x1", "roundtrip", "round trip 1x1", {"clients": 1, "inflight": 1, **rt}),
            Workload("rt50x4", "roundtrip", "round trip 10x4 (quick)", {"clients": 10, "inflight": 4, **rt}),
            Workload("fanout1000", "fanout", "fan-out 100 (quick)", {"clients": 100, "events": 5, "interval": 200}),
            Workload("fanout5000", "fanout", "fan-out 300 (quick)", {"clients": 300, "events": 5, "interval": 200}),
            Workload("conns10000", "connections", "300 connections (quick)", {"clients": 300, "hold": 1}),
            Workload("routing", "routing", "routing 10 vs 10,000 (quick)", {"quick": True}),
        ]
    rt = {"duration": 10, "warmup": 1}
    return [
        Workload("rt1x1", "roundtrip", "round trip 1x1", {"clients": 1, "inflight": 1, **rt}),
        Workload("rt50x4", "roundtrip", "round trip 50x4", {"clients": 50, "inflight": 4, **rt}),
        Workload("fanout1000", "fanout", "fan-out 1,000", {"clients": 1000, "events": 20, "interval": 200}),
        Workload("fanout5000", "fanout", "fan-out 5,000", {"clients": 5000, "events": 20, "interval": 200}),
        Workload("conns10000", "connections", "10,000 connections", {"clients": 10000, "hold": 10}),
        Workload("routing", "routing", "routing 10 vs 100,000", {"quick": False}),
    ]


# Run only when named in --workloads (minutes long, a redis-server, several processes).
OPT_IN = ("conns75000",)
PER_SOURCE_MAX = 28_000
"""Connections one source address can open to one server port (the ephemeral port range)."""


def crowd_workload(quick: bool, conns: int | None) -> Workload:
    """``conns75000``: 4 workers, 4 generator processes over 127.0.0.2-5 (2 and 2 with --quick)."""
    n = 4 if not quick else 2
    clients = conns if conns is not None else (75_000 if not quick else 400)
    sources = [f"127.0.0.{2 + i}" for i in range(n)]
    title = f"{clients:,} connections, {n} workers"
    return Workload("conns75000", "crowd", title, {
        "clients": clients, "workers": n, "sources": sources, "events": 5, "interval": 1000,
        "hold": 10 if not quick else 1, "connectConcurrency": 100,
    })


# -- processes -----------------------------------------------------------------------


def _raise_nofile() -> None:
    # Runs in each child before exec: 10,000 connections need as many descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _taskset(cpu: str) -> list[str]:
    # Pin to `cpu` when this process may run there (a 1-CPU container cannot pin apart).
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    if shutil.which("taskset") and int(cpu) in allowed:
        return ["taskset", "-c", cpu]
    print(f"warning: cannot pin to CPU {cpu}: running unpinned", file=sys.stderr)
    return []


def uptime() -> str:
    """The load averages (1, 5, 15 min), as ``uptime`` shows them."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


class Server:
    """One server under test, started fresh and pinned to the server CPU."""

    def __init__(self, kind: str, log_dir: Path, extra: tuple[str, ...] = (), pin: bool = True,
                 env_extra: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.port = _free_port()
        python = sys.executable
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        cwd = ROOT
        if kind == BASELINE_SERVER:
            if BASELINE_ROOT is None:
                raise ValueError("server 'baseline' needs --baseline DIR (a checkout holding app/ and flamigo_actors/)")
            cwd = BASELINE_ROOT
            env["PYTHONPATH"] = str(cwd)  # its flamigo_actors, not this checkout's
        if kind in FLAMIGO_KINDS:
            argv = [python, "-m", "app", "--port", str(self.port), "--log-level", "WARNING", *extra]
            env["FLAMIGO_METRICS"] = "true" if kind == METRICS_SERVER else "false"
            on = "0" if kind == PLAIN_SERVER else "1"  # the rooms' recovery and presence (app/factory.py)
            env["DEMO_RECOVERY"] = env["DEMO_PRESENCE"] = on
            env.update(env_extra or {})
        elif kind == "raw":
            argv = [python, str(SCRIPTS / "peers" / "raw_server.py"), "--port", str(self.port)]
        elif kind == "socketio":
            argv = [python, str(SCRIPTS / "peers" / "socketio_server.py"), "--port", str(self.port)]
        else:
            raise ValueError(f"unknown server {kind!r}: use one of {', '.join(SERVERS)}")
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{kind}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            (_taskset(SERVER_CPU) if pin else []) + argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            preexec_fn=_raise_nofile,
        )
        self._wait_ready()

    @property
    def pid(self) -> int:
        return self.proc.pid  # taskset execs the server: same pid

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} server exited with {self.proc.returncode}; see {self.log_path}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                    if sock.recv(64).startswith(b"HTTP/1.") :
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.kind} server did not answer within {timeout:g} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


def ensure_loadgen() -> str:
    """The node executable, after ``npm ci`` installed the generator's pinned packages."""
    node = shutil.which("node")
    if node is None:
        raise SystemExit("error: the load generator needs Node.js (apt-get install nodejs npm)")
    if not (LOADGEN / "node_modules" / "ws").is_dir() or not (
        LOADGEN / "node_modules" / "socket.io-client"
    ).is_dir():
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("error: npm is needed once to install the load generator's packages")
        print("installing the load generator's packages (npm ci in scripts/loadgen)", file=sys.stderr)
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=LOADGEN, check=True)
    return node


def run_loadgen(node: str, kind: str, workload: Workload, server: Server, timeout: float) -> dict[str, Any]:
    protocol = "flamigo" if kind in FLAMIGO_KINDS else kind
    config = {"mode": workload.mode, "kind": protocol, "port": server.port, "pid": server.pid,
              "timeout": timeout, **workload.config}
    budget = timeout * 4 + 30
    proc = subprocess.run(
        _taskset(LOAD_CPU) + [node, str(LOADGEN / "loadgen.js"), json.dumps(config)],
        cwd=LOADGEN,
        capture_output=True,
        text=True,
        timeout=budget,
        preexec_fn=_raise_nofile,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"load generator failed ({kind} {workload.name}, exit {proc.returncode}): "
            f"{proc.stderr.strip()[-2000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- conns75000: several workers, several generator processes -------------------------------


class RedisProcess:
    """A redis-server of the benchmark's own (no persistence) on a free loopback port."""

    def __init__(self, log_dir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("error: conns75000 needs redis-server (apt-get install redis-server)")
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = log_dir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--loglevel", "warning"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _sockets(pid: int) -> int:
    count = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fd_dir):
        try:
            count += os.readlink(fd_dir / fd).startswith("socket:")
        except OSError:
            pass  # closed meanwhile
    return count


def check_crowd(config: dict[str, Any]) -> None:
    """Refuse a size this machine cannot hold, saying which limit and what to do."""
    clients, sources, workers = config["clients"], config["sources"], config["workers"]
    per_source = -(-clients // len(sources))
    if per_source > PER_SOURCE_MAX:
        raise SystemExit(f"error: {per_source:,} connections per source address: one address opens about "
                         f"{PER_SOURCE_MAX:,} to one port; use fewer connections (--conns)")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = (hard if hard != resource.RLIM_INFINITY else 1 << 20) - 200
    if per_source > room:
        raise SystemExit(f"error: {per_source:,} connections per generator process need more than the "
                         f"open-files hard limit ({hard}): use fewer connections (--conns)")
    if clients > workers * room:
        raise SystemExit(f"error: {clients:,} connections exceed {workers} workers x about {room:,} "
                         f"open files each: use fewer connections (--conns)")


def run_crowd(node: str, workload: Workload, log_dir: Path, timeout: float, rep: int = 0) -> dict[str, Any]:
    """conns75000: N workers + Redis, one generator process per source address, then broadcasts.

    Repetition ``rep`` connects from the next addresses along (127.0.0.6-9 after
    127.0.0.2-5...): the previous run's client ports stay in TIME_WAIT for a
    minute, and a generator binds its source address before it connects.
    """
    cfg = workload.config
    check_crowd(cfg)
    redis = RedisProcess(log_dir)
    server: Server | None = None
    gens: list[subprocess.Popen[str]] = []
    try:
        # Presence off: in one room of N members every member hears of every join, O(N²) bytes
        # (README, Presence); this workload is about connections and one broadcast.
        server = Server("flamigo", log_dir, ("--workers", str(cfg["workers"]), "--redis", redis.url,
                                             "--log-level", "INFO"), pin=False, env_extra={"DEMO_PRESENCE": "0"})
        # Every worker up: each logs its open-files ceiling once started.
        deadline = time.monotonic() + 60
        while (len(_children(server.pid)) < cfg["workers"]
               or server.log_path.read_text(errors="replace").count("holds at most about") < cfg["workers"]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {cfg['workers']} workers did not start; see {server.log_path}")
            time.sleep(0.2)
        workers = _children(server.pid)
        base = {pid: (_rss_mib(pid), _sockets(pid)) for pid in workers}
        base_octet = int(cfg["sources"][0].rsplit(".", 1)[1])
        sources = [f"127.0.0.{2 + (base_octet - 2 + rep * len(cfg['sources']) + i) % 250}"
                   for i in range(len(cfg["sources"]))]
        shares = [cfg["clients"] // len(sources) + (i < cfg["clients"] % len(sources)) for i in range(len(sources))]
        t0 = time.monotonic()
        for source, share in zip(sources, shares):
            gen_cfg = {"mode": "crowd", "kind": "flamigo", "port": server.port, "timeout": timeout,
                       "source": source, "clients": share, "events": cfg["events"],
                       "connectConcurrency": cfg["connectConcurrency"], "room": "bench"}
            gens.append(subprocess.Popen(
                [node, str(LOADGEN / "loadgen.js"), json.dumps(gen_cfg)], cwd=LOADGEN, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_raise_nofile,
            ))
        ready = [_line(gen, "ready") for gen in gens]
        connect_s = time.monotonic() - t0
        time.sleep(cfg["hold"])
        held_workers: list[dict[str, Any]] = []
        for pid in workers:
            held_conns = _sockets(pid) - base[pid][1]
            rss = _rss_mib(pid)
            held_workers.append({"pid": pid, "connections": held_conns, "rss_base_mib": base[pid][0], "rss_mib": rss,
                                 "rss_per_conn_kib": (rss - base[pid][0]) * 1024 / held_conns
                                 if held_conns > 0 else None})
        for gen in gens:
            assert gen.stdin is not None
            gen.stdin.write("go\n")
            gen.stdin.flush()
        token = _http_json(server.port, "/api/login", {"username": "bench-publisher"})["token"]
        sent = []
        for k in range(cfg["events"]):
            sent.append(time.monotonic() * 1000)
            _http_json(server.port, "/api/rooms/bench/messages", {"text": f"e{k}"}, token)
            time.sleep(max(0.0, cfg["interval"] / 1000 - (time.monotonic() * 1000 - sent[-1]) / 1000))
        done = [_line(gen, "done") for gen in gens]
        for gen in gens:
            gen.wait(timeout=30)
    finally:
        for gen in gens:
            if gen.poll() is None:
                gen.kill()
                gen.wait()
        if server is not None:
            server.stop()
        redis.stop()
    spans: list[float | None] = []
    for k in range(cfg["events"]):
        lasts = [d["last_ms"][k] for d in done]
        spans.append(None if any(t is None for t in lasts) else max(lasts) - sent[k])
    complete = sorted(s for s in spans if s is not None)
    conns = sum(int(w["connections"]) for w in held_workers)
    rss_delta = sum(float(w["rss_mib"]) - float(w["rss_base_mib"]) for w in held_workers)
    return {
        "mode": "crowd", "kind": "flamigo",
        "connections": cfg["clients"],
        "failed": sum(d["failed"] for d in done),
        "errors": [e for d in done for e in d["errors"]][:5],
        "held": sum(d["held"] for d in done),
        "held_by_workers": conns,
        "connect_s": connect_s,
        "connects_per_s": cfg["clients"] / connect_s,
        "rss_per_conn_kib": rss_delta * 1024 / conns if conns > 0 else None,
        "workers": held_workers,
        "events": cfg["events"],
        "delivered": sum(d["delivered"] for d in done),
        "missing": sum(d["missing"] for d in done),
        "duplicates": sum(d["duplicates"] for d in done),
        "spans_ms": spans,
        "span_ms": statistics.median(complete) if complete else None,
        "span_max_ms": complete[-1] if complete else None,
        "loadgen_cpu_pct": max(r["loadgen_cpu_pct"] for r in ready),
        "generators": [{"source": d["source"], "connections": d["connections"], "connect_s": d["connect_s"],
                        "held": d["held"], "missing": d["missing"]} for d in done],
    }


def _line(gen: subprocess.Popen[str], phase: str) -> dict[str, Any]:
    """The generator's next JSON line (its `phase` report), or its error."""
    assert gen.stdout is not None
    line = gen.stdout.readline()
    if not line:
        err = gen.stderr.read() if gen.stderr is not None else ""
        raise RuntimeError(f"a crowd generator ended before {phase!r} (exit {gen.wait()}): {err.strip()[-2000:]}")
    report: dict[str, Any] = json.loads(line)
    if report.get("phase") != phase:
        raise RuntimeError(f"a crowd generator reported {report.get('phase')!r}, expected {phase!r}")
    return report


def _http_json(port: int, path: str, body: Any, token: str | None = None) -> Any:
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def run_routing(quick: bool) -> dict[str, Any]:
    argv = _taskset(SERVER_CPU) + [sys.executable, str(SCRIPTS / "bench_routing.py"), "--json"]
    if quick:
        argv.append("--quick")
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_routing.py failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- summary ----------------------------------------------------------------------------

# Per loadgen mode: the figures summarised, the one ratios are taken on, and whether higher is better.
METRICS = {
    "roundtrip": [
        ("rps", "req/s", True),
        ("p50_ms", "p50 ms", False),
        ("p99_ms", "p99 ms", False),
        ("server_cpu_us_per_request", "server CPU us/request", False),
    ],
    "fanout": [
        ("deliveries_per_s", "deliveries/s", True),
        ("span_ms", "span ms", False),
        ("server_cpu_us_per_delivery", "server CPU us/delivery", False),
        ("missing", "missing", False),
    ],
    "connections": [
        ("held", "held", True),
        ("rss_per_conn_kib", "RSS KiB/conn", False),
        ("connect_s", "time to connect s", False),
        ("server_cpu_us_per_connect", "server CPU us/connect", False),
        ("auth_s", "then time to authenticate all s", False),
    ],
    "crowd": [
        ("held", "held", True),
        ("connects_per_s", "connected and authenticated per s", True),
        ("rss_per_conn_kib", "RSS KiB/conn (all workers)", False),
        ("span_ms", "broadcast span ms (median of events)", False),
        ("span_max_ms", "broadcast span ms (slowest event)", False),
        ("missing", "missing", False),
        ("duplicates", "duplicates", False),
    ],
}
PRIMARY = {"roundtrip": "rps", "fanout": "deliveries_per_s", "connections": "connect_s", "crowd": "held"}


def stats(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Median and spread per (workload, server, metric), the ratios and the target checks."""
    summary: dict[str, Any] = {}
    for wl in results["workloads"]:
        name, mode = wl["name"], wl["mode"]
        runs = [r for r in results["runs"] if r["workload"] == name]
        if mode == "routing":
            if not runs:
                continue
            values = [r["result"]["ratio"] for r in runs]
            many = [r["result"]["many"]["publish_us"] for r in runs]
            few = [r["result"]["few"]["publish_us"] for r in runs]
            summary[name] = {"ratio": stats(values), "few_us": stats(few), "many_us": stats(many),
                             "subscriptions": runs[0]["result"]["many"]["subscriptions"]}
            continue
        entry: dict[str, Any] = {}
        for server in results["servers"]:
            mine = [r["result"] for r in runs if r["server"] == server]
            if not mine:
                continue
            entry[server] = {key: stats([m.get(key) for m in mine]) for key, _, _ in METRICS[mode]}
            entry[server]["loadgen_cpu_pct"] = stats([m.get("loadgen_cpu_pct") for m in mine])
            entry[server]["uptime"] = [r["uptime"] for r in runs if r["server"] == server]
            if mode in ("connections", "crowd"):
                entry[server]["connections"] = mine[0].get("connections")
            if mode == "crowd":
                entry[server]["workers"] = [r["result"]["workers"] for r in runs if r["server"] == server]
        entry["paired"] = paired(runs, mode)
        summary[name] = entry
    summary["targets"] = targets(summary)
    return summary


def paired(runs: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    """flamigo ÷ each peer, repetition by repetition (each pair ran back to back): their spread."""
    out: dict[str, Any] = {}
    keys = [PRIMARY[mode]] + [k for k, _, _ in METRICS[mode] if k.startswith("server_cpu")]
    by_rep: dict[int, dict[str, dict[str, Any]]] = {}
    for r in runs:
        by_rep.setdefault(r["rep"], {})[r["server"]] = r["result"]
    for peer in ("raw", "socketio"):
        for key in keys:
            ratios = [_ratio(rep["flamigo"].get(key), rep[peer].get(key))
                      for rep in by_rep.values() if "flamigo" in rep and peer in rep]
            found = stats([r for r in ratios if r is not None])
            if found:
                out[f"{key} vs {peer}"] = found
    # The same-checkout variants, per repetition: metrics on ÷ off, this code ÷ the baseline's.
    for label, top, bottom in (("metrics on ÷ off", METRICS_SERVER, "flamigo"),
                               ("flamigo ÷ baseline", "flamigo", BASELINE_SERVER)):
        for key in keys:
            ratios = [_ratio(rep[top].get(key), rep[bottom].get(key))
                      for rep in by_rep.values() if top in rep and bottom in rep]
            found = stats([r for r in ratios if r is not None])
            if found:
                out[f"{label}: {key}"] = found
    return out


def _median(summary: dict[str, Any], workload: str, server: str, key: str) -> float | None:
    try:
        return summary[workload][server][key]["median"]  # type: ignore[no-any-return]
    except (KeyError, TypeError):
        return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value and whether it is met."""
    out: list[dict[str, Any]] = []

    def check(label: str, value: float | None, op: str, limit: float, unit: str = "x") -> None:
        met = None if value is None else (value >= limit if op == ">=" else value <= limit)
        out.append({"target": label, "value": value, "op": op, "limit": limit, "unit": unit, "met": met})

    m = lambda w, s, k: _median(summary, w, s, k)  # noqa: E731
    check("rt 50x4 vs raw", _ratio(m("rt50x4", "flamigo", "rps"), m("rt50x4", "raw", "rps")), ">=", 1.3)
    check("rt 50x4 vs Flask-SocketIO", _ratio(m("rt50x4", "flamigo", "rps"), m("rt50x4", "socketio", "rps")), ">=", 4)
    check("rt 50x4 p99", m("rt50x4", "flamigo", "p99_ms"), "<=", 15, " ms")
    check("rt 1x1 vs raw", _ratio(m("rt1x1", "flamigo", "rps"), m("rt1x1", "raw", "rps")), ">=", 1.0)
    check("rt 1x1 server CPU/request vs raw", _ratio(m("rt1x1", "flamigo", "server_cpu_us_per_request"),
                                                    m("rt1x1", "raw", "server_cpu_us_per_request")), "<=", 1.0)
    for w in ("fanout1000", "fanout5000"):
        check(f"{w} vs raw", _ratio(m(w, "flamigo", "deliveries_per_s"), m(w, "raw", "deliveries_per_s")), ">=", 0.75)
        check(f"{w} vs Flask-SocketIO",
              _ratio(m(w, "flamigo", "deliveries_per_s"), m(w, "socketio", "deliveries_per_s")), ">=", 1.6)
        missing = summary.get(w, {}).get("flamigo", {}).get("missing")
        check(f"{w} missing (worst run)", missing["max"] if missing else None, "<=", 0, "")
    held = summary.get("conns10000", {}).get("flamigo", {})
    if held:
        check("connections held (worst run)", held["held"]["min"] if held.get("held") else None,
              ">=", held.get("connections") or 0, "")
    check("RSS per connection", m("conns10000", "flamigo", "rss_per_conn_kib"), "<=", 32, " KiB")
    check("time to connect vs raw",
          _ratio(m("conns10000", "flamigo", "connect_s"), m("conns10000", "raw", "connect_s")), "<=", 1.5)
    crowd = summary.get("conns75000", {}).get("flamigo", {})
    if crowd:
        check("conns75000 held (worst run)", crowd["held"]["min"] if crowd.get("held") else None,
              ">=", crowd.get("connections") or 0, "")
        check("conns75000 missing (worst run)", crowd["missing"]["max"] if crowd.get("missing") else None,
              "<=", 0, "")
        check("conns75000 broadcast span", m("conns75000", "flamigo", "span_max_ms"), "<=", 1500, " ms")
    routing = summary.get("routing")
    check("routing many/few", routing["ratio"]["median"] if routing else None, "<=", 2)
    if any(METRICS_SERVER in summary.get(w, {}) for w in ("rt1x1", "rt50x4", "fanout1000", "fanout5000")):
        # --metrics: the cost limit, metrics on within 5% of off (same run, interleaved).
        for w, key in (("rt1x1", "rps"), ("rt50x4", "rps"), ("fanout1000", "deliveries_per_s"),
                       ("fanout5000", "deliveries_per_s")):
            check(f"{w} metrics on ÷ off", _ratio(m(w, METRICS_SERVER, key), m(w, "flamigo", key)), ">=", 0.95)
    if any(PLAIN_SERVER in summary.get(w, {}) for w in ("rt1x1", "rt50x4", "fanout1000", "fanout5000",
                                                         "conns10000")):
        # --plain: the demo's recovery and presence on (flamigo) ÷ off (plain), same run: within noise.
        for w, key in (("rt1x1", "rps"), ("rt50x4", "rps"), ("fanout1000", "deliveries_per_s"),
                       ("fanout5000", "deliveries_per_s")):
            check(f"{w} recovery+presence on ÷ off", _ratio(m(w, "flamigo", key), m(w, PLAIN_SERVER, key)),
                  ">=", 0.95)
        check("conns10000 RSS per connection, recovery+presence on ÷ off",
              _ratio(m("conns10000", "flamigo", "rss_per_conn_kib"), m("conns10000", PLAIN_SERVER, "rss_per_conn_kib")),
              "<=", 1.05)
    return out


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000 and digits == 0:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _cell(s: dict[str, float] | None, digits: int) -> str:
    if not s:
        return "-"
    if s["n"] > 1:
        return f"{_fmt(s['median'], digits)} ({_fmt(s['min'], digits)}-{_fmt(s['max'], digits)})"
    return _fmt(s["median"], digits)


DIGITS = {"p50_ms": 2, "p99_ms": 1, "span_ms": 1, "server_cpu_us_per_delivery": 1, "server_cpu_us_per_request": 1,
          "rss_per_conn_kib": 1, "connect_s": 2, "auth_s": 2}


def table(results: dict[str, Any], summary: dict[str, Any]) -> str:
    """The results as a Markdown table (median, with min-max when repeated)."""
    lines = [
        "| workload | figure | " + " | ".join(SERVER_LABELS[s] for s in results["servers"]) + " | flamigo ÷ raw | flamigo ÷ Flask-SocketIO |",
        "|---|---|" + "---|" * len(results["servers"]) + "---|---|",
    ]
    for wl in results["workloads"]:
        name, mode = wl["name"], wl["mode"]
        entry = summary.get(name)
        if not entry:
            continue
        if mode == "routing":
            lines.append(
                f"| {wl['title']} | µs per publish: 10 → {entry['subscriptions']:,} subscriptions | "
                f"{_cell(entry['few_us'], 2)} → {_cell(entry['many_us'], 2)} |"
                + " |" * (len(results["servers"]) - 1)
                + f" many ÷ few: {_fmt(entry['ratio']['median'], 2)} | |"
            )
            continue
        for key, label, _ in METRICS[mode]:
            cells = [_cell(entry.get(s, {}).get(key), DIGITS.get(key, 0)) for s in results["servers"]]
            ratios = ["", ""]
            if key == PRIMARY[mode] or (mode == "connections" and key == "rss_per_conn_kib"):
                f = _median(summary, name, "flamigo", key)
                ratios = [_fmt(_ratio(f, _median(summary, name, "raw", key)), 2),
                          _fmt(_ratio(f, _median(summary, name, "socketio", key)), 2)]
            lines.append(f"| {wl['title']} | {label} | " + " | ".join(cells) + f" | {ratios[0]} | {ratios[1]} |")
        if mode == "crowd" and entry.get("flamigo", {}).get("workers"):
            per_worker = "; ".join(
                f"{w['connections']:,} conns, {_fmt(w['rss_per_conn_kib'], 1)} KiB/conn"
                for w in entry["flamigo"]["workers"][-1]
            )
            lines.append(f"| {wl['title']} | per worker (last run) | {per_worker} |" + " |" * (len(results["servers"]) + 1))
        for what, spread in entry.get("paired", {}).items():
            if spread["n"] > 1 and ": " in what:  # a same-checkout pair (metrics, baseline)
                lines.append(f"| {wl['title']} | {what} per repetition | {_cell(spread, 2)} |"
                             + " |" * (len(results["servers"]) + 1))
                continue
            if spread["n"] > 1:  # with several repetitions: the spread of the paired ratios
                key, _, peer = what.partition(" vs ")
                cols = ["", ""]
                cols[0 if peer == "raw" else 1] = _cell(spread, 2)
                lines.append(f"| {wl['title']} | flamigo ÷ {SERVER_LABELS[peer]} per repetition: {key} | "
                             + " | " * len(results["servers"]) + f"{cols[0]} | {cols[1]} |")
        gen = [entry.get(s, {}).get("loadgen_cpu_pct") for s in results["servers"]]
        lines.append(
            f"| {wl['title']} | load generator CPU % | "
            + " | ".join(_fmt(g["max"], 0) if g else "-" for g in gen) + " | | |"
        )
    lines.append("")
    lines.append("| target | measured | limit | met |")
    lines.append("|---|---|---|---|")
    for t in summary["targets"]:
        value = "-" if t["value"] is None else f"{t['value']:.2f}{t['unit']}"
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {value} | {t['op']} {t['limit']:g}{t['unit']} | {met} |")
    return "\n".join(lines)


def chart(summary: dict[str, Any], path: Path) -> Path | None:
    """A bar chart of the target ratios (flamigo ÷ peer), with each target's line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing (pip install -e '.[bench]'): no chart", file=sys.stderr)
        return None
    bars = [t for t in summary["targets"] if t["unit"] == "x" and t["value"] is not None]
    if not bars:
        return None
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(bars) + 1.5))
    labels = [t["target"] for t in bars]
    values = [t["value"] for t in bars]
    colours = ["#2e7d32" if t["met"] else "#c62828" for t in bars]
    y = range(len(bars))
    ax.barh(list(y), values, color=colours)
    for i, t in enumerate(bars):
        ax.plot([t["limit"], t["limit"]], [i - 0.4, i + 0.4], color="black", linewidth=2)
        ax.text(t["value"], i, f" {t['value']:.2f}x ({t['op']} {t['limit']:g})", va="center", fontsize=8)
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (black mark: target; green met, red not met)")
    ax.set_title("flamigo_actors vs peers, same run (medians)")
    ax.set_xlim(0, max(values + [t["limit"] for t in bars]) * 1.35)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    node = shutil.which("node")
    node_version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip() if node else None
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True).stdout.strip()
    except OSError:
        rev = "?"
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "node": node_version,
            "kernel": platform.release(), "commit": rev,
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)}


# -- main -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.conns is not None and args.conns < 1:
        raise SystemExit(f"error: --conns must be at least 1, got {args.conns}")
    chosen = workloads(args.quick) + [crowd_workload(args.quick, args.conns)]
    if args.workloads:
        wanted = args.workloads.split(",")
        unknown = set(wanted) - {w.name for w in chosen}
        if unknown:
            raise SystemExit(f"error: unknown workload(s) {sorted(unknown)}: use {[w.name for w in chosen]}")
        chosen = [w for w in chosen if w.name in wanted]
    else:
        chosen = [w for w in chosen if w.name not in OPT_IN]
    for wl in chosen:
        if wl.mode == "crowd":
            check_crowd(wl.config)  # before anything starts
    servers = args.servers.split(",")
    if args.metrics and METRICS_SERVER not in servers:
        servers.append(METRICS_SERVER)
    if args.plain and PLAIN_SERVER not in servers:
        servers.append(PLAIN_SERVER)
    if args.baseline:
        global BASELINE_ROOT
        BASELINE_ROOT = Path(args.baseline).resolve()
        if not (BASELINE_ROOT / "app").is_dir() or not (BASELINE_ROOT / "flamigo_actors").is_dir():
            raise SystemExit(f"error: --baseline {args.baseline}: no app/ and flamigo_actors/ there "
                             "(give a checkout of this project, e.g. made with git archive or git worktree)")
        if BASELINE_SERVER not in servers:
            servers.append(BASELINE_SERVER)
    for s in servers:
        if s not in SERVER_LABELS:
            raise SystemExit(f"error: unknown server {s!r}: use {', '.join(SERVER_LABELS)}")
    reps = args.reps or (1 if args.quick else 5 if args.interleave else 3)
    node = ensure_loadgen() if any(w.mode != "routing" for w in chosen) else ""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = out_dir / f"logs-{stamp}"
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "quick": args.quick,
        "reps": reps,
        "interleave": bool(args.interleave),
        "servers": servers,
        "machine": machine(),
        "uptime_before": uptime(),
        "workloads": [{"name": w.name, "mode": w.mode, "title": w.title, "config": w.config} for w in chosen],
        "runs": [],
    }
    timeout = 20.0 if args.quick else 60.0
    # Default order: repetition, then workload, then server. --interleave: workload, then
    # repetition, then server (the order rotating each repetition), so each workload's
    # repetitions run back to back and no server always goes first.
    if args.interleave:
        plan = [(rep, wl, servers[rep % len(servers):] + servers[:rep % len(servers)])
                for wl in chosen for rep in range(reps)]
    else:
        plan = [(rep, wl, servers) for rep in range(reps) for wl in chosen]
    for rep, wl, order in plan:
        if wl.mode == "routing":
            load = uptime()
            result = run_routing(bool(wl.config.get("quick")))
            results["runs"].append({"workload": wl.name, "server": "flamigo", "rep": rep,
                                    "uptime": load, "result": result})
            print(f"[rep {rep + 1}/{reps}] {wl.title}: many/few {result['ratio']:.2f}x  (load {load})",
                  file=sys.stderr, flush=True)
            continue
        for kind in order:
            load = uptime()
            if wl.mode == "crowd":
                if kind != "flamigo":
                    continue  # the peers have no multi-process broadcast
                result = run_crowd(node, wl, log_dir, max(timeout, 120.0), rep)
            else:
                server = Server(kind, log_dir)
                try:
                    result = run_loadgen(node, kind, wl, server, timeout)
                finally:
                    server.stop()
            results["runs"].append({"workload": wl.name, "server": kind, "rep": rep,
                                    "uptime": load, "result": result})
            key = PRIMARY[wl.mode]
            print(f"[rep {rep + 1}/{reps}] {wl.title:<28} {SERVER_LABELS[kind]:<22} "
                  f"{key}={_fmt(result.get(key), 2)}  loadgen CPU {result.get('loadgen_cpu_pct', 0):.0f}%  "
                  f"(load {load})", file=sys.stderr, flush=True)
            time.sleep(args.pause)
    results["uptime_after"] = uptime()
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    results["summary"] = summarise(results)
    base = out_dir / f"bench-{stamp}{'-quick' if args.quick else ''}"
    results["table"] = table(results, results["summary"])
    png = None if args.no_chart else chart(results["summary"], base.with_suffix(".png"))
    results["chart"] = str(png) if png else None
    results["files"] = [str(base.with_suffix(".json")), str(base.with_suffix(".md"))] + ([str(png)] if png else [])
    base.with_suffix(".json").write_text(json.dumps(results, indent=1))
    base.with_suffix(".md").write_text(results["table"] + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 2 s per workload, small counts, 1 repetition")
    parser.add_argument("--workloads", help="comma-separated subset: rt1x1,rt50x4,fanout1000,fanout5000,conns10000,"
                                            "routing; conns75000 runs only when named")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help="comma-separated subset of flamigo,raw,socketio,metrics,plain (metrics: flamigo "
                             "with FLAMIGO_METRICS=true; plain: flamigo with the demo's recovery and presence off)")
    parser.add_argument("--reps", type=int,
                        help="repetitions of each figure (default 3; 5 with --interleave; 1 with --quick)")
    parser.add_argument("--interleave", action="store_true",
                        help="run each workload's repetitions back to back, the servers taking turns each "
                             "repetition (rotating order); report medians and per-repetition ratios")
    parser.add_argument("--conns", type=int,
                        help="connections of conns75000 (default 75,000): e.g. 8000 on a shared machine")
    parser.add_argument("--out", default=str(RESULTS), help="results directory (default bench-results/)")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between runs (sockets settle)")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    parser.add_argument(
        "--metrics", action="store_true",
        help="also run flamigo_actors with FLAMIGO_METRICS=true (server 'metrics'), interleaved, "
             "and check on ÷ off >= 0.95",
    )
    parser.add_argument(
        "--plain", action="store_true",
        help="also run flamigo_actors with the demo's recovery and presence off (server 'plain'), "
             "interleaved, and check on ÷ off >= 0.95",
    )
    parser.add_argument(
        "--baseline", metavar="DIR",
        help="also run the demo from another checkout of this project (server 'baseline', metrics off), "
             "interleaved: e.g. the main branch's code against this one's",
    )
    args = parser.parse_args(argv)
    if sys.platform != "linux":
        raise SystemExit("error: the benchmark needs Linux (taskset, /proc)")
    if (os.cpu_count() or 1) < 2:
        print("warning: fewer than 2 CPUs: server and load generator share one", file=sys.stderr)
    results = run(args)
    m = results["machine"]
    print(f"\n{m['cpu']}, {m['cores']} cores; load before {results['uptime_before']}, "
          f"after {results['uptime_after']}; commit {m['commit']}\n")
    print(results["table"])
    print("\nresults: " + ", ".join(results["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

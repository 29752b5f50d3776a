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
SERVER_LABELS = {"flamigo": "flamigo_actors", "raw": "raw gevent-websocket", "socketio": "Flask-SocketIO",
                 METRICS_SERVER: "flamigo_actors + metrics"}
SERVER_CPU, LOAD_CPU = "0", "1"


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

    def __init__(self, kind: str, log_dir: Path) -> None:
        self.kind = kind
        self.port = _free_port()
        python = sys.executable
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if kind in ("flamigo", METRICS_SERVER):
            argv = [python, "-m", "app", "--port", str(self.port), "--log-level", "WARNING"]
            env["FLAMIGO_METRICS"] = "true" if kind == METRICS_SERVER else "false"
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
            _taskset(SERVER_CPU) + argv,
            cwd=ROOT,
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
    protocol = "flamigo" if kind == METRICS_SERVER else kind
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
}
PRIMARY = {"roundtrip": "rps", "fanout": "deliveries_per_s", "connections": "connect_s"}


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
            if mode == "connections":
                entry[server]["connections"] = mine[0].get("connections")
        summary[name] = entry
    summary["targets"] = targets(summary)
    return summary


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
    check("rt 1x1 vs raw", _ratio(m("rt1x1", "flamigo", "rps"), m("rt1x1", "raw", "rps")), ">=", 0.8)
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
    routing = summary.get("routing")
    check("routing many/few", routing["ratio"]["median"] if routing else None, "<=", 2)
    if any(METRICS_SERVER in summary.get(w, {}) for w in ("rt1x1", "rt50x4", "fanout1000", "fanout5000")):
        # --metrics: the cost limit, metrics on within 5% of off (same run, interleaved).
        for w, key in (("rt1x1", "rps"), ("rt50x4", "rps"), ("fanout1000", "deliveries_per_s"),
                       ("fanout5000", "deliveries_per_s")):
            check(f"{w} metrics on ÷ off", _ratio(m(w, METRICS_SERVER, key), m(w, "flamigo", key)), ">=", 0.95)
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
    chosen = workloads(args.quick)
    if args.workloads:
        wanted = args.workloads.split(",")
        unknown = set(wanted) - {w.name for w in chosen}
        if unknown:
            raise SystemExit(f"error: unknown workload(s) {sorted(unknown)}: use {[w.name for w in chosen]}")
        chosen = [w for w in chosen if w.name in wanted]
    servers = args.servers.split(",")
    if args.metrics and METRICS_SERVER not in servers:
        servers.append(METRICS_SERVER)
    for s in servers:
        if s not in SERVER_LABELS:
            raise SystemExit(f"error: unknown server {s!r}: use {', '.join(SERVER_LABELS)}")
    reps = args.reps or (1 if args.quick else 3)
    node = ensure_loadgen() if any(w.mode != "routing" for w in chosen) else ""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = out_dir / f"logs-{stamp}"
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "quick": args.quick,
        "reps": reps,
        "servers": servers,
        "machine": machine(),
        "uptime_before": uptime(),
        "workloads": [{"name": w.name, "mode": w.mode, "title": w.title, "config": w.config} for w in chosen],
        "runs": [],
    }
    timeout = 20.0 if args.quick else 60.0
    for rep in range(reps):
        for wl in chosen:
            if wl.mode == "routing":
                load = uptime()
                result = run_routing(bool(wl.config.get("quick")))
                results["runs"].append({"workload": wl.name, "server": "flamigo", "rep": rep,
                                        "uptime": load, "result": result})
                print(f"[rep {rep + 1}/{reps}] {wl.title}: many/few {result['ratio']:.2f}x  (load {load})",
                      file=sys.stderr, flush=True)
                continue
            for kind in servers:
                load = uptime()
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
    parser.add_argument("--workloads", help="comma-separated subset: rt1x1,rt50x4,fanout1000,fanout5000,conns10000,routing")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset of flamigo,raw,socketio,metrics (flamigo with FLAMIGO_METRICS=true)")
    parser.add_argument("--reps", type=int, help="repetitions of each figure (default 3; 1 with --quick)")
    parser.add_argument("--out", default=str(RESULTS), help="results directory (default bench-results/)")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between runs (sockets settle)")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    parser.add_argument(
        "--metrics", action="store_true",
        help="also run flamigo_actors with FLAMIGO_METRICS=true (server 'metrics'), interleaved, "
             "and check on ÷ off >= 0.95",
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

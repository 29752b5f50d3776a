"""Capacity of the Redis backplane and of ``--workers``: the figures behind the README's capacity model.

    python scripts/bench_capacity.py            # both parts, full size (several minutes)
    python scripts/bench_capacity.py --quick    # small sizes, a smoke run (about a minute)
    python scripts/bench_capacity.py --parts backplane --modes stream,interest --procs 1,2,4
    python scripts/bench_capacity.py --parts backplane --bp-pace 0.002   # a trickle: one event per write
    python scripts/bench_capacity.py --parts workers --conns 8000 --worker-counts 1,2,4

Run from the repository root. Two parts, one run, side by side:

* ``backplane``: for each mode of ``--modes`` (``FLAMIGO_REDIS_BACKPLANE``:
  ``stream`` reads the app's whole stream in every process; ``interest`` only
  the topics a process's subscribers match) and each count of ``--procs``
  (1, 2, 4), a fresh redis-server and that many server processes
  (``scripts/peers/backplane_app.py``: the demo with ``POST /bench/fire``,
  which publishes straight onto the bus). Room ``all`` (a topic everyone
  listens to) has ``--members`` subscribers spread over the processes, and
  each process's own room ``p<i>`` (a topic one process listens to) has
  ``--members`` on that process: every event has ``--members`` deliveries
  whatever the count of processes, so what grows with it is the backplane's
  cost. Every process
  publishes its share of the events to ``all``, and the events of ``p<i>``
  are published by the next process along (all at once, written in batches;
  ``--bp-pace S``: each publisher pauses S s after each event, so events are
  written about one at a time, the costliest case of the interest mode's
  per-batch script). Reported: events/s published and
  delivered end to end, deliveries (missing and duplicates: 0), Redis
  commands per event (``INFO commandstats`` before/after, by command), Redis
  CPU per event (``INFO cpu``), server CPU per event. A mode the server
  refuses at start, or that this version of flamigo_actors does not have
  (a bogus ``FLAMIGO_REDIS_BACKPLANE`` value is not refused), is reported
  "not available" and the run goes on.
* ``workers``: for each of ``--worker-counts`` (1, 2, 4), the demo with
  ``--workers W --redis`` (recovery on, presence off, as in ``conns75000``),
  ``--conns`` authenticated connections in one room from one Node generator
  process per source address (127.0.0.2, ...), held ``--hold`` s, then
  ``--events`` broadcasts posted all at once (``POST
  /api/rooms/bench/messages``: the room actor takes them one by one). Reported per worker: connections held, RSS
  per connection, CPU during the broadcast; deliveries/s (all deliveries
  over the span from the first publish to the last delivery); Redis
  commands/s idle and during the broadcast, Redis CPU; every generator's CPU;
  the machine's CPU (``/proc/stat``, other jobs included) and which component
  saturates first. Then the capacity model's prediction for 2 and 4 workers
  from the 1-worker unit costs, next to what was measured.

Prints Markdown tables ready for the README and writes
``bench-results/capacity-<time>.json`` and ``.md``. Figures depend on the
machine and on what else runs on it: they are printed, never asserted. Every
process it starts is stopped at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench  # noqa: E402 - the side-by-side benchmark's process helpers

CLK_TCK = os.sysconf("SC_CLK_TCK")
MODES = ("stream", "interest")
BACKPLANE_ENV = "FLAMIGO_REDIS_BACKPLANE"


# -- measuring ----------------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (``/proc/stat``)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / CLK_TCK, sum(ticks) / CLK_TCK


def redis_info(port: int, section: str) -> dict[str, str]:
    """``INFO <section>`` of the redis-server on ``port``, as a dict."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"INFO {section}\r\n".encode())
        buf = b""
        while b"\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"redis on port {port} closed the connection during INFO {section}")
            buf += chunk
        header, rest = buf.split(b"\r\n", 1)
        if not header.startswith(b"$"):
            raise RuntimeError(f"redis on port {port} answered INFO {section} with {header!r}")
        size = int(header[1:])
        while len(rest) < size:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"redis on port {port} closed the connection during INFO {section}")
            rest += chunk
    pairs = (line.split(":", 1) for line in rest[:size].decode().splitlines() if ":" in line)
    return {key: value for key, value in pairs}


class RedisMeter:
    """Redis commands (by name, ``INFO`` itself left out) and CPU seconds, read before and after."""

    def __init__(self, port: int) -> None:
        self.port = port

    def read(self) -> dict[str, Any]:
        commands: dict[str, int] = {}
        for key, value in redis_info(self.port, "commandstats").items():
            name = key.removeprefix("cmdstat_")
            if name != "info":
                commands[name] = int(value.split(",", 1)[0].split("=", 1)[1])
        cpu = redis_info(self.port, "cpu")
        return {"commands": commands, "cpu_s": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])}

    def settle(self, quiet: float = 0.5, limit: float = 10.0) -> None:
        """Wait until no ``XADD`` arrived for ``quiet`` s (at most ``limit`` s): every process's
        backplane has written what it queued (its sender may lag the local deliveries)."""
        deadline = time.monotonic() + limit
        last = self.read()["commands"].get("xadd", 0)
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self.read()["commands"].get("xadd", 0)
            if now == last:
                return
            last = now

    @staticmethod
    def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        names = set(before["commands"]) | set(after["commands"])
        by = {n: after["commands"].get(n, 0) - before["commands"].get(n, 0) for n in names}
        by = {n: c for n, c in sorted(by.items(), key=lambda kv: -kv[1]) if c}
        return {"commands": sum(by.values()), "by_command": by, "cpu_s": after["cpu_s"] - before["cpu_s"]}


class CpuMeter:
    """CPU seconds of named processes, and of the whole machine, between two reads."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = {name: cpu_s(pid) for name, pid in pids.items()}
        self.machine = machine_busy()
        self.t0 = time.monotonic()

    def read(self) -> dict[str, Any]:
        wall = time.monotonic() - self.t0
        busy, total = machine_busy()
        used = {name: cpu_s(pid) - self.start[name] for name, pid in self.pids.items()}
        return {"wall_s": wall, "cpu_s": used,
                "machine_busy_cores": (busy - self.machine[0]) / wall if wall > 0 else None,
                "machine_busy_pct": 100 * (busy - self.machine[0]) / (total - self.machine[1])
                if total > self.machine[1] else None}


def post_all(requests: list[tuple[int, str, Any]], token: str | None = None) -> list[int]:
    """Send every ``(port, path, body)`` POST at once (one socket each), then read every status."""
    socks = []
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    for port, path, body in requests:
        data = json.dumps(body).encode()
        sock = socket.create_connection(("127.0.0.1", port), timeout=300)
        sock.sendall(f"POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        socks.append(sock)
    statuses = []
    for sock in socks:
        with sock:
            head = b""
            while b"\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
            statuses.append(int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0)
    return statuses


# -- processes ----------------------------------------------------------------------------------


class AppProcess:
    """``scripts/peers/backplane_app.py`` on a free port, or the reason it refused to start."""

    def __init__(self, redis_url: str, env_extra: dict[str, str], log_path: Path) -> None:
        self.port = bench._free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1", FLAMIGO_METRICS="false", DEMO_RECOVERY="0",
                   DEMO_PRESENCE="0", PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "scripts" / "peers")]))
        env.pop(BACKPLANE_ENV, None)
        env.update(env_extra)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flamigo_actors.serving.cli", "run", "backplane_app:create_app",
             "--port", str(self.port), "--redis", redis_url, "--log-level", "WARNING"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            preexec_fn=bench._raise_nofile,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 60.0) -> str | None:
        """None once it answers ``/healthz``; else why not (its exit status and last log line)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                lines = self.log_path.read_text(errors="replace").strip().splitlines()
                return f"exit {self.proc.returncode}: {lines[-1] if lines else 'no output'}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                    if sock.recv(64).startswith(b"HTTP/1."):
                        return None
            except OSError:
                pass
            time.sleep(0.1)
        return f"did not answer within {timeout:g} s (see {self.log_path})"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


def start_generator(node: str, port: int, room: str, clients: int, events: int, timeout: float,
                    source: str | None = None, concurrency: int = 100) -> subprocess.Popen[str]:
    """A Node crowd generator: ``clients`` authenticated connections in ``room``, open until told to close."""
    cfg: dict[str, Any] = {"mode": "crowd", "kind": "flamigo", "port": port, "timeout": timeout, "room": room,
                           "clients": clients, "events": events, "connectConcurrency": concurrency,
                           "users": min(100, clients), "linger": True}
    if source is not None:
        cfg["source"] = source
    return subprocess.Popen(
        [node, str(bench.LOADGEN / "loadgen.js"), json.dumps(cfg)], cwd=bench.LOADGEN, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=bench._raise_nofile,
    )


def tell(gens: list[subprocess.Popen[str]], line: str) -> None:
    for gen in gens:
        assert gen.stdin is not None
        gen.stdin.write(line + "\n")
        gen.stdin.flush()


def close_generators(gens: list[subprocess.Popen[str]]) -> None:
    """Let lingering generators close their connections and end; kill whatever does not."""
    for gen in gens:
        if gen.poll() is None:
            try:
                tell([gen], "close")
                gen.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if gen.poll() is None:
            gen.kill()
            gen.wait()


# -- part 1: backplane throughput -------------------------------------------------------------


def probe_setting(log_dir: Path) -> bool:
    """Whether this flamigo_actors has ``FLAMIGO_REDIS_BACKPLANE``: a bogus value must be refused."""
    redis = bench.RedisProcess(log_dir)
    app = AppProcess(redis.url, {BACKPLANE_ENV: "no-such-mode"}, log_dir / "probe.log")
    try:
        return app.wait_ready(timeout=60) is not None
    finally:
        app.stop()
        redis.stop()


def backplane_run(node: str, mode: str, procs: int, members: int, events: int, timeout: float, log_dir: Path,
                  pass_mode: bool, pace: float = 0.0) -> dict[str, Any]:
    """One (mode, processes) run: subscribers on every process, every process publishing."""
    redis = bench.RedisProcess(log_dir)
    env = {"FLAMIGO_MAILBOX_MAX_DELIVERIES": str(events * 2), "FLAMIGO_OUTBOUND_MAX_MESSAGES": str(events * 2)}
    if pass_mode:
        env[BACKPLANE_ENV] = mode
    apps: list[AppProcess] = []
    gens: list[subprocess.Popen[str]] = []
    try:
        apps = [AppProcess(redis.url, env, log_dir / f"{mode}-{procs}p-{i}.log") for i in range(procs)]
        for app in apps:
            refused = app.wait_ready()
            if refused is not None:
                return {"mode": mode, "procs": procs, "available": False, "why": refused}
        shared = events // 2 // procs * procs  # to room "all", split evenly over the publishers
        own = (events - shared) // procs  # to each room "p<i>", published by process i+1
        # Deliveries per event stay `members` whatever the count of processes: room "all" has its
        # members spread over the processes, each room "p<i>" all of its own on process i.
        gens = [start_generator(node, app.port, "all", members // procs, shared, timeout) for app in apps]
        gens += [start_generator(node, app.port, f"p{i}", members, own, timeout) for i, app in enumerate(apps)]
        for gen in gens:
            bench._line(gen, "ready")
        meter = RedisMeter(redis.port)
        before = meter.read()
        cpu = CpuMeter({f"server{i}": app.pid for i, app in enumerate(apps)} | {"redis": redis.proc.pid}
                       | {f"gen{i}": gen.pid for i, gen in enumerate(gens)})
        tell(gens, "go")
        share = shared // procs
        requests = [(app.port, "/bench/fire", {"room": "all", "first": i * share, "count": share, "pace": pace})
                    for i, app in enumerate(apps)]
        requests += [(apps[(i + 1) % procs].port, "/bench/fire",
                      {"room": f"p{i}", "first": 0, "count": own, "pace": pace}) for i in range(procs)]
        t0 = time.monotonic()
        statuses = post_all(requests)
        published_s = time.monotonic() - t0
        if any(s != 202 for s in statuses):
            raise RuntimeError(f"POST /bench/fire answered {statuses}; see {log_dir}")
        done = [bench._line(gen, "done") for gen in gens]
        meter.settle()
        used = cpu.read()
        after = meter.read()
    finally:
        close_generators(gens)
        for app in apps:
            app.stop()
        redis.stop()
    published = shared + own * procs
    expected = (shared + own * procs) * members
    delivered = sum(d["delivered"] for d in done)
    lasts = [t for d in done for t in d["last_ms"] if t is not None]
    span_s = (max(lasts) - t0 * 1000) / 1000 if lasts else None
    redis_used = RedisMeter.delta(before, after)
    server_cpu = sum(v for k, v in used["cpu_s"].items() if k.startswith("server"))
    return {
        "mode": mode, "procs": procs, "available": True, "members_per_room": members, "pace_s": pace,
        "deliveries_per_event": members,
        "published": published, "expected": expected, "delivered": delivered,
        "missing": sum(d["missing"] for d in done), "duplicates": sum(d["duplicates"] for d in done),
        "failed": sum(d["failed"] for d in done), "errors": [e for d in done for e in d["errors"]][:5],
        "publish_s": published_s, "span_s": span_s,
        "published_per_s": published / published_s if published_s > 0 else None,
        "events_per_s": published / span_s if span_s else None,
        "deliveries_per_s": delivered / span_s if span_s else None,
        "redis_commands": redis_used["commands"], "redis_by_command": redis_used["by_command"],
        "redis_commands_per_event": redis_used["commands"] / published,
        "redis_by_command_per_event": {n: c / published for n, c in redis_used["by_command"].items()},
        "redis_cpu_us_per_event": redis_used["cpu_s"] * 1e6 / published,
        "server_cpu_us_per_event": server_cpu * 1e6 / published,
        "loadgen_cpu_pct": max(100 * v / used["wall_s"] for k, v in used["cpu_s"].items() if k.startswith("gen")),
        "machine_busy_pct": used["machine_busy_pct"],
    }


def run_backplane(node: str, args: argparse.Namespace, log_dir: Path) -> list[dict[str, Any]]:
    has_setting = probe_setting(log_dir / "probe")
    print(f"backplane: {BACKPLANE_ENV} is {'a setting' if has_setting else 'not a setting'} of this "
          "flamigo_actors", flush=True)
    results = []
    for mode in args.modes:
        for procs in args.procs:
            if mode != "stream" and not has_setting:
                result = {"mode": mode, "procs": procs, "available": False,
                          "why": f"this flamigo_actors has no {BACKPLANE_ENV} setting (a bogus value starts)"}
            else:
                result = backplane_run(node, mode, procs, args.members, args.bp_events, args.timeout,
                                       log_dir / f"bp-{mode}-{procs}", has_setting, args.bp_pace)
            results.append(result)
            if result["available"]:
                print(f"  {mode} x{procs}: {result['events_per_s']:.0f} events/s, "
                      f"{result['redis_commands_per_event']:.2f} Redis commands/event, "
                      f"missing {result['missing']}", flush=True)
            else:
                print(f"  {mode} x{procs}: not available ({result['why']})", flush=True)
    return results


# -- part 2: 1 -> 2 -> 4 workers --------------------------------------------------------------


def workers_run(node: str, workers: int, conns: int, sources: list[str], events: int, hold: float,
                timeout: float, log_dir: Path) -> dict[str, Any]:
    """The demo with ``--workers W``: connections held, then a burst of broadcasts to their room."""
    bench.check_crowd({"clients": conns, "sources": sources, "workers": workers})
    redis = bench.RedisProcess(log_dir)
    server: bench.Server | None = None
    gens: list[subprocess.Popen[str]] = []
    try:
        # The burst queues every post at the room at once: on a loaded machine the last one waits for
        # the deliveries of all before it, past the 10 s default of a domain-actor call.
        env = {"DEMO_PRESENCE": "0", "FLAMIGO_MAILBOX_MAX_DELIVERIES": str(max(1000, events * 2)),
               "FLAMIGO_OUTBOUND_MAX_MESSAGES": str(max(1000, events * 2)),
               "FLAMIGO_ACTOR_CALL_TIMEOUT": str(max(60.0, timeout))}
        server = bench.Server("flamigo", log_dir, ("--workers", str(workers), "--redis", redis.url,
                                                   "--log-level", "INFO"), pin=False, env_extra=env)
        deadline = time.monotonic() + 90
        while (server.log_path.read_text(errors="replace").count("holds at most about") < workers
               or (workers > 1 and len(bench._children(server.pid)) < workers)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {workers} workers did not start; see {server.log_path}")
            time.sleep(0.2)
        pids = bench._children(server.pid) if workers > 1 else [server.pid]
        base = {pid: (bench._rss_mib(pid), bench._sockets(pid)) for pid in pids}
        shares = [conns // len(sources) + (i < conns % len(sources)) for i in range(len(sources))]
        t0 = time.monotonic()
        gens = [start_generator(node, server.port, "bench", share, events, timeout, source)
                for source, share in zip(sources, shares)]
        ready = [bench._line(gen, "ready") for gen in gens]
        connect_s = time.monotonic() - t0
        meter = RedisMeter(redis.port)
        idle_before, idle_t0 = meter.read(), time.monotonic()
        time.sleep(hold)
        idle = RedisMeter.delta(idle_before, meter.read())
        idle_s = time.monotonic() - idle_t0
        per_worker: list[dict[str, Any]] = []
        for pid in pids:
            held = bench._sockets(pid) - base[pid][1]
            rss = bench._rss_mib(pid)
            per_worker.append({"pid": pid, "connections": held, "rss_mib": rss,
                               "rss_per_conn_kib": (rss - base[pid][0]) * 1024 / held if held > 0 else None})
        token = bench._http_json(server.port, "/api/login", {"username": "bench-publisher"})["token"]
        before = meter.read()
        cpu = CpuMeter({f"worker{i}": pid for i, pid in enumerate(pids)} | {"redis": redis.proc.pid}
                       | {f"gen{i}": gen.pid for i, gen in enumerate(gens)} | {"bench": os.getpid()})
        tell(gens, "go")
        first = time.monotonic() * 1000
        # All at once: the room takes them one by one, the workers deliver as fast as they can.
        statuses = post_all([(server.port, "/api/rooms/bench/messages", {"text": f"e{k}"}) for k in range(events)],
                            token)
        posted_s = time.monotonic() - first / 1000
        if any(s != 202 for s in statuses):
            raise RuntimeError(f"POST /api/rooms/bench/messages answered {statuses}; see {server.log_path}")
        done = [bench._line(gen, "done") for gen in gens]
        meter.settle()
        used = cpu.read()
        after = meter.read()
    finally:
        close_generators(gens)
        if server is not None:
            server.stop()
        redis.stop()
    delivered = sum(d["delivered"] for d in done)
    wall = used["wall_s"]
    for i, w in enumerate(per_worker):
        w["cpu_s"] = used["cpu_s"][f"worker{i}"]
        w["cpu_pct"] = 100 * w["cpu_s"] / wall
        w["cpu_us_per_delivery"] = (w["cpu_s"] * 1e6 / (w["connections"] * events)
                                    if w["connections"] > 0 else None)
    redis_used = RedisMeter.delta(before, after)
    components = {f"worker {i} (pid {w['pid']})": w["cpu_pct"] for i, w in enumerate(per_worker)}
    components["redis-server"] = 100 * used["cpu_s"]["redis"] / wall
    components |= {f"generator {i}": 100 * used["cpu_s"][f"gen{i}"] / wall for i in range(len(gens))}
    held_total = sum(w["connections"] for w in per_worker)
    cores = os.cpu_count() or 1
    saturated = saturation(components, used["machine_busy_cores"] or 0.0, cores, used["cpu_s"]["bench"] / wall)
    lasts = [t for d in done for t in d["last_ms"] if t is not None]
    span_s = (max(lasts) - first) / 1000 if lasts else None
    if span_s and posted_s >= 0.9 * span_s:
        # The last post was acknowledged only near the end: deliveries waited for publishes, not for CPU.
        saturated += f"; the publish path too (the room took its {events} posts in {posted_s:.1f} of {span_s:.1f} s)"
    machine_pct = used["machine_busy_pct"] or 0.0
    return {
        "workers": workers, "connections": conns, "events": events,
        "failed": sum(d["failed"] for d in done), "errors": [e for d in done for e in d["errors"]][:5],
        "held": sum(d["held"] for d in done), "held_by_workers": held_total,
        "connect_s": connect_s, "connects_per_s": conns / connect_s,
        "rss_per_conn_kib": (sum(w["rss_mib"] - base[w["pid"]][0] for w in per_worker) * 1024 / held_total
                             if held_total > 0 else None),
        "per_worker": per_worker,
        "delivered": delivered, "missing": sum(d["missing"] for d in done),
        "duplicates": sum(d["duplicates"] for d in done),
        "posted_s": posted_s, "span_s": span_s,
        "deliveries_per_s": delivered / span_s if span_s else None,
        "deliveries_per_s_per_worker": delivered / span_s / workers if span_s else None,
        "server_cpu_us_per_delivery": sum(w["cpu_s"] for w in per_worker) * 1e6 / delivered if delivered else None,
        "redis_ops_per_s_idle": idle["commands"] / idle_s,
        "redis_ops_per_s": redis_used["commands"] / wall,
        "redis_commands_per_event": redis_used["commands"] / events,
        "redis_by_command_per_event": {n: c / events for n, c in redis_used["by_command"].items()},
        "redis_cpu_pct": components["redis-server"],
        "redis_cpu_us_per_event": redis_used["cpu_s"] * 1e6 / events,
        "loadgen_cpu_pct": [100 * used["cpu_s"][f"gen{i}"] / wall for i in range(len(gens))],
        "loadgen_cpu_us_per_delivery": (sum(used["cpu_s"][f"gen{i}"] for i in range(len(gens))) * 1e6
                                        / delivered if delivered else None),
        "bench_cpu_pct": 100 * used["cpu_s"]["bench"] / wall,
        "machine_busy_pct": machine_pct, "cores": cores, "window_s": wall,
        "other_jobs_cores": max(0.0, (used["machine_busy_cores"] or 0.0) - sum(components.values()) / 100
                                - used["cpu_s"]["bench"] / wall),
        "components_cpu_pct": components, "saturates_first": saturated,
        "connect_loadgen_cpu_pct": max(r["loadgen_cpu_pct"] for r in ready),
    }


def saturation(components: dict[str, float], busy_cores: float, cores: int, bench_cores: float) -> str:
    """Which component saturates first: one at a full core, else the machine's cores when they are all busy.

    ``components`` are CPU % of one core each (a worker, redis-server and a
    generator each run on one core at most); the machine's busy cores include
    other jobs, reported apart from ours.
    """
    busiest = max(components, key=lambda k: components[k])
    ours = sum(components.values()) / 100 + bench_cores
    if components[busiest] >= 90:
        return f"{busiest} ({components[busiest]:.0f}% of a core)"
    if busy_cores >= 0.9 * cores:
        return (f"the machine's {cores} cores ({busy_cores:.1f} busy: {ours:.1f} ours, "
                f"{max(0.0, busy_cores - ours):.1f} other jobs; largest share: {busiest}, "
                f"{components[busiest]:.0f}% of a core)")
    return f"none ({busy_cores:.1f} of {cores} cores busy; largest share: {busiest}, {components[busiest]:.0f}%)"


def predict(runs: list[dict[str, Any]], backplane: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The capacity model's deliveries/s for each worker count, from the 1-worker run's unit costs.

    A broadcast to a room of N members spread over W workers costs the servers
    N x c_d (per delivery, measured with 1 worker) plus (W - 1) x c_e (every
    further worker reads the event from the stream: the backplane part's server
    CPU per event and process); everything shares the machine's cores with the
    generators (g per delivery) and Redis (r per event). Predicted deliveries/s:
    min(W / (c_d + (W-1) c_e / N), cores / (c_d + g + (r + (W-1) c_e) / N)), and
    the same with the cores other jobs left during that run (a shared machine).
    """
    one = next((r for r in runs if r["workers"] == 1 and r.get("server_cpu_us_per_delivery")), None)
    if one is None:
        return []
    c_d = one["server_cpu_us_per_delivery"] / 1e6
    g = (one["loadgen_cpu_us_per_delivery"] or 0) / 1e6
    r = one["redis_cpu_us_per_event"] / 1e6
    c_e = per_process_event_cost(backplane, c_d * 1e6) / 1e6
    out = []
    for run in runs:
        w, n = run["workers"], run["held_by_workers"] or run["connections"]
        cores = run["cores"]
        workers_bound = w / (c_d + (w - 1) * c_e / n)
        per_delivery = c_d + g + (r + (w - 1) * c_e) / n
        machine_bound = cores / per_delivery
        predicted = min(workers_bound, machine_bound)
        # On a shared machine: the cores the other jobs left us during this very run.
        left = max(0.05, cores - run["other_jobs_cores"])
        predicted_left = min(workers_bound, left / per_delivery)
        out.append({"workers": w, "predicted_deliveries_per_s": predicted, "c_d_us": c_d * 1e6,
                    "c_e_us": c_e * 1e6, "g_us": g * 1e6, "r_us": r * 1e6,
                    "bound": "workers" if workers_bound < machine_bound else "machine cores",
                    "measured_deliveries_per_s": run["deliveries_per_s"],
                    "measured_over_predicted": (run["deliveries_per_s"] / predicted
                                                if run["deliveries_per_s"] else None),
                    "cores_left": left, "predicted_with_cores_left": predicted_left,
                    "measured_over_predicted_left": (run["deliveries_per_s"] / predicted_left
                                                     if run["deliveries_per_s"] else None)})
    return out


def per_process_event_cost(backplane: list[dict[str, Any]], c_delivery_us: float) -> float:
    """Server CPU µs one more process spends per event it reads from the stream (stream mode).

    From the backplane part, fewest vs most processes: the growth of the
    servers' CPU per event, less what the extra deliveries per event cost
    (``c_delivery_us`` each), per extra process.
    """
    runs = sorted((r for r in backplane if r["available"] and r["mode"] == "stream"), key=lambda r: r["procs"])
    if len(runs) < 2:
        return 0.0
    low, high = runs[0], runs[-1]
    extra_deliveries = high["delivered"] / high["published"] - low["delivered"] / low["published"]  # 0 by design
    grown = high["server_cpu_us_per_event"] - low["server_cpu_us_per_event"] - extra_deliveries * c_delivery_us
    return max(0.0, grown / (high["procs"] - low["procs"]))


# -- tables ----------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def backplane_table(results: list[dict[str, Any]]) -> str:
    procs = sorted({r["procs"] for r in results})
    modes = list(dict.fromkeys(r["mode"] for r in results))
    cell = {(r["mode"], r["procs"]): r for r in results}
    head = "| mode | figure | " + " | ".join(f"{p} proc." for p in procs) + " | " + " | ".join(
        f"{p} ÷ {procs[0]}" for p in procs[1:]) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(procs) - 1)]
    figures = [("events/s end to end", "events_per_s", 0), ("deliveries/s", "deliveries_per_s", 0),
               ("events/s published", "published_per_s", 0),
               ("Redis commands / event", "redis_commands_per_event", 2),
               ("Redis CPU µs / event", "redis_cpu_us_per_event", 1),
               ("server CPU µs / event (all processes)", "server_cpu_us_per_event", 1),
               ("missing / duplicates", None, 0)]
    for mode in modes:
        for label, key, digits in figures:
            row = []
            for p in procs:
                r = cell.get((mode, p))
                if r is None or not r["available"]:
                    row.append("not available")
                elif key is None:
                    row.append(f"{r['missing']} / {r['duplicates']}")
                else:
                    row.append(_f(r[key], digits))
            ratios = []
            for p in procs[1:]:
                a, b = cell.get((mode, p)), cell.get((mode, procs[0]))
                ok = key and a and b and a["available"] and b["available"] and a[key] and b[key]
                ratios.append(f"{a[key] / b[key]:.2f}×" if ok else "")  # type: ignore[index]
            lines.append(f"| {mode} | {label} | " + " | ".join(row) + " | " + " | ".join(ratios) + " |")
    if {"stream", "interest"} <= set(modes):
        for p in procs:
            s, i = cell.get(("stream", p)), cell.get(("interest", p))
            if s and i and s["available"] and i["available"]:
                lines.append(f"| interest ÷ stream | Redis commands / event, {p} proc. | "
                             f"{i['redis_commands_per_event'] / s['redis_commands_per_event']:.2f}× | "
                             + " | ".join("" for _ in range(2 * len(procs) - 2)) + " |")
    return "\n".join(lines)


def workers_table(runs: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> str:
    ws = [r["workers"] for r in runs]
    pred = {p["workers"]: p for p in predictions}

    def row(label: str, values: list[str]) -> str:
        return f"| {label} | " + " | ".join(values) + " |"

    lines = ["| figure | " + " | ".join(f"{w} worker{'s' if w > 1 else ''}" for w in ws) + " |",
             "|---|" + "---|" * len(ws)]
    lines += [
        row("connections held (of)", [f"{r['held']:,} ({r['connections']:,})" for r in runs]),
        row("sockets per worker", [", ".join(f"{w['connections']:,}" for w in r["per_worker"]) for r in runs]),
        row("RSS per connection, KiB", [_f(r["rss_per_conn_kib"], 1) for r in runs]),
        row("RSS per connection per worker, KiB", [", ".join(_f(w["rss_per_conn_kib"], 1) for w in r["per_worker"])
                                                   for r in runs]),
        row("connected per second", [_f(r["connects_per_s"]) for r in runs]),
        row("deliveries/s (broadcast burst)", [_f(r["deliveries_per_s"]) for r in runs]),
        row("posts acknowledged / last delivery, s", [f"{r['posted_s']:.1f} / {_f(r['span_s'], 1)}" for r in runs]),
        row("deliveries/s per worker", [_f(r["deliveries_per_s_per_worker"]) for r in runs]),
        row("predicted deliveries/s (model, from 1 worker)",
            [_f(pred[w]["predicted_deliveries_per_s"]) if w in pred else "n/a" for w in ws]),
        row("measured ÷ predicted", [_f(pred[w]["measured_over_predicted"], 2) + "×"
                                     if w in pred and pred[w]["measured_over_predicted"] else "n/a" for w in ws]),
        row("predicted with the cores other jobs left (cores)",
            [f"{_f(pred[w]['predicted_with_cores_left'])} ({pred[w]['cores_left']:.1f})" if w in pred else "n/a"
             for w in ws]),
        row("measured ÷ predicted with the cores left",
            [_f(pred[w]["measured_over_predicted_left"], 2) + "×"
             if w in pred and pred[w]["measured_over_predicted_left"] else "n/a" for w in ws]),
        row("server CPU µs per delivery", [_f(r["server_cpu_us_per_delivery"], 1) for r in runs]),
        row("generator CPU µs per delivery", [_f(r["loadgen_cpu_us_per_delivery"], 1) for r in runs]),
        row("worker CPU % during the burst", [", ".join(f"{w['cpu_pct']:.0f}" for w in r["per_worker"]) for r in runs]),
        row("Redis commands/s idle / burst", [f"{_f(r['redis_ops_per_s_idle'])} / {_f(r['redis_ops_per_s'])}"
                                              for r in runs]),
        row("Redis commands per broadcast", [_f(r["redis_commands_per_event"], 1) for r in runs]),
        row("Redis CPU % (µs per broadcast)", [f"{r['redis_cpu_pct']:.0f} ({r['redis_cpu_us_per_event']:.0f})"
                                               for r in runs]),
        row("generator CPU % (each)", [", ".join(f"{c:.0f}" for c in r["loadgen_cpu_pct"]) for r in runs]),
        row("machine busy % (all jobs)", [_f(r["machine_busy_pct"]) for r in runs]),
        row("missing / duplicates", [f"{r['missing']} / {r['duplicates']}" for r in runs]),
        row("saturates first", [r["saturates_first"] for r in runs]),
    ]
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of about a minute")
    parser.add_argument("--parts", default="backplane,workers", help="backplane, workers or both")
    parser.add_argument("--modes", default="stream,interest", help="backplane modes (FLAMIGO_REDIS_BACKPLANE)")
    parser.add_argument("--procs", default="1,2,4", help="server processes of the backplane part")
    parser.add_argument("--members", type=int, help="subscribers per room (backplane part): room 'all' has them "
                        "spread over the processes, each room 'p<i>' all on process i")
    parser.add_argument("--bp-events", type=int, help="events published per backplane run")
    parser.add_argument("--bp-pace", type=float, default=0.0,
                        help="seconds each publisher waits after each event (backplane part; 0: bursts, "
                             "written in batches; 0.002: a trickle, about one event per write)")
    parser.add_argument("--worker-counts", default="1,2,4", help="--workers of the workers part")
    parser.add_argument("--conns", type=int, help="connections in the room (workers part)")
    parser.add_argument("--generators", type=int, help="generator processes, one source address each")
    parser.add_argument("--events", type=int, help="broadcasts posted at once (workers part)")
    parser.add_argument("--hold", type=float, help="seconds the connections are held before the burst")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a generator waits for deliveries")
    parser.add_argument("--out", type=Path, default=bench.RESULTS, help="where the JSON and Markdown go")
    args = parser.parse_args(argv)
    q = args.quick
    args.parts = [p for p in args.parts.split(",") if p]
    unknown = set(args.parts) - {"backplane", "workers"}
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}: use backplane, workers")
    args.modes = [m for m in args.modes.split(",") if m]
    args.procs = [int(p) for p in args.procs.split(",")]
    args.worker_counts = [int(w) for w in args.worker_counts.split(",")]
    args.members = args.members or (4 if q else 20)
    args.bp_events = args.bp_events or (400 if q else 4000)
    args.generators = args.generators or (2 if q else 4)
    args.conns = args.conns or (300 if q else 16000)
    args.events = args.events or (5 if q else 20)
    args.hold = args.hold if args.hold is not None else (1.0 if q else 5.0)
    if args.bp_pace < 0:
        parser.error("--bp-pace must be at least 0")
    if min(args.procs + args.worker_counts) < 1 or args.members < 1 or args.bp_events < 2 * max(args.procs):
        parser.error("--procs and --worker-counts must be at least 1, --members at least 1, "
                     "--bp-events at least twice the largest --procs")
    if any(args.members % p for p in args.procs):
        parser.error(f"--members ({args.members}) must be a multiple of every --procs count (spread evenly)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    node = bench.ensure_loadgen()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = args.out / f"capacity-{stamp}-logs"
    report: dict[str, Any] = {"machine": bench.machine(), "load_before": bench.uptime(), "quick": args.quick,
                              "backplane": [], "workers": [], "predictions": []}
    print(f"machine: {report['machine']['cores']} cores; load before {report['load_before']}", flush=True)
    if "backplane" in args.parts:
        report["backplane"] = run_backplane(node, args, log_dir)
    if "workers" in args.parts:
        for n, workers in enumerate(args.worker_counts):
            # Each run from fresh source addresses: the last run's client ports wait in TIME_WAIT.
            sources = [f"127.0.0.{2 + (n * args.generators + i) % 250}" for i in range(args.generators)]
            run = workers_run(node, workers, args.conns, sources, args.events, args.hold, args.timeout,
                              log_dir / f"workers-{workers}")
            report["workers"].append(run)
            print(f"  {workers} worker(s): {run['held_by_workers']:,} held, "
                  f"{_f(run['deliveries_per_s'])} deliveries/s, missing {run['missing']}; "
                  f"saturates first: {run['saturates_first']}", flush=True)
        report["predictions"] = predict(report["workers"], report["backplane"])
    report["load_after"] = bench.uptime()
    md = [f"Machine: {report['machine']['cores']} cores ({report['machine']['cpu']}); load "
          f"{report['load_before']} before, {report['load_after']} after"]
    if report["backplane"]:
        paced = f", each publisher pausing {args.bp_pace * 1000:g} ms after each event" if args.bp_pace else ""
        md += ["", f"Backplane throughput (events/s, Redis cost per event{paced}):", "",
               backplane_table(report["backplane"])]
    if report["workers"]:
        md += ["", f"{args.conns:,} connections in one room, {args.events} broadcasts posted at once:", "",
               workers_table(report["workers"], report["predictions"])]
    text = "\n".join(md)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"capacity-{stamp}{'-quick' if args.quick else ''}"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{name}.md").write_text(text + "\n")
    print(f"written: {args.out / name}.json, .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

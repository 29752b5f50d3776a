"""Test helpers: free ports, system binaries, a live server in this process, a small WebSocket client.

Fixtures live in conftest.py; everything a test imports lives here.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
import requests
import websocket
from flask import Flask

from flamigo_actors import Flamigo
from flamigo_actors.serving.server import make_server

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    # Root in a container, no GPU, a closed network: what headless Chromium needs here.
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]


# -- markers -----------------------------------------------------------------------
# conftest.py marks tests with these tables (module -> test names, or "*" for all);
# `browser` and `redis` follow from the fixtures a test uses.

# The cluster tests that start servers and a 3-master cluster: slow, and in subprocesses.
CLUSTER_SERVER_TESTS = {
    "test_two_demo_servers_on_a_cluster_share_events_presence_and_rooms",
    "test_presence_on_a_cluster_a_killed_server_s_members_leave_once_each",
    "test_domain_actors_on_a_cluster_one_activation_per_key_spread_over_the_masters",
    "test_the_backplane_stream_s_master_killed_delivery_resumes_and_the_gap_is_counted",
    "test_recovery_on_the_whole_stream_backplane_refuses_to_start_on_a_cluster_naming_the_fix",
    "test_an_actor_s_lease_master_killed_calls_fail_then_work_with_one_activation",
    "test_recovery_on_a_cluster_with_the_interest_backplane_a_resume_replays_what_was_missed",
}

SUBPROCESS: dict[str, str | set[str]] = {
    "test_actor_redis": {
        "test_two_processes_racing_a_thousand_first_calls_grant_one_lease_in_total",
        "test_the_owner_killed_the_actor_is_placed_on_a_survivor_within_the_lease_with_its_snapshot",
    },
    "test_actors_across_processes": "*",
    "test_all_cores": "*",
    "test_backplane": {"test_a_missing_redis_server_fails_under_ci"},
    "test_bench_smoke": "*",
    "test_browser_chat": {
        "test_pages_reconnect_reauthenticate_and_rejoin_after_a_server_restart",
        "test_a_page_whose_server_is_killed_resumes_and_shows_each_message_once_in_order",
        "test_the_heartbeat_finds_a_frozen_server_dead_in_a_real_browser",
        "test_a_page_back_from_the_background_checks_its_connection_at_once",
    },
    "test_cli": "*",
    "test_contract_tools": "*",
    "test_dashboard": {"test_dashboard_shows_connections_and_mailbox_depth_in_chromium"},
    "test_flamigo_js": "*",
    "test_metrics": {"test_two_workers_report_the_sum_of_their_connections_in_one_scrape"},
    "test_readiness": {"test_sigterm_single_process", "test_sigterm_workers"},
    "test_presence": {"test_flamigo_js_presence_map_against_a_real_server"},
    "test_presence_redis": "*",
    "test_open_files": "*",
    "test_recovery_redis": "*",
    "test_cluster": CLUSTER_SERVER_TESTS,
    "test_scale_out": "*",
    "test_server": "*",
    "test_shell": "*",
    "test_shutdown": {"test_a_signal_drains_within_the_drain_timeout"},
    "test_soak": "*",
    "test_tooling": {"test_a_flamigo_variable_in_the_shell_does_not_reach_the_tests"},
}
"""Tests that start a child process."""

SLOW: dict[str, str | set[str]] = {
    "test_actor_redis": {
        "test_two_processes_racing_a_thousand_first_calls_grant_one_lease_in_total",
        "test_the_owner_killed_the_actor_is_placed_on_a_survivor_within_the_lease_with_its_snapshot",
        "test_redis_stopped_and_restarted_remote_calls_fail_fast_then_work_again",
        "test_a_call_without_a_reply_in_time_fails_once_and_is_not_run_late",
        "test_a_soak_of_ten_thousand_activate_passivate_cycles_leaves_no_lease_behind",
    },
    "test_actors_across_processes": {
        "test_two_processes_racing_a_thousand_first_calls_activate_one_actor_in_total",
        "test_the_owner_killed_the_actor_comes_back_on_the_survivor_within_the_lease_from_its_snapshot",
    },
    "test_all_cores": "*",
    "test_backplane": {"test_a_missing_redis_server_fails_under_ci"},
    "test_bench_smoke": "*",
    "test_browser_chat": "*",
    "test_cli": {"test_run_with_workers_finds_the_module_in_the_current_directory"},
    "test_contract_tools": "*",
    "test_dashboard": {"test_dashboard_shows_connections_and_mailbox_depth_in_chromium"},
    "test_demo_app": {"test_expired_token_is_refused"},
    "test_domain_actors_app": {"test_ten_thousand_activate_passivate_cycles_leave_nothing_behind"},
    "test_flamigo_js": "*",
    "test_head_of_line": {
        "test_a_client_leaving_with_deferred_work_leaves_nothing_behind",
        "test_a_time_limit_answers_504_and_the_connection_carries_on",
    },
    "test_hostile_input": {
        "test_any_frame_sequence_gets_the_documented_answer",
        "test_hostile_connections_leave_nothing_behind",
        "test_wrong_types_in_every_envelope_field",
        "test_a_client_that_never_finishes_its_handshake_is_dropped",
    },
    "test_metrics": {
        "test_new_topics_and_users_add_no_series",
        "test_two_workers_report_the_sum_of_their_connections_in_one_scrape",
    },
    "test_readiness": {"test_sigterm_single_process", "test_sigterm_workers"},
    "test_presence": {"test_a_thousand_clients_joining_one_room_cost_linear_pushes"},
    "test_presence_redis": {
        "test_a_killed_server_s_members_leave_once_each_and_never_come_back",
        "test_random_joins_leaves_and_disconnects_on_two_servers_converge",
    },
    "test_open_files": {
        "test_each_worker_raises_its_own_soft_limit",
        "test_workers_at_their_ceiling_leave_new_connections_to_the_others",
    },
    "test_recovery_redis": "*",
    "test_cluster": CLUSTER_SERVER_TESTS,
    "test_scale_out": "*",
    "test_server": {"test_python_m_app_serves_healthz_and_drains_on_sigterm"},
    "test_shell": {
        "test_mailbox_blocked_by_a_slow_strategy_shows_its_depth",
        "test_scripted_shell_reports_connections_users_and_subscriptions",
    },
    "test_shutdown": {"test_a_signal_drains_within_the_drain_timeout"},
    "test_soak": "*",
    "test_tooling": {"test_a_flamigo_variable_in_the_shell_does_not_reach_the_tests"},
}
"""Tests that take 1.5 s or more on a 2-core machine (measured with --durations=0)."""


@contextlib.contextmanager
def clean_flamigo_environment() -> Iterator[None]:
    """Remove every ``FLAMIGO_*`` environment variable for the duration, then restore them.

    Variables set inside (a test, ``flamigo-actors run --redis``) are removed on exit.
    """
    saved = {k: v for k, v in os.environ.items() if k.startswith("FLAMIGO_")}
    for key in saved:
        del os.environ[key]
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("FLAMIGO_")]:
            del os.environ[key]
        os.environ.update(saved)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def need_binary(name: str) -> str:
    """The path of a system binary a test needs (redis-server, chromium).

    Missing: under ``CI=true`` the test fails (CI installs them: a missing one
    is a broken run, not a reason to skip); elsewhere it is skipped.
    """
    path = name if os.path.isabs(name) and os.access(name, os.X_OK) else shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (apt-get install -y {os.path.basename(name)})"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class LiveServer:
    """A running server: its URL, app, extension and the gevent server object."""

    def __init__(self, app: Flask, server: Any) -> None:
        self.app = app
        self.server = server
        self.flamigo: Flamigo = app.extensions["flamigo"]
        self.port = server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}{self.flamigo.settings.ws_path}"

    def login(self, username: str) -> str:
        response = requests.post(f"{self.url}/api/login", json={"username": username}, timeout=5)
        response.raise_for_status()
        return str(response.json()["token"])

    def client(self, username: str | None = None, **options: Any) -> WsClient:
        """A connected client; authenticated as ``username`` when given."""
        client = WsClient(self.ws_url, **options)
        if username is not None:
            client.request("app::websocket:auth", {"token": self.login(username)})
        return client

    def disconnections(self) -> list[Any]:
        """Every Disconnected event this server publishes from now on, recorded by a listener."""
        from flamigo_actors import Disconnected

        seen: list[Any] = []
        self.flamigo.bus.subscribe(
            lambda ctx, event: seen.append(event),
            "connection/disconnected/*",
            event_type=Disconnected,
            name="test.disconnections",
        )
        return seen

    def stop(self) -> None:
        try:
            self.flamigo.shutdown(timeout=2)
        finally:
            self.server.stop(timeout=1)


def start_live_server(app: Flask) -> LiveServer:
    server = make_server(app, "127.0.0.1", 0)
    server.start()
    app.extensions["flamigo"].start()
    return LiveServer(app, server)


class ErrorReply(Exception):
    """An ``error`` message received in answer to a request."""

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(f"{payload.get('status')} {payload.get('message')}")
        self.payload = payload
        self.status = payload.get("status")


class WsClient:
    """A blocking WebSocket client (websocket-client; cooperative under gevent)."""

    def __init__(self, url: str, *, timeout: float = 10.0, **options: Any) -> None:
        self.ws = websocket.create_connection(url, timeout=timeout, **options)
        self.timeout = timeout
        self._acks = itertools.count(1)
        self.backlog: list[dict[str, Any]] = []

    def send_json(self, message: Any) -> None:
        self.ws.send(json.dumps(message))

    def send_raw(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            self.ws.send_binary(data)
        else:
            self.ws.send(data)

    def recv_json(self, timeout: float | None = None) -> dict[str, Any]:
        if self.backlog:
            return self.backlog.pop(0)
        return self._recv(timeout)

    def _recv(self, timeout: float | None = None) -> dict[str, Any]:
        self.ws.settimeout(self.timeout if timeout is None else timeout)
        data = self.ws.recv()
        if not data:
            raise ConnectionError("connection closed")
        return json.loads(data)  # type: ignore[no-any-return]

    def request(self, topic: str, payload: Any = None, *, timeout: float | None = None) -> Any:
        """Send with a fresh ackId and return the matching reply's payload (pushes are kept)."""
        ack = next(self._acks)
        self.send_json({"topic": topic, "payload": payload, "ackId": ack})
        while True:
            message = self._recv(timeout)
            if message.get("ackId") == ack:
                if message["topic"] == "error":
                    raise ErrorReply(message["payload"])
                return message["payload"]
            self.backlog.append(message)

    def pushes(self, topic: str | None = None, *, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait for ``count`` pushes (of ``topic`` if given) and return them."""
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        for message in list(self.backlog):
            if "ackId" not in message and (topic is None or message["topic"] == topic):
                found.append(message)
                self.backlog.remove(message)
        while len(found) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                message = self._recv(remaining)
            except websocket.WebSocketTimeoutException:
                break
            if "ackId" not in message and (topic is None or message["topic"] == topic):
                found.append(message)
            else:
                self.backlog.append(message)
        return found

    def wait_closed(self, timeout: float = 5.0) -> tuple[int | None, str]:
        """Read until the server closes; return (close code, reason)."""
        self.ws.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                opcode, data = self.ws.recv_data(control_frame=True)
            except websocket.WebSocketConnectionClosedException:
                return None, ""
            except (ConnectionError, OSError):
                return None, ""
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                return code, data[2:].decode("utf-8", "replace")
        raise TimeoutError("server did not close the connection")

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001 - already gone
            pass


def nothing_arrives(client: Any, within: float = 0.3) -> bool:
    """True when no message reaches ``client`` within ``within`` seconds.

    The one "nothing arrives" check of the suite, for a :class:`WsClient` or a
    :class:`tests.rawws.RawWs`. A slow machine only makes it truer: a test that
    needs something *not* to happen asserts this, never a timing. A message
    that does arrive is kept (``WsClient.backlog``) for the assertions that follow.
    Messages a ``WsClient`` already set aside while waiting for replies do not count.
    """
    try:
        if isinstance(client, WsClient):
            client.backlog.append(client._recv(within))
        else:
            client.recv_json(timeout=within)
    except (TimeoutError, websocket.WebSocketTimeoutException):
        return True
    return False


def eventually(check: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll ``check`` until it returns a truthy value; raise AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {check}")
        gevent.sleep(interval)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ServerProcess:
    """A server in a child process (``python -m app`` by default), on a free port.

    Its stderr is collected in ``log`` (read it after :meth:`stop`).
    """

    def __init__(
        self, args: list[str], port: int, env: dict[str, str] | None = None, *,
        program: str = sys.executable, cwd: str = REPO,
    ) -> None:
        """Run ``program args`` (the test's Python by default) in ``cwd`` (the repository by default)."""
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/ws"
        self._log_file = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [program, *args], cwd=cwd, env=full_env,
            stdout=self._log_file, stderr=subprocess.STDOUT,
        )

    @classmethod
    def demo(cls, port: int, *extra: str, env: dict[str, str] | None = None) -> ServerProcess:
        return cls(["-m", "app", "--port", str(port), *extra], port, env)

    def wait_ready(self, timeout: float = 20.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            gevent.sleep(0.1)
        raise TimeoutError(f"server not ready in {timeout}s:\n{self.log}")

    @property
    def log(self) -> str:
        with open(self._log_file.name, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def login(self, username: str) -> str:
        response = requests.post(f"{self.url}/api/login", json={"username": username}, timeout=5)
        response.raise_for_status()
        return str(response.json()["token"])

    def client(self, username: str | None = None) -> WsClient:
        client = WsClient(self.ws_url)
        if username is not None:
            client.request("app::websocket:auth", {"token": self.login(username)})
        return client

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.process.args, timeout)
            gevent.sleep(0.05)
        return int(self.process.returncode)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.wait(15)
            except Exception:  # noqa: BLE001 - last resort
                self.process.kill()
                self.process.wait()


def worker_holding(workers: list[Any], sock: socket.socket) -> int:
    """The pid of the worker process (a ``psutil.Process``) holding the server end of ``sock``.

    Matched on the client's (address, port): a port number alone may also be another
    connection's remote port (Redis's, say).
    """
    end = sock.getsockname()[:2]
    for worker in workers:
        if any(c.raddr and (c.raddr.ip, c.raddr.port) == end for c in worker.net_connections("tcp")):
            return int(worker.pid)
    raise AssertionError(f"no worker holds the connection from {end[0]}:{end[1]}")


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGKILL when the test process dies (a killed or
    timed-out pytest would otherwise leave its redis-servers running for good)."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class RedisServer:
    """A real redis-server child process on 127.0.0.1 (no persistence), for backplane tests.

    :meth:`kill` and :meth:`start` again (same port) simulate Redis going away
    and coming back.
    """

    def __init__(self, binary: str, port: int, password: str | None = None) -> None:
        """With ``password``, Redis requires it (``--requirepass``) and :attr:`url` carries it."""
        self.binary = binary
        self.port = port
        self.password = password
        self.url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{port}/0"
        self.dir = tempfile.mkdtemp(prefix="flamigo-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--loglevel", "warning",
             *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                if self.client().ping():
                    return self
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline:
                    raise
            gevent.sleep(0.05)

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=1)

    def kill(self) -> None:
        """SIGKILL: Redis vanishes without a goodbye (and without its data)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def offline_token(app: Flask, username: str) -> str:
    """A demo token for ``username``, from ``POST /api/login`` through Flask's test client."""
    response = app.test_client().post("/api/login", json={"username": username})
    assert response.status_code == 200, response.get_data(as_text=True)
    return str(response.get_json()["token"])


def post_message(server: Any, username: str, room: str, text: str) -> None:
    """Say ``text`` in ``room`` through the demo's HTTP view on ``server`` (a LiveServer or
    ServerProcess) as ``username``: answered 202 once the room stored it."""
    response = requests.post(
        f"{server.url}/api/rooms/{room}/messages",
        json={"text": text},
        headers={"Authorization": f"Bearer {server.login(username)}"},
        timeout=5,
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"room": room, "accepted": True}


def join_room(client: WsClient, room: str, username: str, timeout: float = 10.0) -> dict[str, Any]:
    """Join a demo room and wait for the ``presence:diff`` announcing this connection's own entry.

    The demo's rooms track presence, so a member receives the diff of its own join
    shortly after the join reply; a test that later asserts that nothing arrives
    takes it first. Returns the join reply.
    """
    reply = client.request("app::rooms:join", {"room": room})
    own = {meta["ref"] for meta in reply["members"][username]}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for push in client.pushes("presence:diff", timeout=deadline - time.monotonic()):
            if own & {meta["ref"] for meta in push["payload"]["joins"].get(username, [])}:
                return reply  # type: ignore[no-any-return]
    raise AssertionError(f"no presence:diff announced {username}'s join of {room}")


def free_cluster_port() -> int:
    """A free port whose cluster-bus port (+10000) is free too (a Redis Cluster node needs both)."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair (port, port + 10000) for a Redis Cluster node")


class RedisClusterServers:
    """A real Redis Cluster on 127.0.0.1: ``masters`` masters with ``replicas`` replicas each.

    Every node is a redis-server child process (``--cluster-enabled yes``, no
    persistence, a short ``--cluster-node-timeout`` so a killed master's replica is
    promoted within seconds), joined by ``redis-cli --cluster create``. The
    processes die with the test process (``PR_SET_PDEATHSIG``). :attr:`url` names
    the first node (any one will do for a cluster client).
    """

    def __init__(self, server: str, cli: str, *, masters: int = 3, replicas: int = 1,
                 node_timeout_ms: int = 1000) -> None:
        self.server, self.cli = server, cli
        self.ports = [free_cluster_port() for _ in range(masters * (1 + replicas))]
        self.masters, self.replicas, self.node_timeout_ms = masters, replicas, node_timeout_ms
        self.dir = tempfile.mkdtemp(prefix="flamigo-redis-cluster-")
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.url = f"redis://127.0.0.1:{self.ports[0]}"

    def start(self, timeout: float = 30.0) -> RedisClusterServers:
        for port in self.ports:
            node_dir = os.path.join(self.dir, str(port))
            os.makedirs(node_dir)
            self.processes[port] = subprocess.Popen(
                [self.server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", node_dir, "--loglevel", "warning",
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", str(self.node_timeout_ms)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + timeout
        for port in self.ports:
            while True:
                try:
                    if self.node(port).ping():
                        break
                except Exception:  # noqa: BLE001 - not listening yet
                    if time.monotonic() > deadline or self.processes[port].poll() is not None:
                        raise RuntimeError(f"redis-server (cluster node {port}) did not start") from None
                gevent.sleep(0.05)
        created = subprocess.run(
            [self.cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout.decode()[-2000:]}")
        self.wait_until(lambda: all(self.state_ok(p) for p in self.alive_ports()), timeout,
                        "cluster_state:ok on every node")
        self.wait_until(lambda: len(self.master_ports()) == self.masters, timeout, "every master known")
        # A replica that has not synced with its master yet cannot take over from it.
        self.wait_until(lambda: all(self.replica_synced(p) for p in self.ports if p not in self.master_ports()),
                        timeout, "replica in sync with its master")
        return self

    def replica_synced(self, port: int) -> bool:
        try:
            info = self.node(port).info("replication")
        except Exception:  # noqa: BLE001 - not answering: not synced
            return False
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    def node(self, port: int) -> Any:
        """A plain (non-cluster) client of one node."""
        import redis

        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=1)

    def alive_ports(self) -> list[int]:
        return [p for p, proc in self.processes.items() if proc.poll() is None]

    def state_ok(self, port: int) -> bool:
        try:
            return b"cluster_state:ok" in self.node(port).execute_command("CLUSTER", "INFO")
        except Exception:  # noqa: BLE001 - not answering: not ok
            return False

    def wait_until(self, check: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"Redis Cluster: no {what} within {timeout:g}s")
            gevent.sleep(0.1)

    def slots(self) -> list[tuple[int, int, int]]:
        """(first slot, last slot, master port) per slot range, as a live node sees them."""
        for port in self.alive_ports():
            try:
                ranges = self.node(port).execute_command("CLUSTER", "SLOTS")
            except Exception:  # noqa: BLE001 - ask another node
                continue
            return [(int(r[0]), int(r[1]), int(r[2][1])) for r in ranges]
        raise RuntimeError("no live Redis Cluster node answers CLUSTER SLOTS")

    def master_ports(self) -> set[int]:
        try:
            return {port for _first, _last, port in self.slots()}
        except Exception:  # noqa: BLE001 - none answers yet
            return set()

    def slot_of(self, key: str) -> int:
        return int(self.node(self.alive_ports()[0]).execute_command("CLUSTER", "KEYSLOT", key))

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot."""
        slot = self.slot_of(key)
        for first, last, port in self.slots():
            if first <= slot <= last:
                return port
        raise RuntimeError(f"no master serves slot {slot} of {key!r}")

    def keys_per_master(self, pattern: str = "*") -> dict[int, int]:
        """Keys matching ``pattern`` held by each master (SCAN on each)."""
        return {port: sum(1 for _ in self.node(port).scan_iter(match=pattern, count=1000))
                for port in sorted(self.master_ports())}

    def migrate_slot_of(self, key: str, to_port: int, *, pause: float = 0.5, timeout: float = 30.0) -> int:
        """Move ``key``'s slot to the master on ``to_port`` while the cluster serves (as
        ``redis-cli --cluster reshard`` does, for this one slot): ``SETSLOT IMPORTING`` /
        ``MIGRATING``, ``MIGRATE`` its keys, ``SETSLOT NODE`` on every master; ``pause`` s
        before the keys move and before the slot is handed over (writers meanwhile get
        ``ASK``). Waits until every live node sees the new owner; returns the old one's port."""
        import time as _time

        slot, source = self.slot_of(key), self.master_of(key)
        src, dst = self.node(source), self.node(to_port)
        src_id, dst_id = (bytes(n.execute_command("CLUSTER", "MYID")).decode() for n in (src, dst))
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        _time.sleep(pause)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
        _time.sleep(pause)
        for port in [to_port, source] + sorted(self.master_ports() - {to_port, source}):
            self.node(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        self.wait_until(lambda: all(self._owner_seen_by(p, slot) == to_port for p in self.alive_ports()),
                        timeout, f"slot {slot} served by {to_port} as every node sees it")
        return source

    def _owner_seen_by(self, port: int, slot: int) -> int | None:
        try:
            ranges = self.node(port).execute_command("CLUSTER", "SLOTS")
        except Exception:  # noqa: BLE001 - not answering yet
            return None
        return next((int(r[2][1]) for r in ranges if int(r[0]) <= slot <= int(r[1])), None)

    def kill_master_of(self, key: str, timeout: float = 30.0) -> int:
        """SIGKILL the master of ``key``'s slot and wait until a replica serves the slot and
        every live node reports ``cluster_state:ok``; the killed port."""
        port = self.master_of(key)
        process = self.processes[port]
        process.kill()
        process.wait()
        self.wait_until(lambda: self.master_of(key) != port, timeout, f"replica of {port} promoted")
        self.wait_until(lambda: all(self.state_ok(p) for p in self.alive_ports()), timeout,
                        "cluster_state:ok after the failover")
        return port

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

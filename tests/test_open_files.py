"""The open-files limit: raised to the hard limit at start, and the connection ceiling logged.

Each server starts under a low soft limit (``ulimit -Sn 1000`` in the shell
that execs it); the test reads the process's limits back from the kernel
(``/proc/<pid>/limits``) and the ceiling from its log.
"""

from __future__ import annotations

import re
import resource
import shlex
import sys

import psutil
import pytest

from tests.rawws import RawWs
from tests.support import RedisServer, ServerProcess, eventually, free_port

LOW = 1000


def soft_limit(pid: int) -> int:
    soft, _hard = psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE)
    return int(soft)


def under_low_limit(port: int, *extra: str) -> ServerProcess:
    """The demo server started by a shell that first lowers the soft open-files limit."""
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "app", "--port", str(port), *extra])
    return ServerProcess(["-c", f"ulimit -Sn {LOW} && exec {command}"], port, program="/bin/sh")


@pytest.fixture
def hard() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= LOW:
        pytest.fail(f"the hard open-files limit ({hard}) must exceed {LOW} for this test")
    return 1_048_576 if hard == resource.RLIM_INFINITY else int(hard)


def ceilings(log: str) -> dict[int, int]:
    """pid -> the connection ceiling each process logged."""
    found = re.findall(
        rf"open files: soft limit raised from {LOW} to (\d+) \(hard limit \w+\): "
        r"pid (\d+) holds at most about (\d+) connections",
        log,
    )
    return {int(pid): int(ceiling) for _limit, pid, ceiling in found}


def test_single_process_raises_its_soft_limit_and_logs_the_ceiling(
    hard: int, processes: list[ServerProcess]
) -> None:
    server = under_low_limit(free_port())
    processes.append(server)
    server.wait_ready()
    assert soft_limit(server.process.pid) == hard
    logged = ceilings(server.log)
    assert list(logged) == [server.process.pid], server.log
    # The limit less the descriptors open at start and the reserve.
    assert hard - 200 < logged[server.process.pid] < hard, server.log


def test_each_worker_raises_its_own_soft_limit(
    hard: int, redis_server: RedisServer, processes: list[ServerProcess]
) -> None:
    server = under_low_limit(free_port(), "--workers", "2", "--redis", redis_server.url)
    processes.append(server)
    server.wait_ready()
    arbiter = psutil.Process(server.process.pid)
    eventually(lambda: len(arbiter.children()) == 2, timeout=20)
    workers = [w.pid for w in arbiter.children()]
    eventually(lambda: set(ceilings(server.log)) == set(workers), timeout=20)
    for pid in workers:
        assert soft_limit(pid) == hard
        assert hard - 200 < ceilings(server.log)[pid] < hard, server.log
    assert soft_limit(arbiter.pid) == LOW  # the arbiter holds no connections


def test_workers_at_their_ceiling_leave_new_connections_to_the_others(
    redis_server: RedisServer, processes: list[ServerProcess]
) -> None:
    """Under a hard limit of 256 open files each worker holds about 150 connections: together all."""
    port = free_port()
    command = " ".join(shlex.quote(a) for a in [
        sys.executable, "-m", "app", "--port", str(port), "--workers", "2", "--redis", redis_server.url])
    server = ServerProcess(["-c", f"ulimit -n 256 && exec {command}"], port, program="/bin/sh")
    processes.append(server)
    server.wait_ready()
    arbiter = psutil.Process(server.process.pid)
    eventually(lambda: len(ceilings_any(server.log)) == 2, timeout=20)
    limit = ceilings_any(server.log)
    wanted = sum(limit.values()) - 20  # room for the logins' HTTP connections
    token = server.login("many")
    clients = []
    try:
        for _ in range(wanted):
            client = RawWs(port, timeout=20)
            clients.append(client)
            assert client.request("app::websocket:auth", {"token": token})["topic"] != "error"
        ends = {c.sock.getsockname()[:2] for c in clients}  # a port number alone may be Redis's
        held = {
            w.pid: sum(1 for c in w.net_connections("tcp") if c.raddr and (c.raddr.ip, c.raddr.port) in ends)
            for w in arbiter.children()
        }
        assert sum(held.values()) == wanted, held
        assert all(held[pid] <= limit[pid] for pid in held), (held, limit)
        assert "Too many open files" not in server.log
    finally:
        for client in clients:
            client.drop()


def ceilings_any(log: str) -> dict[int, int]:
    """pid -> the ceiling each process logged, whatever its limit was."""
    found = re.findall(r"pid (\d+) holds at most about (\d+) connections", log)
    return {int(pid): int(ceiling) for pid, ceiling in found}

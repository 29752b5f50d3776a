"""The debug shell: a server started with --backdoor, the scripted and interactive
`flamigo-actors shell --connect` client (a real subprocess), and `flask shell`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.os
import pytest
import requests

from tests.support import REPO, ServerProcess, WsClient, eventually, free_port, join_room, nothing_arrives

BIN = os.path.dirname(sys.executable)


def shell_command() -> list[str]:
    """The installed ``flamigo-actors`` console script of this environment."""
    path = os.path.join(BIN, "flamigo-actors")
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: install the project with `pip install -e .[test]`")
    return [path, "shell"]


def run_shell(port: int, script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Pipe ``script`` into ``flamigo-actors shell --connect 127.0.0.1:port``."""
    return subprocess.run(
        [*shell_command(), "--connect", f"127.0.0.1:{port}"],
        input=textwrap.dedent(script).lstrip("\n"),
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )


def json_lines(output: str) -> list[Any]:
    """The lines of ``output`` that are JSON documents (what scripts print with json.dumps)."""
    found = []
    for line in output.splitlines():
        line = re.sub(r"^((>>>|\.\.\.) )+", "", line)  # `flask shell` echoes its prompts
        if line.startswith(("[", "{")):
            try:
                found.append(json.loads(line))
            except ValueError:
                pass
    return found


def two_ports() -> tuple[int, int]:
    port = free_port()
    backdoor = free_port()
    while backdoor == port:
        backdoor = free_port()
    return port, backdoor


ROOMS = {"alice": "lobby", "bob": "random", "carol": "dev"}


@pytest.fixture(scope="module")
def backdoor_server() -> Iterator[tuple[ServerProcess, int, dict[str, WsClient]]]:
    """The demo in a child process with --backdoor, and three users each in their own room."""
    port, backdoor = two_ports()
    server = ServerProcess.demo(port, "--backdoor", str(backdoor)).wait_ready()
    clients: dict[str, WsClient] = {}
    try:
        for user, room in ROOMS.items():
            clients[user] = server.client(user)
            join_room(clients[user], room, user)
        yield server, backdoor, clients
    finally:
        for client in clients.values():
            client.close()
        server.stop()


def test_scripted_shell_reports_connections_users_and_subscriptions(backdoor_server: Any) -> None:
    server, backdoor, _ = backdoor_server
    result = run_shell(backdoor, """
        print(len(connections()))
        import json
        keys = ("user", "subscriptions", "state")
        print(json.dumps([{k: c[k] for k in keys} for c in connections()]))
        connections()
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "3"
    (rows,) = json_lines(result.stdout)
    found = {row["user"]["id"]: row for row in rows}
    assert set(found) == set(ROOMS)
    for user, room in ROOMS.items():
        assert found[user]["user"] == {"id": user, "username": user}
        assert found[user]["subscriptions"] == sorted([f"rooms/{room}", f"user/{user}"])
        assert found[user]["state"] == "connected"
    # At the prompt the same helper prints a table: one line per connection.
    table = result.stdout[result.stdout.index("id "):]
    assert "(3 rows)" in table
    for user, room in ROOMS.items():
        assert any(user in line and f"rooms/{room}" in line for line in table.splitlines())
    assert "Traceback" not in result.stdout


def test_call_returns_the_strategy_result(backdoor_server: Any) -> None:
    _, backdoor, _ = backdoor_server
    result = run_shell(backdoor, """
        import json
        print(json.dumps(call("app::echo", {"hello": "shell", "n": [1, 2.5, None]})))
        print(json.dumps(call("app::rooms:list")))
        call("app::no:such-strategy")
        print(json.dumps({"still": "here"}))
        answer = input()
        forty-two
        print(json.dumps({"read": answer}))
        for n in range(2):
            print(json.dumps({"tail": n}))
    """)
    assert result.returncode == 0, result.stderr
    echo, listed, still, read, *tail = json_lines(result.stdout)
    # a script reads like a file: input() takes the next line, a last block needs no blank line
    assert read == {"read": "forty-two"}
    assert tail == [{"tail": 0}, {"tail": 1}]
    assert echo == {"hello": "shell", "n": [1, 2.5, None]}
    assert set(ROOMS.values()) <= set(listed["rooms"])  # the live server's state
    # an error in one statement is printed; the session carries on
    assert "Traceback" in result.stdout and "FlamigoError" in result.stdout
    assert still == {"still": "here"}


def test_publish_pushes_a_client_event_to_a_room(backdoor_server: Any) -> None:
    _, backdoor, clients = backdoor_server
    result = run_shell(backdoor, """
        message = {"room": "random", "user": "ops", "text": "maintenance at noon", "ts": 0}
        publish("chat:message", message, topic="rooms/random")
    """)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout
    (push,) = clients["bob"].pushes("chat:message")
    assert push["payload"]["text"] == "maintenance at noon"
    assert nothing_arrives(clients["alice"]) and nothing_arrives(clients["carol"])


def test_stats_and_actors_from_the_shell(backdoor_server: Any) -> None:
    _, backdoor, clients = backdoor_server
    clients["alice"].request("app::echo", "count me")
    result = run_shell(backdoor, """
        import json
        s = stats()
        print(json.dumps(s))
        print(json.dumps(sorted({a["kind"] for a in actors()})))
        stats()
    """)
    assert result.returncode == 0, result.stderr
    figures, kinds = json_lines(result.stdout)
    assert figures["connections"] == 3 and figures["authenticated"] == 3
    assert figures["messages_in"] >= 7  # 3 auth + 3 joins + 1 echo at least
    assert set(figures["rates_per_second"]) == {
        "messages_in", "messages_out", "events_published", "events_delivered", "events_refused",
    }
    assert {"bus", "connection"} <= set(kinds)
    assert re.search(r"^messages_in +\d+  \d+\.\d/s$", result.stdout, re.M)  # the readable form


def test_the_shell_lists_and_calls_domain_actors(backdoor_server: Any) -> None:
    server, backdoor, _ = backdoor_server
    result = run_shell(backdoor, """
        import json
        from flamigo_actors import DomainActor
        class Tally(DomainActor):
            kind = "shell-tally"
            def on_activate(self, key, state):
                self.n = state or 0
            def add(self, k):
                self.n += k
                return self.n

        ref = actor_space.get(Tally, "t1")
        print(json.dumps([call(ref, "add", 2), call(actor("shell-tally", "t1"), "add", 3)]))
        rows = [a for a in actors() if a["kind"] == "shell-tally"]
        print(json.dumps([{k: a[k] for k in ("key", "mailbox", "restarts", "owner")} for a in rows]))
        print(json.dumps([bool(a["activated_at"] and a["last_message_at"]) for a in rows]))
        actors()
    """)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout, result.stdout
    replies, rows, stamped = json_lines(result.stdout)
    assert replies == [2, 5]
    assert rows == [{"key": "t1", "mailbox": 0, "restarts": 0, "owner": rows[0]["owner"]}]
    assert rows[0]["owner"].endswith(f":{server.process.pid}")
    assert stamped == [True]
    assert "shell-tally" in result.stdout  # the printed table


def test_kick_closes_exactly_that_client_and_fires_disconnected(backdoor_server: Any) -> None:
    server, backdoor, clients = backdoor_server
    dave = server.client("dave")
    dave.request("app::rooms:join", {"room": "lobby"})
    result = run_shell(backdoor, """
        import json, time
        seen = []
        sub = bus.subscribe(lambda ctx, event: seen.append(event), "connection/disconnected/*")
        target = [c["id"] for c in connections() if c["user"] and c["user"]["id"] == "dave"][0]
        kicked = kick(target, "bye from the shell")
        print(json.dumps({"target": target, "kicked": kicked, "unknown": kick("c-none", "x")}))
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
        sub.cancel()
        print(json.dumps([[e.conn_id, e.user_id, e.code, e.reason] for e in seen]))
        print(json.dumps(sorted(c["user"]["id"] for c in connections())))
    """)
    assert result.returncode == 0, result.stderr
    kicked, events, remaining = json_lines(result.stdout)
    target = kicked["target"]
    assert kicked == {"target": target, "kicked": True, "unknown": False}
    assert dave.wait_closed() == (4000, "bye from the shell")
    assert events == [[target, "dave", 4000, "bye from the shell"]]
    assert remaining == sorted(ROOMS)
    for user, client in clients.items():  # everyone else carries on
        assert client.request("app::echo", user) == user
    eventually(lambda: f"disconnected {target} user=dave code=4000 reason=bye from the shell" in server.log)


@pytest.mark.parametrize(
    "ending",
    ["exit()", "quit()", "import sys; sys.exit(3)", "raise SystemExit(1)", "exit('bye')"],
)
def test_exit_in_the_shell_ends_the_session_not_the_server(backdoor_server: Any, ending: str) -> None:
    server, backdoor, clients = backdoor_server
    result = run_shell(backdoor, f"""
        print("before")
        {ending}
        print("after")
    """)
    assert result.returncode == 0, result.stderr
    assert "before" in result.stdout and "after" not in result.stdout
    assert "session ended; the server keeps running" in result.stdout
    assert server.process.poll() is None
    assert requests.get(f"{server.url}/healthz", timeout=5).json()["status"] == "ok"
    assert clients["carol"].request("app::echo", ending) == ending
    again = run_shell(backdoor, "print(len(connections()))\nexit\n")
    assert again.stdout.splitlines()[0] == "3"
    assert "Use exit() or Ctrl-D to end this session (the server keeps running)" in again.stdout


def test_mailbox_blocked_by_a_slow_strategy_shows_its_depth() -> None:
    port, backdoor = two_ports()
    # A short drain: the slow strategy is still running when the test stops the server.
    server = ServerProcess.demo(port, "--backdoor", f"127.0.0.1:{backdoor}", env={"FLAMIGO_DRAIN_TIMEOUT": "1"})
    server.wait_ready()
    try:
        idle = server.client("ivan")
        erin = server.client("erin")
        erin.send_json({"topic": "app::demo:slow", "payload": {"seconds": 20}, "ackId": "slow"})
        for n in range(5):
            erin.send_json({"topic": "app::echo", "payload": n, "ackId": n})
        result = run_shell(backdoor, """
            import json, time
            def erin():
                return [c for c in connections() if c["user"] and c["user"]["id"] == "erin"][0]
            deadline = time.monotonic() + 15
            while erin()["mailbox"] < 5 and time.monotonic() < deadline:
                time.sleep(0.02)
            print(json.dumps({c["user"]["id"]: c["mailbox"] for c in connections()}))
            print(json.dumps(sorted(a["mailbox"] for a in actors() if a["kind"] == "connection")))
            connections()
        """)
        assert result.returncode == 0, result.stderr
        depths, actor_depths = json_lines(result.stdout)
        assert depths == {"erin": 5, "ivan": 0}
        assert actor_depths == [0, 5]
        (row,) = [line for line in result.stdout.splitlines() if " erin " in f" {line} "]
        columns = result.stdout[result.stdout.index("id "):].splitlines()[0].split()
        assert row.split()[columns.index("mailbox")] == "5"
        assert idle.request("app::echo", "not blocked") == "not blocked"  # only erin's mailbox waits
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("entry", "address"),
    [
        (["-m", "app"], "0.0.0.0:{port}"),
        (["-m", "flamigo_actors.serving.cli", "run", "app:create_app"], "[::]:{port}"),
        (["-m", "app"], "example.com:{port}"),
    ],
)
def test_backdoor_refuses_a_non_loopback_bind(entry: list[str], address: str) -> None:
    port, backdoor = two_ports()
    server = ServerProcess([*entry, "--port", str(port), "--backdoor", address.format(port=backdoor)], port)
    try:
        assert server.wait(30) != 0
    finally:
        server.stop()
    host = address.split("]")[0].strip("[") if address.startswith("[") else address.split(":")[0]
    assert f"refusing to open the debug shell on {host}" in server.log
    assert "loopback" in server.log
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/healthz", timeout=2)


def test_serve_refuses_a_non_loopback_backdoor_before_listening(demo_app: Any) -> None:
    from flamigo_actors.serving.server import serve
    from flamigo_actors.ops.shell import BackdoorError

    port = free_port()
    with pytest.raises(BackdoorError, match="refusing to open the debug shell on 10.1.2.3"):
        serve(demo_app(), "127.0.0.1", port, backdoor=("10.1.2.3", free_port()))
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_shell_says_clearly_when_it_cannot_connect() -> None:
    port = free_port()
    result = run_shell(port, "print(1)\n")
    assert result.returncode == 1
    assert f"cannot connect to the debug shell at 127.0.0.1:{port}" in result.stderr
    assert "--backdoor" in result.stderr


def wait_for_key(pid: int, timeout: float = 20) -> None:
    """Wait until process ``pid`` sleeps in select/poll (readline waiting for a key)."""

    def waiting() -> bool:
        with open(f"/proc/{pid}/wchan") as wchan:
            return wchan.read().startswith(("poll_schedule_timeout", "do_select", "do_sys_poll"))

    eventually(waiting, timeout=timeout)


def test_interactive_shell_on_a_terminal(backdoor_server: Any) -> None:
    import fcntl
    import pty
    import termios

    _, backdoor, _ = backdoor_server
    leader, follower = pty.openpty()

    def controlling_terminal() -> None:  # so that Ctrl-C sends SIGINT, as in a real terminal
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        # A fresh terminal's shell starts with SIGINT deliverable; this test process may not
        # be in that state (a child inherits the blocked-signal mask, and a SIGINT ignored at
        # exec stays ignored in Python): a suite started in the background by a
        # non-interactive shell, which ignores SIGINT for its background jobs, saw Ctrl-C do
        # nothing here while the test run in the foreground passed.
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    process = subprocess.Popen(
        [*shell_command(), "--connect", f"127.0.0.1:{backdoor}"],
        stdin=follower, stdout=follower, stderr=follower, cwd=REPO, close_fds=True,
        preexec_fn=controlling_terminal,
    )
    os.close(follower)
    seen = bytearray()

    os.set_blocking(leader, False)

    def read_until(marker: bytes, start: int = 0, timeout: float = 20) -> bytes:
        """Read the terminal until ``marker`` shows up after offset ``start``; the text since ``start``."""
        with gevent.Timeout(timeout, AssertionError(f"no {marker!r} in {bytes(seen[start:])!r}")):
            while marker not in seen[start:]:
                try:
                    seen.extend(gevent.os.nb_read(leader, 4096))
                except OSError:  # the terminal closed
                    raise AssertionError(f"terminal closed before {marker!r}: {bytes(seen)!r}") from None
        return bytes(seen[start:])

    def type_in(keys: bytes, until: bytes) -> bytes:
        """Type ``keys``, then read until the shell shows ``until``; what it showed meanwhile."""
        start = len(seen)
        os.write(leader, keys)
        return read_until(until, start)

    try:
        read_until(b"flamigo_actors debug shell")  # the banner, then the prompt
        read_until(b">>> ")
        type_in(b"for i in range(2):\n", b"... ")
        shown = type_in(b"    print('line', i * 21)\n\n", b">>> ")
        assert b"line 0\r\nline 21\r\n" in shown
        assert b"\r\n3\r\n>>> " in type_in(b"print(len(connections()))\n", b">>> ")
        type_in(b"if True:\n", b"... ")
        # Ctrl-C drops the unfinished statement. Sent once the shell is blocked reading the
        # terminal: a SIGINT that lands outside readline's select() (between its prompt and
        # the select, or between two timed selects) is only seen after the next key
        # (CPython's readline loop checks signals only when select is interrupted), which a
        # loaded machine makes likely (a CI run saw it). So, as a user would, press it again
        # if nothing happened: the SIGINTs coalesce into one KeyboardInterrupt.
        start = len(seen)
        for attempt in range(10):
            wait_for_key(process.pid)
            os.write(leader, b"\x03")
            try:
                read_until(b"KeyboardInterrupt", start, timeout=3)
                break
            except AssertionError:
                if process.poll() is not None or attempt == 9:
                    raise
        read_until(b">>> ", len(seen) - len(b"KeyboardInterrupt"))
        assert b"fresh 42" in type_in(b"print('fresh', 6 * 7)\n", b">>> ")
        os.write(leader, b"\x04")  # Ctrl-D
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(leader)
    assert b"kick(conn_id, reason)" in seen  # the banner lists the helpers


def test_flask_shell_offers_the_helpers_without_live_connections() -> None:
    # `flask` does not monkey-patch: actors run in real threads there, and the
    # shell must still answer and exit at the end of its input.
    script = textwrap.dedent("""
        import json
        print(json.dumps(sorted(k for k in dir() if not k.startswith("_"))))
        print(json.dumps(call("app::echo", {"offline": True})))
        print(json.dumps(call("app::demo:deferred", {"seconds": 0.01})))
        publish("chat:message", {"text": "nobody listens"}, topic="rooms/lobby")
        import time
        deadline = time.monotonic() + 10
        while stats()["events_published"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)

        print(json.dumps(stats()))
        print(json.dumps(sorted({a["kind"] for a in actors()})))
        stats()
        actors()
    """)
    env = {**os.environ, "FLASK_APP": "app:create_app"}
    result = subprocess.run(
        [sys.executable, "-m", "flask", "shell"], input=script, capture_output=True,
        text=True, timeout=60, cwd=REPO, env=env,
    )
    assert result.returncode == 0, result.stderr
    names, echoed, deferred, figures, kinds = json_lines(result.stdout)
    helpers = {"actors", "subscriptions", "stats", "call", "publish", "presence"}
    assert {"app", "flamigo", "bus", "ActorRegistry", *helpers} <= set(names)
    assert "connections" not in names and "kick" not in names
    assert echoed == {"offline": True}
    assert deferred == {"slept": 0.01}
    assert figures["events_published"] == 1 and figures["connections"] == 0
    assert "bus" in kinds
    assert "events_published" in result.stdout and "(1 rows)" in result.stdout
    assert "Traceback" not in result.stderr

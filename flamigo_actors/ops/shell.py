"""Debug shells: the namespace they offer, the backdoor server and its client.

Three ways in, one set of helpers (:func:`namespace`):

* ``flask shell``: offline, through the shell context processor the extension
  registers (no live connections there).
* The **backdoor**: a server started with ``--backdoor [HOST:]PORT`` opens a
  Python console inside the running process (:class:`DebugShellServer`, a
  gevent :class:`~gevent.backdoor.BackdoorServer`), on a loopback address
  only: it runs any code without authentication.
* ``flamigo-actors shell --connect HOST:PORT``: the client (:func:`attach`).
  Interactive on a terminal; otherwise it runs the statements read from stdin
  and prints their output, so it can be scripted.

Nothing typed in the backdoor stops the server by accident: ``exit()``,
``quit()``, ``sys.exit()`` and ``raise SystemExit`` end the session only.
"""

from __future__ import annotations

import code
import logging
import socket
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

import gevent
import pykka
from gevent.backdoor import BackdoorServer
from gevent.fileobject import FileObjectPosix
from gevent.hub import getcurrent

from . import inspect
from ..runtime.actor_space import ActorRef
from ..runtime.domain import DomainActor
from ..runtime.engine import gevent_patched
from ..core.events import ClientMessageEvent
from ..core.identity import BackendIdentity, Identity

if TYPE_CHECKING:
    from .host import Host

__all__ = [
    "BackdoorError",
    "DebugShellServer",
    "attach",
    "namespace",
    "parse_address",
    "start_backdoor",
]

_log = logging.getLogger("flamigo_actors.shell")

PS1 = ">>> "
PS2 = "... "
SCRIPT_MODE = "# flamigo-actors shell: script mode"
"""A comment line (a no-op to any Python console) after which a session stops prompting."""
RESET = "# flamigo-actors shell: reset"
"""A comment line that drops the statement being typed (the client's Ctrl-C)."""
_PROMPTS = (PS1.encode(), PS2.encode())

HELPERS = (
    "actors()  connections()  subscriptions()  stats()  actor(kind, key)\n"
    "call(name, payload)  call(ref, method, *args)  publish(client_topic, payload, topic=...)  kick(conn_id, reason)\n"
    "also: app, flamigo, bus, ActorRegistry"
)


# -- the namespace ----------------------------------------------------------------


def namespace(flamigo: Host, *, live: bool) -> dict[str, Any]:
    """The names a debug shell offers for ``flamigo``'s application.

    The helpers return plain data (lists of dicts, dicts) that print as
    readable tables at the prompt.

    Args:
        live: True inside a running server (adds ``connections`` and ``kick``).
    """
    if not live and not gevent_patched():
        _stop_runtime_at_exit(flamigo)

    def actors() -> inspect.Table:
        """Every live Pykka actor (kind, urn, alive, mailbox depth, age), then every domain
        actor (kind, key, owner, mailbox, restarts, activated at, last message at)."""
        return inspect.actors(flamigo)

    def actor(kind: str | type[DomainActor], key: str) -> ActorRef:
        """A ref to a domain actor by its kind (``"room"``) or class and key: ``call(actor("room", "lobby"), "post", ...)``."""
        space = flamigo.actors
        return space.get(space.class_of(kind) if isinstance(kind, str) else kind, key)

    def subscriptions() -> inspect.Table:
        """Every topic pattern with its subscribers."""
        return inspect.subscriptions(flamigo)

    def stats() -> inspect.Stats:
        """Counts and per-second rates of connections, messages and events."""
        return inspect.stats(flamigo)

    def call(
        target: str | ActorRef, payload: Any = None, *args: Any, identity: Identity | None = None,
        timeout: float | None = None, **kwargs: Any,
    ) -> Any:
        """Run strategy ``target`` (as the backend identity by default) and return its result;
        or, given a domain actor's ref, call its method: ``call(ref, "post", "ops", "hi")``."""
        if isinstance(target, ActorRef):
            if not isinstance(payload, str):
                raise TypeError(f"call(ref, method, *args): the method name is a string, got {payload!r}")
            return _in_app_context(flamigo, lambda: target.ask(payload, *args, **kwargs).get(timeout))
        if args or kwargs:
            raise TypeError("call(strategy_name, payload): a strategy takes one payload")
        who = identity if identity is not None else BackendIdentity("shell")
        return _in_app_context(flamigo, lambda: flamigo.call(target, payload, identity=who, timeout=timeout))

    def publish(client_topic: str, payload: Any, topic: str | Sequence[str]) -> None:
        """Push ``{"topic": client_topic, "payload": payload}`` to the subscribers of ``topic``.

        ``topic`` is a bus topic (``"rooms/lobby"``, ``"user/42"``) or a list of them.
        """
        topics = (topic,) if isinstance(topic, str) else tuple(topic)
        if not topics or "*" in topics:
            raise ValueError("publish needs a concrete bus topic such as 'rooms/lobby' (not '*')")
        event = ClientMessageEvent(topics, client_topic, payload)
        _in_app_context(flamigo, lambda: flamigo.publish(event, identity=BackendIdentity("shell")))

    def presence(topic: str | None = None) -> Any:
        """Who is in ``topic`` (``{key: [meta, ...]}``, every process's entries), or with no
        topic the topics this process tracks and its counters."""
        tracker = getattr(flamigo, "presence", None)
        if tracker is None:
            raise RuntimeError("this application has no presence (flamigo.presence)")
        if topic is None:
            return {**tracker.snapshot(), "topics": tracker.topics()}
        return tracker.list(topic)

    names: dict[str, Any] = {
        "app": flamigo.app,
        "flamigo": flamigo,
        "bus": flamigo.bus,
        "ActorRegistry": pykka.ActorRegistry,
        "actors": actors,
        "actor": actor,
        "actor_space": flamigo.actors,
        "subscriptions": subscriptions,
        "stats": stats,
        "call": call,
        "publish": publish,
        "presence": presence,
    }
    if live:

        def connections() -> inspect.Table:
            """Every connection: id, remote, user, subscriptions, mailbox, outbound, counters."""
            return inspect.connections(flamigo)

        def kick(conn_id: str, reason: str = "kicked by an operator") -> bool:
            """Close connection ``conn_id`` with code 4000; its disconnected event fires.

            Returns False when no such connection is open (see ``connections()``).
            """
            return flamigo.kick(conn_id, reason)

        names["connections"] = connections
        names["kick"] = kick
    return names


def _in_app_context(flamigo: Host, work: Any) -> Any:
    from flask import has_app_context

    if has_app_context() or flamigo.app is None:
        return work()
    with flamigo.app.app_context():
        return work()


_exit_hooks: weakref.WeakSet[Host] = weakref.WeakSet()


def _stop_runtime_at_exit(flamigo: Host) -> None:
    # Without gevent's patching (``flask shell``) actors run in real, non-daemon
    # threads, and the interpreter joins those *before* atexit handlers run: a
    # shell that published an event would never exit. threading's own pre-join
    # hook (what concurrent.futures uses) stops them in time.
    register = getattr(threading, "_register_atexit", None)
    if register is None or flamigo in _exit_hooks:
        return
    _exit_hooks.add(flamigo)
    ref = weakref.ref(flamigo)

    def stop() -> None:
        target = ref()
        if target is not None:
            target.bus.close(timeout=2)
        pykka.ActorRegistry.stop_all(block=True, timeout=2)

    register(stop)


# -- the backdoor server ------------------------------------------------------------


class BackdoorError(RuntimeError):
    """The backdoor cannot be opened (a non-loopback address, a busy port)."""


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``"[HOST:]PORT"`` → ``(host, port)``; ``[::1]:5001`` for IPv6.

    Raises:
        ValueError: not a port, or a port outside 1-65535.
    """
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
    else:
        host, port_text = "", text
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"expected [HOST:]PORT such as 127.0.0.1:5001, got {text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1-65535, got {port}")
    return host or default_host, port


def require_loopback(host: str) -> None:
    """Refuse a backdoor host that is not a loopback address.

    Raises:
        BackdoorError: saying why and what to do instead.
    """
    if not inspect.is_loopback(host):
        raise BackdoorError(
            f"refusing to open the debug shell on {host}: it runs any Python code without "
            "authentication, so it only binds a loopback address (127.0.0.1, ::1, localhost); "
            "from another machine, reach it through an SSH tunnel"
        )


class _SocketWriter:
    """sys.stdout/sys.stderr of a session: text straight to the socket (no buffering)."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def write(self, data: str) -> int:
        self._sock.sendall(data.encode("utf-8", "replace"))
        return len(data)

    def writelines(self, lines: Sequence[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Nothing is buffered."""

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        """The session owns the socket; user code cannot close it by closing stdout."""


class _SocketReader:
    """sys.stdin of a session: lines from the socket."""

    encoding = "utf-8"

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def readline(self, size: int = -1) -> str:
        try:
            return self._stream.readline(size).replace("\r\n", "\n")
        except (OSError, UnicodeError):
            return ""  # a dropped or garbled connection ends the session

    def read(self, size: int = -1) -> str:
        return self._stream.read(size)

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        """See :meth:`_SocketWriter.close`."""


class _EndSession:
    """``exit`` and ``quit`` inside the backdoor: they end the session, never the server."""

    def __repr__(self) -> str:
        return "Use exit() or Ctrl-D to end this session (the server keeps running)"

    def __call__(self, code: Any = None) -> None:
        raise SystemExit(code)  # caught by the session's handler, not the process


class _Console(code.InteractiveConsole):
    """One session's console: prompts and input on the socket, never the process's."""

    def __init__(self, names: dict[str, Any], stdin: _SocketReader, stdout: _SocketWriter) -> None:
        super().__init__(names, filename="<debug-shell>")
        self._stdin = stdin
        self._stdout = stdout
        self._flushed_at_eof = False
        self.prompting = True

    def raw_input(self, prompt: str = "") -> str:
        if self.prompting:
            self._stdout.write(prompt)
        line = self._stdin.readline()
        if not line:
            # A script whose last block has no blank line after it: run it anyway.
            if self.buffer and not self._flushed_at_eof:
                self._flushed_at_eof = True
                return ""
            raise EOFError
        line = line.rstrip("\n")
        if line == SCRIPT_MODE:
            # A script client: output only, so that it can send statements
            # ahead without waiting for prompts (and input() reads the script).
            self.prompting = False
            return ""
        if line == RESET:
            self.resetbuffer()
            return ""
        return line

    def write(self, data: str) -> None:
        self._stdout.write(data)

    def run(self, banner: str) -> None:
        """Read, run and print until end of input."""
        self.write(banner)
        more = False
        while True:
            try:
                line = self.raw_input(PS2 if more else PS1)
            except EOFError:
                if self.prompting:
                    self.write("\n")
                return
            more = self.push(line)


class DebugShellServer(BackdoorServer):
    """A gevent backdoor serving Python consoles with the live shell namespace.

    Every session gets its own copy of the namespace, runs in its own greenlet
    inside an application context, and ends on EOF, ``exit()``, ``quit()`` or
    ``sys.exit()`` without touching the server.

    Raises:
        BackdoorError: ``address`` is not a loopback address.
    """

    def __init__(self, flamigo: Host, address: tuple[str, int]) -> None:
        require_loopback(address[0])
        self.flamigo = flamigo
        app_name = flamigo.app.import_name if flamigo.app is not None else "?"
        banner = (
            f"flamigo_actors debug shell: {app_name} (Python {sys.version.split()[0]})\n"
            f"{HELPERS}\n"
            "Code runs inside the server: blocking or CPU-bound loops stall it. "
            "exit() ends this session only.\n"
        )
        names = namespace(flamigo, live=True)
        names["exit"] = names["quit"] = _EndSession()
        super().__init__(address, locals=names, banner=banner)

    def handle(self, conn: socket.socket, address: Any) -> None:  # type: ignore[override]
        """Serve one session (runs in its own greenlet)."""
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        stream = conn.makefile("r", encoding="utf-8", errors="replace", newline="")
        stdin, stdout = _SocketReader(stream), _SocketWriter(conn)
        # BackdoorServer's greenlets swap sys.std* in and out whenever they run,
        # so print() in the session goes to the socket and nowhere else.
        greenlet = getcurrent()
        greenlet.stdin, greenlet.stdout = stdin, stdout  # type: ignore[attr-defined]
        greenlet.switch_in()  # type: ignore[attr-defined]
        _log.warning("debug shell session opened from %s", _peer(address))
        try:
            console = _Console(self._create_interactive_locals(), stdin, stdout)
            app = self.flamigo.app
            if app is not None:
                with app.app_context():
                    console.run(self.banner or "")
            else:
                console.run(self.banner or "")
        except SystemExit:  # exit(), quit(), sys.exit(), raise SystemExit
            try:
                stdout.write("session ended; the server keeps running\n")
            except OSError:
                pass
        except OSError as err:  # the client went away mid-write
            _log.info("debug shell session from %s lost: %s", _peer(address), err)
        finally:
            _log.warning("debug shell session from %s closed", _peer(address))
            stream.close()
            _end_session(conn)


def _end_session(conn: socket.socket, linger: float = 2.0) -> None:
    """Close a session without resetting it.

    A script's statements are sent ahead; after exit() some are still unread,
    and closing a socket with unread input makes the kernel reset the
    connection, which can reach the client before the last output does. So:
    say goodbye (FIN), discard what is left until the client closes (at most
    ``linger`` seconds), then close.
    """
    try:
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(linger)
        deadline = time.monotonic() + linger
        while time.monotonic() < deadline and conn.recv(65536):
            pass
    except OSError:
        pass
    conn.close()


def _peer(address: Any) -> str:
    try:
        return f"{address[0]}:{address[1]}"
    except (TypeError, IndexError):
        return str(address)


def start_backdoor(flamigo: Host, address: tuple[str, int]) -> DebugShellServer:
    """Open the debug shell on ``address`` (loopback only) and return the running server.

    Raises:
        BackdoorError: a non-loopback address, or the port cannot be bound.
    """
    server = DebugShellServer(flamigo, address)
    try:
        server.start()
    except OSError as err:
        raise BackdoorError(
            f"cannot open the debug shell on {address[0]}:{address[1]}: {err.strerror or err}"
        ) from None
    host, port = server.address[:2]
    _log.warning(
        "debug shell listening on %s:%s (flamigo-actors shell --connect %s:%s); "
        "whoever can connect to it can run code in this process",
        host, port, host, port,
    )
    return server


# -- the client ------------------------------------------------------------------------


class _Session:
    """The client's side of one backdoor session: lines out, output up to the next prompt in."""

    def __init__(self, sock: socket.socket, out: BinaryIO) -> None:
        self._sock = sock
        self._out = out
        self._pending = b""

    def send(self, line: str) -> None:
        self._sock.sendall(line.encode("utf-8") + b"\n")

    def output(self, show: bool = True) -> str | None:
        """Copy output to ``out`` until the server prompts; the prompt, or None at end of session."""
        while True:
            data = self._pending
            for prompt in _PROMPTS:
                if data.endswith(prompt):
                    self._emit(data[: -len(prompt)], show)
                    self._pending = b""
                    return prompt.decode()
            # Hold back a tail that could be the start of a prompt split across reads.
            keep = max(
                (n for n in range(1, len(PS1)) for p in _PROMPTS if data.endswith(p[:n])),
                default=0,
            )
            self._emit(data[: len(data) - keep], show)
            self._pending = data[len(data) - keep:]
            chunk = self._sock.recv(65536)
            if not chunk:
                self._emit(self._pending, show)
                self._pending = b""
                return None
            self._pending += chunk

    def copy_to_end(self) -> None:
        """Copy everything the server sends to ``out`` until it ends the session."""
        self._emit(self._pending, True)
        self._pending = b""
        while chunk := self._sock.recv(65536):
            self._emit(chunk, True)

    def end_input(self) -> None:
        """Tell the server the script is over (it ends the session after running it)."""
        self._sock.shutdown(socket.SHUT_WR)

    def _emit(self, data: bytes, show: bool) -> None:
        if data and show:
            self._out.write(data)
            self._out.flush()


def attach(
    address: tuple[str, int],
    *,
    interactive: bool | None = None,
    stdin: TextIO | None = None,
    stdout: BinaryIO | None = None,
    connect_timeout: float = 5.0,
) -> int:
    """Open a session on the debug shell at ``address``; returns an exit status.

    Interactive (prompts, line editing) when ``stdin`` is a terminal;
    otherwise every line of ``stdin`` is sent as a statement and the output is
    copied to ``stdout``, without prompts or banner.

    Returns:
        0 at end of input (or when the session ends), 1 when the shell cannot
        be reached or the connection breaks.
    """
    stdin = stdin if stdin is not None else sys.stdin
    out = stdout if stdout is not None else sys.stdout.buffer
    if interactive is None:
        interactive = stdin.isatty()
    host, port = address
    try:
        sock = socket.create_connection((host, port), timeout=connect_timeout)
    except OSError as err:
        print(
            f"error: cannot connect to the debug shell at {host}:{port}: {err.strerror or err}\n"
            f"  (is the server running with --backdoor {host}:{port}?)",
            file=sys.stderr,
        )
        return 1
    sock.settimeout(None)  # statements may run as long as they like
    session = _Session(sock, out)
    try:
        prompt = session.output(show=interactive)  # the banner
        if prompt is None:
            print(f"error: {host}:{port} closed the connection: not a debug shell?", file=sys.stderr)
            return 1
        if interactive:
            return _interact(session, prompt)
        session.send(SCRIPT_MODE)
        sender = gevent.spawn(_send_script, session, stdin)
        try:
            session.copy_to_end()
        finally:
            sender.kill()  # the script may have ended the session early (exit())
        return 0
    except OSError as err:
        print(f"error: lost the debug shell at {host}:{port}: {err.strerror or err}", file=sys.stderr)
        return 1
    finally:
        sock.close()


def _send_script(session: _Session, stdin: TextIO) -> None:
    """Send a script's lines as a person would type them, then end the input."""
    block: list[str] = []  # the statement the server is still reading
    try:
        for raw in _script_lines(stdin):
            line = raw.rstrip("\r\n")
            if _block_ends_before(block, line):
                session.send("")  # what a person types at "... " to end a block
                block = []
            session.send(line)
            block.append(line)
            if _statement_complete(block):
                block = []
        if block:
            session.send("")
        session.end_input()
    except OSError:
        pass  # the session ended first (exit() in the script): nothing more to send


def _script_lines(stdin: TextIO) -> Iterator[str]:
    try:
        fd = stdin.fileno()
    except (AttributeError, OSError, ValueError):
        yield from stdin  # an in-memory stream
        return
    # Read a pipe cooperatively, so the server's output is copied meanwhile.
    reader = FileObjectPosix(fd, "r", close=False, encoding="utf-8", errors="replace")
    try:
        yield from reader
    finally:
        reader.close()


def _statement_complete(block: list[str]) -> bool:
    """Whether the console has run (or rejected) ``block``: what InteractiveConsole.push decides."""
    try:
        return code.compile_command("\n".join(block), "<script>", "single") is not None
    except (SyntaxError, ValueError, OverflowError):
        return True


_CONTINUATIONS = ("else", "elif", "except", "finally")


def _block_ends_before(block: list[str], line: str) -> bool:
    """Whether a script's unindented ``line`` starts a new statement after ``block``.

    At the prompt, a blank line ends a compound statement; scripts rarely have
    one there. The block is ended when it is complete as it stands and ``line``
    does not continue it (``else:``...). Inside brackets or a string the block
    is incomplete, so nothing is inserted there.
    """
    if not block or not line or line[0] in " \t#" or line.startswith(_CONTINUATIONS):
        return False
    try:
        return code.compile_command("\n".join(block) + "\n", "<script>", "exec") is not None
    except (SyntaxError, ValueError, OverflowError):
        return False


def _interact(session: _Session, prompt: str) -> int:
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    hub = gevent.get_hub()
    hub.NOT_ERROR = (*hub.NOT_ERROR, KeyboardInterrupt)  # Ctrl-C is no error to report
    while True:
        try:
            line = input(prompt)
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print("\nKeyboardInterrupt (Ctrl-D or exit() ends the session)")
            line = RESET  # drop the statement being typed, as Python's own prompt does
        session.send(line)
        try:
            next_prompt = session.output()
        except KeyboardInterrupt:
            print("\nleft the session; the statement keeps running in the server", file=sys.stderr)
            return 130
        if next_prompt is None:
            return 0
        prompt = next_prompt

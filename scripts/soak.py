"""Leak soak: many connect → auth → join → send → disconnect cycles against the demo app.

    python scripts/soak.py [--cycles 20000] [--concurrency 50] [--warmup 5000] [--json]

The server runs **in this process** (the demo app on a free port of
127.0.0.1, served by the real gevent server and WebSocket handler), so the
script can count exactly what it holds: Pykka actors, greenlets (found
through the GC, this thread only), connections, bus subscriptions. The
clients run here too, as greenlets with raw sockets; RSS therefore covers
both sides, which makes the memory bound a conservative one.

Each cycle opens a WebSocket, authenticates with a signed token
(``app::websocket:auth``), joins one of 20 rooms, sends a chat message (and
receives the pushes of whoever shares the room), then leaves in one of three
ways, in turn: a clean close handshake, an abrupt drop after the reply, or an
abrupt drop with a request still in flight.

The rooms are ``Room`` domain actors that live on between connections
(with their history, and the actor space's sweeper greenlet): all 20 are
activated before the first census, which then counts them as the baseline.

The census is taken at the start, after the warm-up and at the end, each
time once every connection has ended. It passes when actors, domain actors,
greenlets, connections and subscriptions at the end equal the start, and the RSS at the
end is within 10% of the RSS after the warm-up (allocator arenas and caches
grow during the warm-up, then must stay put). Exit status 0 on a pass, 1
otherwise.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402 - after monkey-patching, on purpose
import base64  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import psutil  # noqa: E402
import pykka  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flamigo_actors.runtime.engine import live_greenlets, parked_runners  # noqa: E402

RSS_GROWTH_LIMIT = 0.10
"""End RSS may exceed the after-warm-up RSS by at most this fraction."""

ROOMS = 20
USERS = 50


# -- a minimal WebSocket client (raw socket, masked frames) ----------------------------


class Client:
    """One WebSocket connection speaking just enough of RFC 6455 for the soak."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        # A numeric address and no create_connection(): no getaddrinfo, so no
        # resolver threads whose stacks and malloc arenas would blur the RSS.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buffer = b""
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"upgrade refused: {head[:60]!r}")

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buffer += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _frame(self, opcode: int, payload: bytes) -> bytes:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return head + mask + masked

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(self._frame(0x1, json.dumps(message).encode()))

    def receive(self) -> tuple[int, bytes]:
        b0, b1 = self._take(2)
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._take(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._take(8))
        return b0 & 0x0F, self._take(length)

    def request(self, topic: str, payload: Any, ack: str) -> Any:
        """Send a request; return its reply's payload (pushes in between are read and skipped)."""
        self.send({"topic": topic, "payload": payload, "ackId": ack})
        while True:
            opcode, data = self.receive()
            if opcode == 0x9:
                self.sock.sendall(self._frame(0xA, data))
            elif opcode == 0x8:
                raise ConnectionError(f"closed by the server: {data[:2]!r}")
            elif opcode == 0x1:
                message = json.loads(data)
                if message.get("ackId") == ack:
                    if message["topic"] == "error":
                        raise RuntimeError(f"{topic}: {message['payload']}")
                    return message["payload"]

    def close_cleanly(self) -> None:
        self.sock.sendall(self._frame(0x8, struct.pack("!H", 1000)))
        try:
            while self.receive()[0] != 0x8:
                pass
        except (ConnectionError, OSError):
            pass
        self.sock.close()

    def drop(self) -> None:
        self.sock.close()


# -- the census ---------------------------------------------------------------------------


def census(flamigo: Any) -> dict[str, int]:
    return {
        "actors": len(pykka.ActorRegistry.get_all()),
        "domain_actors": len(flamigo.actors),
        "greenlets": len(live_greenlets()),
        "parked_runners": len(parked_runners()),
        "connections": len(flamigo.connections),
        "subscriptions": len(flamigo.bus.subscriptions()),
        "rss": int(psutil.Process().memory_info().rss),
        # Python's own count of allocated memory blocks: a leak of Python
        # objects shows here long before it shows in the RSS.
        "python_blocks": sys.getallocatedblocks(),
    }


def settled(flamigo: Any, hold: float = 1.5, timeout: float = 20.0) -> dict[str, int]:
    """The census once every connection has ended and nothing is still winding down.

    "Nothing winding down" means the same counts for 1.5 s: longer than the
    keepalive greenlet's 1 s tick, after which it notices there is no
    connection left and ends.
    """
    deadline = time.monotonic() + timeout
    keys = ("actors", "domain_actors", "greenlets", "connections", "subscriptions")
    stable_since: float | None = None
    previous: dict[str, int] | None = None
    while True:
        current = census(flamigo)
        now = time.monotonic()
        if current["connections"] == 0 and previous is not None and all(
            previous[k] == current[k] for k in keys
        ):
            stable_since = stable_since or now
        else:
            stable_since = None
        if (stable_since is not None and now - stable_since >= hold) or now > deadline:
            return current
        previous = current
        gevent.sleep(0.25)


# -- the soak -----------------------------------------------------------------------------


def run(cycles: int, concurrency: int, warmup: int) -> dict[str, Any]:
    """Run the soak and return the census at start, after the warm-up and at the end."""
    from app import create_app
    from app.room import Room
    from flamigo_actors.serving.server import make_server

    app = create_app({"FLAMIGO_PING_INTERVAL": 54.0})
    flamigo = app.extensions["flamigo"]
    server = make_server(app, "127.0.0.1", 0)
    server.start()
    flamigo.start()
    port = server.server_port
    tokens = [app.extensions["tokens"].issue(f"soak{n}")[0] for n in range(USERS)]
    errors: list[str] = []
    counter = itertools.count()

    def cycle(n: int) -> None:
        client = Client(port)
        try:
            client.request("app::websocket:auth", {"token": tokens[n % USERS]}, "auth")
            room = f"soak{n % ROOMS}"
            client.request("app::rooms:join", {"room": room}, "join")
            way = n % 3
            if way == 2:  # leave with the request in flight
                client.send({"topic": "app::rooms:send", "payload": {"room": room, "text": f"m{n}"}, "ackId": "send"})
                client.drop()
                return
            client.request("app::rooms:send", {"room": room, "text": f"m{n}"}, "send")
            if way == 0:
                client.close_cleanly()
            else:
                client.drop()
        except Exception as err:  # noqa: BLE001 - counted and reported
            errors.append(f"cycle {n}: {type(err).__name__}: {err}")
            client.drop()

    def worker(until: int) -> None:
        while True:
            n = next(counter)
            if n >= until:
                return
            cycle(n)

    def phase(until: int) -> float:
        started = time.monotonic()
        gevent.joinall([gevent.spawn(worker, until) for _ in range(concurrency)], raise_error=True)
        return time.monotonic() - started

    try:
        for n in range(ROOMS):  # the rooms outlive connections: part of the baseline
            flamigo.actors.get(Room, f"soak{n}").ask("history").get()
        start = settled(flamigo, hold=0.5)  # no connection yet: no keepalive to wait for
        warm_time = phase(warmup)
        counter = itertools.count(warmup)
        after_warmup = settled(flamigo)
        soak_time = phase(cycles)
        end = settled(flamigo)
    finally:
        flamigo.shutdown(timeout=2)
        server.stop(timeout=1)

    counts = ("actors", "domain_actors", "greenlets", "connections", "subscriptions")
    rss_growth = (end["rss"] - after_warmup["rss"]) / after_warmup["rss"]
    result = {
        "cycles": cycles,
        "concurrency": concurrency,
        "warmup": warmup,
        "start": start,
        "after_warmup": after_warmup,
        "end": end,
        "rss_growth_after_warmup": round(rss_growth, 4),
        "errors": len(errors),
        "first_errors": errors[:5],
        "cycles_per_second": round((cycles - warmup) / soak_time, 1) if soak_time else None,
        "warmup_seconds": round(warm_time, 1),
        "soak_seconds": round(soak_time, 1),
        "connections_opened": flamigo.stats.connections_opened,
        "connections_closed": flamigo.stats.connections_closed,
    }
    result["passed"] = (
        not errors
        and all(end[k] == start[k] for k in counts)
        and rss_growth <= RSS_GROWTH_LIMIT
        and result["connections_opened"] == result["connections_closed"] == cycles
    )
    return result


def _print_table(result: dict[str, Any]) -> None:
    rows = [("", "start", "after warm-up", "end")]
    for key in ("actors", "domain_actors", "greenlets", "connections", "subscriptions"):
        rows.append((key, *(str(result[p][key]) for p in ("start", "after_warmup", "end"))))
    rows.append(("RSS (MiB)", *(f"{result[p]['rss'] / 2**20:.1f}" for p in ("start", "after_warmup", "end"))))
    rows.append(("Python blocks", *(str(result[p]["python_blocks"]) for p in ("start", "after_warmup", "end"))))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    print(
        f"{result['cycles']} cycles ({result['warmup']} warm-up), concurrency {result['concurrency']}, "
        f"{result['cycles_per_second']} cycles/s, errors {result['errors']}, "
        f"RSS growth after warm-up {result['rss_growth_after_warmup'] * 100:.2f}% "
        f"(limit {RSS_GROWTH_LIMIT * 100:.0f}%): {'PASS' if result['passed'] else 'FAIL'}"
    )
    for error in result["first_errors"]:
        print("  ", error)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=20_000, help="total cycles (default 20000)")
    parser.add_argument("--concurrency", type=int, default=50, help="clients at once (default 50)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up cycles (default half, at most 5000)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else min(5000, args.cycles // 2)
    if not 0 < warmup < args.cycles:
        parser.error("--warmup must be between 0 and --cycles")
    result = run(args.cycles, args.concurrency, warmup)
    if args.json:
        print(json.dumps(result))
    else:
        _print_table(result)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Measure the Redis backplane: cross-process latency, throughput, catch-up after a Redis restart.

    python scripts/bench_backplane.py [--messages 500] [--burst 5000] [--outage 200]

Run from the repository root (it uses the test helpers in ``tests/support.py``).
It starts a real redis-server and two ``python -m app --redis URL`` servers,
A and B, on free ports, then:

* latency: a client on B sends ``app::rooms:send``, one message at a time;
  the time until the push reaches a room member on A (cross-process) and a
  member on B (local), as percentiles;
* throughput: a burst of messages sent by B without waiting; the time until
  the member on A has them all;
* catch-up: Redis is killed, B's client sends messages (delivered locally at
  once), Redis stays down ``--down`` seconds and is restarted on the same port;
  the time from the restart until A's member has them all (reconnect backoff
  included).

Everything it started is stopped at the end. Figures depend on the machine:
they are printed, never asserted.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support import free_port  # noqa: E402
from tests.support import RedisServer, ServerProcess, WsClient  # noqa: E402


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return (f"p50 {at(0.5):.2f} ms  p90 {at(0.9):.2f} ms  p99 {at(0.99):.2f} ms  "
            f"max {ordered[-1] * 1000:.2f} ms  mean {statistics.mean(ordered) * 1000:.2f} ms")


def recv_chat(client: WsClient, timeout: float = 30.0) -> dict:
    while True:
        message = client.recv_json(timeout=timeout)
        if message.get("topic") == "chat:message":
            return message


def arrival(client: WsClient) -> float:
    recv_chat(client)
    return time.perf_counter()


def drain(client: WsClient) -> None:
    client.ws.settimeout(None)
    while True:
        client.ws.recv()


def joined(server: ServerProcess, name: str) -> WsClient:
    client = server.client(name)
    client.request("app::rooms:join", {"room": "bench"})
    return client


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=500, help="latency samples")
    parser.add_argument("--burst", type=int, default=5000, help="messages in the throughput burst")
    parser.add_argument("--outage", type=int, default=200, help="messages sent while Redis is down")
    parser.add_argument("--down", type=float, default=2.0, help="seconds Redis stays down")
    args = parser.parse_args()

    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server is not installed (apt-get install -y redis-server)", file=sys.stderr)
        return 1
    redis = RedisServer(binary, free_port()).start()
    env = {"FLAMIGO_MAILBOX_MAX_DELIVERIES": str(args.burst * 2),
           "FLAMIGO_OUTBOUND_MAX_MESSAGES": str(args.burst * 2)}
    a = ServerProcess(["-m", "app", "--port", str(port_a := free_port()), "--redis", redis.url,
                       "--log-level", "WARNING"], port_a, env)
    b = ServerProcess(["-m", "app", "--port", str(port_b := free_port()), "--redis", redis.url,
                       "--log-level", "WARNING"], port_b, env)
    try:
        a.wait_ready()
        b.wait_ready()
        far, near, sender = joined(a, "far"), joined(b, "near"), b.client("sender")
        replies = gevent.spawn(drain, sender)  # the sender's replies are not measured

        cross, local = [], []
        for n in range(args.messages):
            started = time.perf_counter()
            sender.send_json({"topic": "app::rooms:send", "payload": {"room": "bench", "text": f"m{n}"}})
            arrivals = [gevent.spawn(arrival, client) for client in (near, far)]
            gevent.joinall(arrivals, raise_error=True)
            local.append(arrivals[0].value - started)
            cross.append(arrivals[1].value - started)
        print(f"latency, {args.messages} messages one at a time (send -> push):")
        print(f"  local (same process): {percentiles(local)}")
        print(f"  cross (via Redis):    {percentiles(cross)}")

        started = time.perf_counter()
        for n in range(args.burst):
            sender.send_json({"topic": "app::rooms:send", "payload": {"room": "bench", "text": f"b{n}"}})
        for _ in range(args.burst):
            recv_chat(far)
        elapsed = time.perf_counter() - started
        print(f"throughput: {args.burst} messages B -> A in {elapsed:.2f} s "
              f"({args.burst / elapsed:.0f} messages/s end to end)")
        for _ in range(args.burst):
            recv_chat(near)

        redis.kill()
        for n in range(args.outage):
            sender.send_json({"topic": "app::rooms:send", "payload": {"room": "bench", "text": f"o{n}"}})
        for _ in range(args.outage):
            recv_chat(near)  # local delivery goes on while Redis is down
        time.sleep(args.down)  # the backplanes back off meanwhile (up to 3 s between attempts)
        restarted = time.perf_counter()
        redis.start()
        up = time.perf_counter() - restarted
        for n in range(args.outage):
            text = recv_chat(far)["payload"]["text"]
            assert text == f"o{n}", f"out of order or missing: {text}"
        caught_up = time.perf_counter() - restarted
        print(f"catch-up: {args.outage} messages sent during a {args.down:.1f} s Redis outage reached A "
              f"{caught_up:.2f} s after the restart (Redis itself took {up:.2f} s to start; "
              "the rest is reconnect backoff and delivery)")
        replies.kill()
        for client in (far, near, sender):
            client.close()
        stats = json.dumps({"redis_port": redis.port, "servers": [a.port, b.port]})
        print(f"setup: {stats}")
    finally:
        a.stop()
        b.stop()
        redis.stop()
        shutil.rmtree(redis.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

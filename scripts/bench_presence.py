"""Presence figures for the README: coalescing under a crowd of joiners, cross-server visibility, kill -9.

Usage: ``python scripts/bench_presence.py`` from the repository root (starts its own
servers and redis-server on free ports; prints one JSON line per measurement).
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from app import create_app  # noqa: E402
from tests.rawws import RawWs  # noqa: E402
from tests.support import (  # noqa: E402
    RedisServer, ServerProcess, eventually, free_port, need_binary, offline_token, start_live_server,
)

def crowd(n):
    server = start_live_server(create_app({"TESTING": True}))
    token = offline_token(server.app, "crowd")
    clients = []
    for _ in range(n):
        ws = RawWs(server.port, timeout=60)
        ws.send_json({"topic": "app::websocket:auth", "payload": {"token": token}, "ackId": "a"})
        clients.append(ws)
    for ws in clients: ws.recv_json()
    p = server.flamigo.presence
    t0 = time.monotonic()
    for ws in clients:
        ws.send_json({"topic": "app::rooms:join", "payload": {"room": "crowd"}, "ackId": "j"})
    for ws in clients:
        while ws.recv_json().get("ackId") != "j": pass
    t_replies = time.monotonic() - t0
    # until the last member heard of all n joins: read every socket until its diffs name n joins... approximate: until flush idle
    eventually(lambda: not p._pending and p._flusher is None, timeout=60)
    t_diffs = time.monotonic() - t0
    print(json.dumps({"n": n, "join_replies_s": round(t_replies, 2), "diffs_out_s": round(t_diffs, 2), "windows": p.diffs, "pushes": p.pushes, "pushes_per_member": round(p.pushes / n, 1)}))
    for ws in clients: ws.drop()
    server.stop()

def kill9(down_after, refresh):
    redis = RedisServer(need_binary("redis-server"), free_port()).start()
    env = {"FLAMIGO_PRESENCE_REFRESH": str(refresh), "FLAMIGO_PRESENCE_DOWN_AFTER": str(down_after)}
    a = ServerProcess.demo(free_port(), "--redis", redis.url, env=env)
    b = ServerProcess.demo(free_port(), "--redis", redis.url, env=env)
    a.wait_ready(); b.wait_ready()
    cs = [a.client(f"u{i}") for i in range(20)]
    for c in cs: c.request("app::rooms:join", {"room": "k"})
    w = b.client("w"); w.request("app::rooms:join", {"room": "k"})
    eventually(lambda: len(w.request("app::rooms:members", {"room": "k"})["members"]) == 21, timeout=10)
    t_join = time.monotonic(); x = a.client("late"); x.request("app::rooms:join", {"room": "k"})
    eventually(lambda: "late" in w.request("app::rooms:members", {"room": "k"})["members"], timeout=10, interval=0.001)
    join_visible = time.monotonic() - t_join
    a.signal(signal.SIGKILL); a.wait(10); t0 = time.monotonic()
    eventually(lambda: len(w.request("app::rooms:members", {"room": "k"})["members"]) == 1, timeout=down_after + 10, interval=0.05)
    gone = time.monotonic() - t0
    leaves = 0
    for m in w.pushes("presence:diff", count=10**6, timeout=3):
        leaves += sum(len(v) for v in m["payload"]["leaves"].values())
    print(json.dumps({"down_after": down_after, "refresh": refresh, "cross_server_join_visible_ms": round(join_visible * 1000, 1), "killed_entries_gone_s": round(gone, 2), "leaves": leaves}))
    w.close(); b.stop(); redis.stop()

if __name__ == "__main__":
    crowd(1000)
    crowd(2000)
    kill9(3.0, 0.5)

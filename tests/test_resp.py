"""Redis's wire format on a raw connection (backplane/resp.py), against a real redis-server.

``RespReader`` reads the domain actors' latency-path replies (the inbox reader's
``XREAD``, the reply subscriber's messages) in place of redis-py's parser: every
reply here is compared with what redis-py itself parses from the same server, under
RESP2 and RESP3, including replies split over many reads, several replies in one
read, error replies, a timeout and a connection the server closes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from flamigo_actors.backplane.resp import RespReader, command, command_head, with_last, write
from tests.support import RedisServer

PROTOCOLS = [2, 3]


@pytest.fixture(params=PROTOCOLS, ids=lambda p: f"resp{p}")
def pool(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[Any]:
    pool = redis.ConnectionPool.from_url(f"{redis_server.url}?protocol={request.param}", socket_timeout=5)
    yield pool
    pool.disconnect()


def both(pool: Any, *args: Any) -> tuple[Any, Any]:
    """``args`` sent on two fresh connections: (RespReader's reply, redis-py's reply)."""
    ours, theirs = pool.get_connection(), pool.get_connection()
    try:
        write(ours, command(*args))
        mine = RespReader(ours).read()
        theirs.send_packed_command([command(*args)], check_health=False)
        return mine, theirs.read_response()
    finally:
        pool.release(ours)
        pool.release(theirs)


def test_a_command_head_completed_is_the_whole_command_and_redis_runs_it(pool: Any) -> None:
    head = command_head("SET", "spliced")
    for value in (b"", b"v", b"line\r\nbreak", b"$3\r\nfoo", bytes(range(256)) * 3):
        assert with_last(head, value) == command("SET", "spliced", value)
        conn = pool.get_connection()
        try:
            write(conn, with_last(head, value) + command("GET", "spliced"))
            replies = RespReader(conn)
            assert replies.read() == b"OK" and replies.read() == value
        finally:
            pool.release(conn)


def test_replies_parse_as_redis_py_parses_them(pool: Any) -> None:
    client = redis.Redis(connection_pool=pool)
    client.hset("h", mapping={"a": "1", "b": "two"})
    client.sadd("s", "x", "y")
    client.rpush("l", "one", "", "three")
    client.set("n", 41)
    client.set("crlf", b"a\r\nb\r\n$3\r\n*1\r\n")  # bytes that look like RESP inside a value
    for doc in (b'["c","id.1","host:1","k","key","m",[1],{},true,1]', b"x" * 70_000):
        client.xadd("inbox", {"m": doc})
    cases = [
        ("PING",), ("SET", "k", "v"), ("GET", "k"), ("GET", "missing"), ("INCRBY", "n", 0),
        ("HGETALL", "h"), ("SMEMBERS", "s"), ("LRANGE", "l", 0, -1), ("GET", "crlf"),
        ("XREAD", "COUNT", 10, "STREAMS", "inbox", "0-0"), ("XREAD", "COUNT", 10, "STREAMS", "inbox", "$"),
        ("XREVRANGE", "inbox", "+", "-", "COUNT", 1), ("XRANGE", "nothing", "-", "+"),
        ("ZSCORE", "nothing", "m"), ("EXISTS", "k", "h"),
    ]
    for case in cases:
        mine, theirs = both(pool, *case)
        if isinstance(theirs, list) and case[0] == "SMEMBERS":
            mine, theirs = sorted(mine), sorted(theirs)  # (a set's order)
        assert mine == theirs, case
    assert both(pool, "GET", "crlf")[0] == b"a\r\nb\r\n$3\r\n*1\r\n"


def test_pipelined_replies_and_a_reply_split_over_many_reads(pool: Any) -> None:
    conn = pool.get_connection()
    try:
        reader = RespReader(conn)
        big = bytes(range(256)) * 4000  # ~1 MB: many recv() calls, a partial reply buffered each time
        write(conn, command("SET", "big", big) + command("GET", "big") + command("PING") + command("GET", "none"))
        assert [reader.read() for _ in range(4)] == [b"OK", big, b"PONG", None]
        assert not reader.buffered
    finally:
        pool.release(conn)


def test_an_error_reply_raises_redis_py_s_exception_and_the_connection_goes_on(pool: Any) -> None:
    conn = pool.get_connection()
    try:
        reader = RespReader(conn)
        write(conn, command("SET", "text", "abc") + command("XREAD", "STREAMS", "text", "0-0") + command("PING"))
        assert reader.read() == b"OK"
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            reader.read()
        assert reader.read() == b"PONG"  # the error consumed its own bytes only
        # An error inside an array (EXEC) is a value, as redis-py returns it.
        write(conn, command("MULTI") + command("INCR", "text") + command("PING") + command("EXEC"))
        assert [reader.read() for _ in range(3)] == [b"OK", b"QUEUED", b"QUEUED"]
        failed, pong = reader.read()
        assert isinstance(failed, redis.ResponseError) and "not an integer" in str(failed) and pong == b"PONG"
    finally:
        pool.release(conn)


def test_not_resp_is_a_connection_error(pool: Any) -> None:
    conn = pool.get_connection()
    try:
        reader = RespReader(conn)
        reader.buf = b"?what is this\r\n"  # (Redis never sends it: as if the stream were corrupted)
        with pytest.raises(redis.ConnectionError, match="Protocol error"):
            reader.read()
        reader.buf, reader.pos = b"$abc\r\n", 0
        with pytest.raises(redis.ConnectionError, match="bad length"):
            reader.read()
    finally:
        conn.disconnect()
        pool.release(conn)


def test_a_timeout_keeps_what_was_read_and_a_closed_connection_is_a_connection_error(
    pool: Any, redis_server: RedisServer
) -> None:
    conn = pool.get_connection()
    try:
        reader = RespReader(conn)
        reader.sock.settimeout(0.2)
        with pytest.raises(reader.timeout_error):
            reader.read()  # nothing sent: silence
        assert isinstance(reader.timeout_error(), redis.TimeoutError)
        reader.buf = b"+PO"  # half a reply already read when the timeout passed
        with pytest.raises(redis.TimeoutError):
            reader.read()
        assert reader.buffered and reader.buf == b"+PO"  # kept: reading again goes on from there
        reader.buf = b""
        write(conn, command("CLIENT", "ID"))
        my_id = reader.read()
        write(conn, command("PING"))
        assert reader.read() == b"PONG"
        redis_server.client().client_kill_filter(_id=my_id)
        with pytest.raises(redis.ConnectionError):
            reader.read()
    finally:
        conn.disconnect()
        pool.release(conn)

"""Inspection helpers: tables and stats that print readably, rates, addresses, script blocks."""

from __future__ import annotations

import json

import pytest

from flamigo_actors.ops.inspect import Stats, Table, _Rates, is_loopback
from flamigo_actors.ops.shell import _block_ends_before, parse_address
from tests.support import LiveServer, eventually


def test_table_is_plain_data_that_prints_as_a_table() -> None:
    rows = [
        {"id": "c1", "user": {"id": "alice", "username": "Alice"}, "subscriptions": ["a", "b"], "mailbox": 0},
        {"id": "c22", "user": None, "subscriptions": [], "mailbox": 12},
    ]
    table = Table(rows, ["id", "user", "subscriptions", "mailbox"])
    assert table == rows and json.loads(json.dumps(table)) == rows
    assert repr(table).splitlines() == [
        "id   user   subscriptions  mailbox",
        "---  -----  -------------  -------",
        "c1   Alice  a,b            0      ",
        "c22  -      -              12     ",
        "(2 rows)",
    ]
    assert repr(Table([])) == "(none)"


def test_stats_print_with_their_rates() -> None:
    figures = Stats({"connections": 3, "messages_in": 40, "rates_per_second": {"messages_in": 2.5}, "rate_window": 1.2})
    assert dict(figures)["messages_in"] == 40
    assert repr(figures).splitlines() == [
        "connections   3",
        "messages_in  40  2.5/s",
        "(rates over the last 1.2 s)",
    ]


def test_rates_use_a_window_of_at_least_a_second_shared_by_all_readers() -> None:
    now = [100.0]
    rates = _Rates(started=90.0, clock=lambda: now[0])
    # First reading: the average since the start (10 s).
    assert rates({"messages": 50}) == ({"messages": 5.0}, 10.0)
    now[0] = 100.5  # a second reader soon after: still measured from the start
    assert rates({"messages": 60}) == ({"messages": round(60 / 10.5, 1)}, 10.5)
    now[0] = 101.0  # one second after the first sample: the window starts there
    assert rates({"messages": 150}) == ({"messages": 100.0}, 1.0)
    now[0] = 101.2  # quick re-reads do not shrink the window below a second
    assert rates({"messages": 170}) == ({"messages": 100.0}, 1.2)
    now[0] = 201.0  # after a long pause: measured over the whole pause
    assert rates({"messages": 250}) == ({"messages": 1.0}, 100.0)
    assert len(rates._samples) <= 3


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True), ("127.0.0.1:5001", True), ("127.9.9.9", True), ("::1", True),
        ("[::1]:5001", True), ("::ffff:127.0.0.1", True), ("localhost", True), ("localhost:8080", True),
        ("0.0.0.0", False), ("::", False), ("10.0.0.1:80", False), ("[2001:db8::1]:80", False),
        ("example.com", False), ("", False), (None, False),
    ],
)
def test_is_loopback(address: str | None, loopback: bool) -> None:
    assert is_loopback(address) is loopback


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5001", ("127.0.0.1", 5001)),
        ("127.0.0.1:5001", ("127.0.0.1", 5001)),
        ("localhost:1", ("localhost", 1)),
        ("[::1]:5001", ("::1", 5001)),
        ("0.0.0.0:5001", ("0.0.0.0", 5001)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "127.0.0.1:", "127.0.0.1:0", "70000", "[::1]"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


@pytest.mark.parametrize(
    ("block", "line", "ends"),
    [
        (["for i in x:", "    print(i)"], "print('next')", True),
        (["for i in x:", "    print(i)"], "    print(i)", False),  # still inside the block
        (["if a:", "    b()"], "else:", False),
        (["try:", "    b()"], "except KeyError:", False),
        (["s = '''"], "text", False),  # inside a string
        (["f(1,"], "2)", False),  # inside brackets
        (["@decorator"], "def f(): pass", False),
        ([], "x = 1", False),
    ],
)
def test_scripts_end_blocks_like_a_person_at_the_prompt(block: list[str], line: str, ends: bool) -> None:
    assert _block_ends_before(block, line) is ends


def test_kick_and_connections_from_the_namespace(demo_server: LiveServer) -> None:
    from flamigo_actors.ops.shell import namespace

    names = namespace(demo_server.flamigo, live=True)
    client = demo_server.client("alice")
    try:
        (row,) = names["connections"]()
        assert row["user"] == {"id": "alice", "username": "alice"}
        assert names["kick"](row["id"], "bye") is True
        assert client.wait_closed() == (4000, "bye")
        eventually(lambda: not names["connections"]())
        assert names["kick"](row["id"], "again") is False
    finally:
        client.close()
    with pytest.raises(ValueError, match="concrete bus topic"):
        names["publish"]("chat:message", {}, topic="*")

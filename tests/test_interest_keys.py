"""The interest-based backplane's write script (``backplane/interest_keys.py``) run on a real redis-server.

A whole batch of events goes to Redis in one script call; these tests check what that
call leaves in Redis and sends live: every channel counts every event, only wanted
channels store and publish, numbers follow one another across batches, an entry read
back from the stream is the live message, and every key has a TTL.
"""

from __future__ import annotations

from typing import Any

import redis as redis_py

from flamigo_actors.backplane.interest_keys import (
    BASELINE,
    PUBLISH,
    TOPIC_TTL,
    WANT_TTL,
    PublishBatch,
    channels_of_topics,
    message_tail,
    parse_entry,
    parse_message,
)
from tests.support import RedisServer, eventually


def _write(client: Any, events: list[tuple[tuple[str, ...], int]], group_of: Any = lambda name: None) -> None:
    batch = PublishBatch(group_of)
    for topics, seq in events:
        names = channels_of_topics("app", topics)
        batch.add(names, message_tail(b"origin-1", seq, len(names), b"", b"", b"", b'{"u":1}', b'{"n":%d}' % seq))
    for keys, argv, _ in batch.calls():
        client.eval(PUBLISH, len(keys), *keys, 100, TOPIC_TTL, *argv)


def test_a_batch_counts_every_channel_stores_and_publishes_only_wanted_ones(redis_server: RedisServer) -> None:
    client = redis_server.client()
    wanted = "app:t:{rooms/a}"
    reply = client.eval(BASELINE, 3, wanted, f"{wanted}:c", f"{wanted}:w", WANT_TTL, TOPIC_TTL)
    assert reply == [0, b"0-0"]
    listener = redis_py.Redis(port=redis_server.port).connection_pool.get_connection()
    listener.send_command("SSUBSCRIBE", wanted)
    listener.read_response(push_request=True)

    _write(client, [(("rooms/a",), 1), (("rooms/b",), 2), (("rooms/a", "news"), 3)])
    _write(client, [(("rooms/a",), 4)])  # a second batch goes on numbering

    assert client.get(f"{wanted}:c") == b"3" and client.get("app:t:{rooms/b}:c") == b"1"
    assert client.get("app:n:{rooms}:c") == b"4" and client.get("app:n:{*}:c") == b"4"
    assert client.get("app:t:{news}:c") == b"1"
    assert [k for k in client.scan_iter("app:*") if client.type(k) == b"stream"] == [wanted.encode()]
    stored = [parse_entry(bytes(i), f) for i, f in client.xrange(wanted)]
    assert [(m.counter, m.seq, m.copies, bytes(m.event)) for m in stored] == [
        (1, 1, 3, b'{"n":1}'), (2, 3, 4, b'{"n":3}'), (3, 4, 3, b'{"n":4}')]

    def live() -> Any:
        got = []
        while listener.can_read(timeout=0.5):
            reply = listener.read_response(push_request=True)
            got.append(parse_message(bytes(reply[2])))
        return got

    messages = eventually(lambda: (lambda got: got if len(got) == 3 else None)(live()), timeout=10)
    for message, entry in zip(messages, stored):  # the live message is the entry, with its id
        assert [bytes(message.id), message.counter, bytes(message.origin), message.seq, bytes(message.identity),
                bytes(message.event)] == [bytes(entry.id), entry.counter, bytes(entry.origin), entry.seq,
                                          bytes(entry.identity), bytes(entry.event)]
    # Nothing per event refreshes a TTL, yet nothing is left forever.
    assert all(0 < client.ttl(key) <= TOPIC_TTL for key in client.scan_iter("app:*"))
    listener.disconnect()


def test_groups_split_a_batch_into_one_call_per_slot_in_order() -> None:
    batch = PublishBatch(lambda name: name.split("{")[1])  # each channel its own group, as on a cluster
    names = channels_of_topics("app", ("rooms/a",))
    batch.add(names, b"t1")
    batch.add(channels_of_topics("app", ("rooms/b",)), b"t2")
    calls = batch.calls()
    assert [keys[0] for keys, _, _ in calls] == ["app:t:{rooms/a}", "app:n:{rooms}", "app:n:{*}", "app:t:{rooms/b}"]
    assert [writes for _, _, writes in calls] == [1, 2, 2, 1]
    assert dict((keys[0], argv) for keys, argv, _ in calls)["app:n:{rooms}"] == [1, 1, b"t1", 1, 1, b"t2"]
    assert batch.calls() == []
    one = PublishBatch(lambda name: None)  # one Redis server: one call for the batch
    one.add(names, b"t1")
    one.add(channels_of_topics("app", ("news",)), b"t2")
    [(keys, argv, writes)] = one.calls()
    assert keys[::3] == ["app:t:{rooms/a}", "app:n:{rooms}", "app:n:{*}", "app:t:{news}"]
    assert argv == [3, 1, 2, 3, b"t1", 2, 4, 3, b"t2"] and writes == 5


def test_an_entry_written_by_the_earlier_layout_is_read() -> None:
    fields = {b"c": b"7", b"o": b"o", b"s": b"9", b"n": b"2", b"pt": b"", b"po": b"", b"pe": b"", b"i": b"{}",
              b"e": b'{"x":1}'}
    message = parse_entry(b"5-0", fields)
    assert (message.counter, message.seq, message.copies, bytes(message.event)) == (7, 9, 2, b'{"x":1}')

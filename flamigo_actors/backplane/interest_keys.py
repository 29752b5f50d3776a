"""The interest-based backplane's Redis layout: channel names, scripts, messages, and the node seam.

A *channel* ``K`` is one unit of interest. Its keys all carry the same hash tag,
so on a Redis Cluster every command and script touches ONE slot:

* ``K``: a short stream (``XADD ... MAXLEN ~``) of the events written to it, what a
  process catches up from; and, under the same name, the *sharded* pub/sub channel
  (``SPUBLISH``/``SSUBSCRIBE``) that carries them live;
* ``K:c``: a counter taken by every event written to the channel (wanted or not):
  its values number the entries, so a process sees any gap and counts it;
* ``K:w``: "somebody listens": set (with :data:`WANT_TTL`, refreshed) by every process
  interested in ``K``. The publish script appends and publishes only while it exists,
  so a topic nobody listens to costs Redis an ``INCRBY`` and an ``EXISTS`` per batch, no memory.

One script call (:data:`PUBLISH`, :class:`PublishBatch`) writes a batch's events to the
channels of one slot (on one Redis server: to all their channels), each event's body
passed once. An entry is its counter ``c`` and one field ``m``, the live message's tail
(entries of an earlier version, one field each, are read too). Nothing is done per event to
keep keys alive: a listener's :data:`BASELINE` and its refresh (every third of
:data:`WANT_TTL`) give the stream and the counter :data:`TOPIC_TTL` again; a counter is
given it when created, a stream when its first entry creates it. So while somebody
listens the channel's keys never expire; once nobody does they go within
:data:`TOPIC_TTL` (a counter nobody listens to restarts from 1 then: nobody has a
position in it). A process away for longer than that finds its channels' counters
restarted (a ``reset``, logged) rather than a counted gap.

Channels of an app on ``<channel>`` (``FLAMIGO_REDIS_CHANNEL``):

* ``<channel>:t:{T}``: the concrete topic ``T`` (exact subscriptions to ``T``);
* ``<channel>:n:{N}``: the *namespace* ``N``, the first segment of topics of two or more
  segments (wildcard patterns whose first segment is ``N``, e.g. ``rooms/*``, ``rooms/*/typing``);
* ``<channel>:n:{*}``: every event (patterns beginning with ``*``, e.g. ``*``, ``*/typing``).

A recoverable topic's keys (``<channel>:rec:{T}:...``, ``backplane/recovery_redis.py``) share
the tag of its channel ``<channel>:t:{T}``, so one script writes history and channel at once.

Everything else here is pure: no greenlet, no bus. :class:`Nodes` is the one seam that knows
which Redis node holds a key; :class:`SingleNode` is the standalone server's,
:class:`~.interest_cluster.ClusterNodes` a Redis Cluster's (one node per master).
"""

from __future__ import annotations

from typing import Any, Protocol

from ..core.topics import WILDCARD
from .recovery_redis import HISTORY_LUA

__all__ = [
    "FIREHOSE",
    "PUBLISH",
    "PublishBatch",
    "RECOVER",
    "BASELINE",
    "TOPIC_TTL",
    "WANT_TTL",
    "Message",
    "Nodes",
    "SingleNode",
    "channel_of_pattern",
    "channels_of_topics",
    "message_tail",
    "parse_entry",
    "parse_message",
]

TOPIC_TTL = 3600
"""Seconds a channel's stream and counter live after the last listener marked it (or a counter
nobody listens to, after it was created)."""

WANT_TTL = 600
"""Seconds a channel's "somebody listens" key lives unless refreshed (every third of it)."""

FIREHOSE = WILDCARD
"""The namespace of patterns beginning with ``*``: every event is written to it."""

_APPEND = """
local function append(key, maxlen, ttl, c, tail)
  local id = redis.call('XADD', key, 'NOMKSTREAM', 'MAXLEN', '~', maxlen, '*', 'c', c, 'm', tail)
  if not id then
    id = redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', 'c', c, 'm', tail)
    redis.call('EXPIRE', key, ttl)
  end
  redis.call('SPUBLISH', key, id .. '\\n' .. c .. '\\n' .. tail)
end
"""
"""Lua defining ``append(key, maxlen, ttl, c, tail)``: a channel's entry ``c``/``m`` appended
(NOMKSTREAM: a stream has its TTL already; the entry that creates it sets it) and published
live as ``<id>\\n<c>\\n<tail>``. The start of :data:`PUBLISH` and of :data:`RECOVER`'s own part."""

# Writes a batch of events to their channels, in order. KEYS: three per channel (stream, counter,
# want). ARGV: maxlen, ttl, then per event: its count k of channels here, their k numbers (1-based,
# into KEYS by threes) and the message's tail (see message_tail). Per channel, once per batch:
# INCRBY its counter by its events (the TTL set when this creates it: the listeners' BASELINE and
# refresh keep it alive) and EXISTS its want key (a script runs alone: it cannot change meanwhile).
# Per event and wanted channel: append (above) with the entry's number.
PUBLISH = _APPEND + """
local ttl, argc = ARGV[2], #ARGV
local count, at = {}, {}
local i = 3
while i <= argc do
  local k = tonumber(ARGV[i])
  for j = i + 1, i + k do
    local ch = tonumber(ARGV[j])
    count[ch] = (count[ch] or 0) + 1
  end
  i = i + k + 2
end
for ch, n in pairs(count) do
  local c = redis.call('INCRBY', KEYS[3 * ch - 1], n)
  if c == n then redis.call('EXPIRE', KEYS[3 * ch - 1], ttl) end
  if redis.call('EXISTS', KEYS[3 * ch]) == 1 then at[ch] = c - n end
end
i = 3
while i <= argc do
  local k = tonumber(ARGV[i])
  local tail = ARGV[i + k + 1]
  for j = i + 1, i + k do
    local ch = tonumber(ARGV[j])
    local c = at[ch]
    if c then
      c = c + 1
      at[ch] = c
      append(KEYS[3 * ch - 2], ARGV[1], ttl, c, tail)
    end
  end
  i = i + k + 2
end
return 1
"""

# A recoverable topic's event: the recovery store's offset, epoch and history (as its own
# script, backplane/recovery_redis.py) and the topic's channel, in one step on one slot.
# KEYS: epoch, offset, history, stream, counter, want.
# ARGV: new epoch, doc, history length, history ttl, maxlen, ttl, tail head (origin, seq, copies,
# stream name: the tail up to the position), tail end (identity, event).
RECOVER = HISTORY_LUA + _APPEND + """local c = redis.call('INCR', KEYS[5])
if c == 1 then redis.call('EXPIRE', KEYS[5], ARGV[6]) end
if redis.call('EXISTS', KEYS[6]) == 1 then
  append(KEYS[4], ARGV[5], ARGV[6], c, ARGV[7] .. '\\n' .. offset .. '\\n' .. epoch .. '\\n' .. ARGV[8])
end
return {offset, epoch}
"""

# Interest in a channel begins (or goes on: the same script refreshes it): mark it wanted, keep
# its stream and counter alive another TTL, and return where it stands (counter, last id): every
# event written after this is appended and published, numbered from counter + 1.
# KEYS: stream, counter, want. ARGV: want ttl, ttl.
BASELINE = """
redis.call('SET', KEYS[3], '1', 'EX', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local id = '0-0'
if last[1] then id = last[1][1] end
return {tonumber(redis.call('GET', KEYS[2]) or '0'), id}
"""


def message_tail(origin: bytes, seq: int, copies: int, pt: bytes, po: Any, pe: Any, identity: bytes,
                 event: bytes) -> bytes:
    """What a channel's entry holds besides its counter (its ``m`` field; the live message is
    ``<id>\\n<counter>\\n`` and this): made once per event, whatever its count of channels."""
    return b"%s\n%d\n%d\n%s\n%s\n%s\n%s\n%s" % (origin, seq, copies, pt, _b(po), _b(pe), identity, event)


def _b(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


class PublishBatch:
    """Events to write with :data:`PUBLISH`, grouped into one script call per group of keys
    (``group_of``: :meth:`Nodes.script_group`; on one Redis server one call for the whole batch).
    Pure: the caller sends the calls, in order, each group's on its own node's pipeline."""

    __slots__ = ("group_of", "groups")

    def __init__(self, group_of: Any) -> None:
        self.group_of = group_of
        self.groups: dict[Any, tuple[list[str], dict[str, int], list[Any], list[int]]] = {}

    def add(self, names: list[str], tail: bytes) -> None:
        """One event, written to ``names`` (its channels), ``tail`` from :func:`message_tail`."""
        groups, group_of = self.groups, self.group_of
        numbers: dict[Any, list[int]] = {}
        for name in names:
            group = group_of(name)
            found = groups.get(group)
            if found is None:
                found = groups[group] = ([], {}, [], [0])
            keys, index, _, _ = found
            number = index.get(name)
            if number is None:
                number = index[name] = len(index) + 1
                keys += (name, f"{name}:c", f"{name}:w")
            numbers.setdefault(group, []).append(number)
        for group, mine in numbers.items():
            found = groups[group]
            found[2].extend((len(mine), *mine, tail))
            found[3][0] += len(mine)

    def calls(self) -> list[tuple[list[str], list[Any], int]]:
        """``(keys, per-event args, writes)`` of each script call (ARGV: maxlen, ttl, then the args;
        writes: events times their channels in the call); empties the batch."""
        calls = [(keys, argv, writes[0]) for keys, _, argv, writes in self.groups.values()]
        self.groups = {}
        return calls


def channel_of_pattern(channel: str, pattern: str) -> str:
    """The channel that carries every event ``pattern`` matches (see the module docstring)."""
    first, _, rest = pattern.partition("/")
    if first == WILDCARD:
        return f"{channel}:n:{{{FIREHOSE}}}"
    if WILDCARD in pattern.split("/"):
        return f"{channel}:n:{{{first}}}"
    return f"{channel}:t:{{{pattern}}}"


def channels_of_topics(channel: str, topics: tuple[str, ...]) -> list[str]:
    """Every channel an event with ``topics`` is written to, each once."""
    found: dict[str, None] = {}
    for topic in topics:
        found[f"{channel}:t:{{{topic}}}"] = None
        first, sep, _ = topic.partition("/")
        if sep:
            found[f"{channel}:n:{{{first}}}"] = None
    found[f"{channel}:n:{{{FIREHOSE}}}"] = None
    return list(found)


class Message:
    """One entry of a channel, from a live message or its stream."""

    __slots__ = ("id", "counter", "origin", "seq", "copies", "pt", "po", "pe", "identity", "event")

    def __init__(self, parts: list[Any]) -> None:
        (self.id, counter, self.origin, seq, copies, self.pt, self.po, self.pe,
         self.identity, self.event) = parts
        self.counter, self.seq, self.copies = int(counter), int(seq), int(copies)

    def stored_at(self) -> float:
        """Redis's clock (seconds) when it stored the entry (its id starts with it, in ms)."""
        return int(bytes(self.id).partition(b"-")[0]) / 1000


def parse_message(data: bytes) -> Message:
    """A live message (``SPUBLISH``'s payload, see :data:`PUBLISH`)."""
    return Message(data.split(b"\n", 9))


def parse_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> Message:
    """A stream entry (``XRANGE``): its counter and tail, or (written by an earlier version) one field each."""
    tail = fields.get(b"m")
    if tail is not None:
        return Message([entry_id, fields[b"c"], *tail.split(b"\n", 7)])
    return Message([entry_id, fields[b"c"], fields[b"o"], fields[b"s"], fields[b"n"], fields[b"pt"],
                    fields[b"po"], fields[b"pe"], fields[b"i"], fields[b"e"]])


class Nodes(Protocol):
    """Which Redis node holds a key: the only place a cluster client has to change."""

    def node_of(self, key: str) -> Any:
        """A hashable name of the node holding ``key``'s slot."""
        ...

    def script_group(self, key: str) -> Any:
        """Keys of one group may be written by one script: their slot on a cluster, anything on one server."""
        ...

    def client(self, node: Any) -> Any:
        """A redis-py client of ``node`` (pipelines, scripts, ``XRANGE``)."""
        ...

    def connection(self, node: Any) -> Any:
        """A raw connection to ``node`` for one reading greenlet (give it back with :meth:`release`)."""
        ...

    def release(self, node: Any, connection: Any, *, broken: bool = False) -> None:
        """Give back a connection from :meth:`connection`."""
        ...


class SingleNode:
    """One standalone Redis server (every key on it), reached through a :class:`~.link.RedisLink`."""

    def __init__(self, link: Any) -> None:
        self.link = link

    def node_of(self, key: str) -> Any:
        return None

    def script_group(self, key: str) -> Any:
        return None  # one server: a script may touch any key

    def client(self, node: Any) -> Any:
        return self.link.client

    def connection(self, node: Any) -> Any:
        return self.link.connection()

    def release(self, node: Any, connection: Any, *, broken: bool = False) -> None:
        self.link.release(connection, broken=broken)

"""The interest-based backplane's Redis layout: channel names, scripts, messages, and the node seam.

A *channel* ``K`` is one unit of interest. Its keys all carry the same hash tag,
so every command and script touches ONE slot (Redis Cluster ready):

* ``K``: a short stream (``XADD ... MAXLEN ~``) of the events written to it, what a
  process catches up from; and, under the same name, the *sharded* pub/sub channel
  (``SPUBLISH``/``SSUBSCRIBE``) that carries them live;
* ``K:c``: a counter taken by every event written to the channel (wanted or not):
  its values number the entries, so a process sees any gap and counts it;
* ``K:w``: "somebody listens": set (with :data:`WANT_TTL`, refreshed) by every process
  interested in ``K``. The publish script appends and publishes only while it exists,
  so a topic nobody listens to costs Redis one ``INCR``, no memory.

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
    "RECOVER",
    "BASELINE",
    "TOPIC_TTL",
    "WANT_TTL",
    "Message",
    "Nodes",
    "SingleNode",
    "channel_of_pattern",
    "channels_of_topics",
    "parse_entry",
    "parse_message",
]

TOPIC_TTL = 3600
"""Seconds a channel's stream and counter live after its last event."""

WANT_TTL = 600
"""Seconds a channel's "somebody listens" key lives unless refreshed (every third of it)."""

FIREHOSE = WILDCARD
"""The namespace of patterns beginning with ``*``: every event is written to it."""

# KEYS: stream, counter, want. ARGV: maxlen, ttl, origin, seq, copies, identity, event, pt, po, pe.
# The live message: id, counter, origin, seq, copies, pt, po, pe, identity, event, one per line
# (orjson escapes newlines: the last two never hold one).
PUBLISH = """
local c = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
if redis.call('EXISTS', KEYS[3]) == 0 then return c end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'c', c, 'o', ARGV[3], 's', ARGV[4],
  'n', ARGV[5], 'pt', ARGV[8], 'po', ARGV[9], 'pe', ARGV[10], 'i', ARGV[6], 'e', ARGV[7])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('SPUBLISH', KEYS[1], id .. '\\n' .. c .. '\\n' .. ARGV[3] .. '\\n' .. ARGV[4] .. '\\n' .. ARGV[5]
  .. '\\n' .. ARGV[8] .. '\\n' .. ARGV[9] .. '\\n' .. ARGV[10] .. '\\n' .. ARGV[6] .. '\\n' .. ARGV[7])
return c
"""

# A recoverable topic's event: the recovery store's offset, epoch and history (as its own
# script, backplane/recovery_redis.py) and the topic's channel, in one step on one slot.
# KEYS: epoch, offset, history, stream, counter, want.
# ARGV: new epoch, doc, history length, history ttl, maxlen, ttl, origin, seq, copies, identity, event, stream name.
RECOVER = HISTORY_LUA + """local c = redis.call('INCR', KEYS[5])
redis.call('EXPIRE', KEYS[5], ARGV[6])
if redis.call('EXISTS', KEYS[6]) == 1 then
  local id = redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'c', c, 'o', ARGV[7], 's', ARGV[8],
    'n', ARGV[9], 'pt', ARGV[12], 'po', offset, 'pe', epoch, 'i', ARGV[10], 'e', ARGV[11])
  redis.call('EXPIRE', KEYS[4], ARGV[6])
  redis.call('SPUBLISH', KEYS[4], id .. '\\n' .. c .. '\\n' .. ARGV[7] .. '\\n' .. ARGV[8] .. '\\n' .. ARGV[9]
    .. '\\n' .. ARGV[12] .. '\\n' .. offset .. '\\n' .. epoch .. '\\n' .. ARGV[10] .. '\\n' .. ARGV[11])
end
return {offset, epoch}
"""

# Interest in a channel begins: mark it wanted, and return where it stands (counter, last id):
# every event written after this is appended and published, numbered from counter + 1.
# KEYS: stream, counter, want. ARGV: want ttl.
BASELINE = """
redis.call('SET', KEYS[3], '1', 'EX', ARGV[1])
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local id = '0-0'
if last[1] then id = last[1][1] end
return {tonumber(redis.call('GET', KEYS[2]) or '0'), id}
"""


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
    """A stream entry (``XRANGE``)."""
    return Message([entry_id, fields[b"c"], fields[b"o"], fields[b"s"], fields[b"n"], fields[b"pt"],
                    fields[b"po"], fields[b"pe"], fields[b"i"], fields[b"e"]])


class Nodes(Protocol):
    """Which Redis node holds a key: the only place a cluster client has to change."""

    def node_of(self, key: str) -> Any:
        """A hashable name of the node holding ``key``'s slot."""
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

    def client(self, node: Any) -> Any:
        return self.link.client

    def connection(self, node: Any) -> Any:
        return self.link.connection()

    def release(self, node: Any, connection: Any, *, broken: bool = False) -> None:
        self.link.release(connection, broken=broken)

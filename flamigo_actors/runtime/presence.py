"""Presence: who is in a topic, tracked per connection, with coalesced join/leave diffs.

``track(topic, key, meta)`` records an *entry* for an *owner* (a connection
id, or ``None`` for the process itself: a view, the shell, a job);
``list(topic)`` answers ``{key: [meta, ...]}`` (one key may have several
entries: a user in two tabs). Every change is also a *diff* for the
*members* of the topic, the connections subscribed to its bus topic: they
receive ``{"topic": "presence:diff", "payload": {"stream": topic, "joins":
{key: [meta...]}, "leaves": {key: [meta...]}}}``. Every listed or diffed meta
carries ``"ref"``, unique per entry across processes and new at each track or
update (Phoenix's ``phx_ref``): a client removes the metas of the leaves by
ref and adds the joins it does not have yet, so a listing and diffs that
overlap (the join reply and the diff of that join) merge without duplicates.

Guarantees:

* **Coalesced.** Changes of one topic are gathered for ``FLAMIGO_PRESENCE_BATCH``
  (50 ms) and sent as one push per member per topic per window, encoded once:
  1,000 clients joining one room at once cost O(N) pushes, not O(N²). Within a
  window an entry that joins and leaves again cancels out. A topic with more
  than 1,000 members gets a longer window (:data:`PUSH_BUDGET`).
* **Opt-in per topic.** Nothing here is on the publish path; a topic nobody
  tracks costs nothing.
* **No zombies.** A connection's entries are untracked when it ends, however
  it ends (the extension calls :meth:`Presence.untrack_owner` from the
  connection's end hook, which runs once); :meth:`Presence.close` untracks
  what is left. A connection that has already ended cannot track.
* **Not recoverable.** Diffs take no stream offsets; after a reconnect a
  client asks for the list again (the demo's join reply carries it).

Across processes a :class:`PresenceStore` (the Redis one is
``backplane/presence_redis.py``) keeps every process's entries, carries the
locally originated diffs to the other processes and hands theirs back through
:meth:`Presence.receive_remote`; this module knows nothing of Redis, of the
wire format (it is given an encoder) or of connections (it is given a
``members(topic)`` function).

Failure behaviour: bad input (a pattern or malformed topic, an empty key, a
meta that is not JSON) raises at the call, nothing recorded; a member that
refuses a push (closing, too slow) is skipped, as for any push; a store error
never fails a local track (the store retries in its own greenlet).
"""

from __future__ import annotations

import builtins
import itertools
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import gevent

from ..core.identity import BackendIdentity, Identity
from ..core.topics import Topic

__all__ = ["DIFF_TOPIC", "Change", "Presence", "PresenceDiff", "PresenceHandle", "PresenceStore"]

_log = logging.getLogger("flamigo_actors.presence")

DIFF_TOPIC = "presence:diff"
"""The client topic of diff pushes."""

BACKEND = BackendIdentity("presence")

PUSH_BUDGET = 20_000
"""Diff pushes per second one topic may cost at most: a topic with more members than
``PUSH_BUDGET × FLAMIGO_PRESENCE_BATCH`` (1,000 with the defaults) gets a longer window,
``members / PUSH_BUDGET`` seconds (250 ms for 5,000 members), so that a join storm in a big
room does not spend the process on diff pushes."""

Change = tuple[str, str, Any]
"""One entry in a diff: ``(ref, key, meta)``; ``ref`` is unique per entry across processes."""

Members = Callable[[str], Iterable[Any]]
"""``members(topic)``: the subscribers (connections) to push a topic's diffs to; each has
``deliver(event, frame, identity, waiter) -> bool``."""

Encoder = Callable[[str, Any], bytes]
"""Encodes a push frame ``(client_topic, payload) -> bytes``."""


class PresenceStore(Protocol):
    """The cross-process part of presence (``backplane/presence_redis.py``)."""

    instance: str
    """This process's id in the store, unique per start (entries' refs begin with it)."""

    def changed(self, topic: str) -> None:
        """This process's entries of ``topic`` changed: write them (never blocks)."""
        ...

    def publish(self, topic: str, joins: list[Change], leaves: list[Change]) -> None:
        """Send a diff of this process's entries to the other processes (never blocks)."""
        ...

    def remote_entries(self, topic: str) -> list[tuple[str, Any]]:
        """``(key, meta)`` of every live other process's entries of ``topic``."""
        ...

    def close(self) -> None:
        """Remove this process's entries and stop (idempotent)."""
        ...


class PresenceDiff:
    """The event handed to a member with a diff push's frame (never published on the bus)."""

    __slots__ = ("topic", "payload")

    def __init__(self, topic: str, payload: dict[str, Any]) -> None:
        self.topic = topic
        self.payload = payload

    @property
    def topics(self) -> tuple[str, ...]:
        return (self.topic,)


class _Batch:
    """The changes of one topic in the current window: ``ref -> (key, meta)`` joined and left."""

    __slots__ = ("joins", "leaves")

    def __init__(self) -> None:
        self.joins: dict[str, tuple[str, Any]] = {}
        self.leaves: dict[str, tuple[str, Any]] = {}

    def add(self, joins: Iterable[Change], leaves: Iterable[Change]) -> None:
        for ref, key, meta in leaves:
            if self.joins.pop(ref, None) is None:  # joined within the window: cancels out
                self.leaves[ref] = (key, meta)
        for ref, key, meta in joins:
            self.joins[ref] = (key, meta)

    def lists(self) -> tuple[list[Change], list[Change]]:
        return ([(r, k, m) for r, (k, m) in self.joins.items()],
                [(r, k, m) for r, (k, m) in self.leaves.items()])


def _put_back(window: dict[str, _Batch], older: dict[str, _Batch]) -> None:
    """Put ``older`` batches back into ``window``, in front of the changes that arrived since."""
    for topic, batch in older.items():
        newer = window.get(topic)
        if newer is not None:
            batch.add(*newer.lists())
        window[topic] = batch


def _grouped(changes: dict[str, tuple[str, Any]]) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = {}
    for key, meta in changes.values():
        grouped.setdefault(key, []).append(meta)
    return grouped


class Presence:
    """Presence of one application (``flamigo.presence``; ``ctx.presence`` binds an owner).

    Args:
        members: the connections subscribed to a topic (see :data:`Members`).
        encode: builds the diff's push frame once per topic per window.
        batch: the coalescing window in seconds (``FLAMIGO_PRESENCE_BATCH``).
    """

    def __init__(self, members: Members, encode: Encoder, batch: float = 0.05) -> None:
        self.members = members
        self.encode = encode
        self.batch = batch
        self.store: PresenceStore | None = None
        self.instance = "local"
        self.pushes = 0
        """Diff pushes delivered to members (for tests and inspection)."""
        self.diffs = 0
        """Diff frames built (one per topic per window with changes and members)."""
        self._entries: dict[str, dict[str, tuple[str, Any]]] = {}  # topic -> ref -> (key, meta)
        self._owned: dict[str | None, set[tuple[str, str]]] = {}  # owner -> {(topic, ref)}
        self._pending: dict[str, _Batch] = {}  # to deliver to local members
        self._outgoing: dict[str, _Batch] = {}  # local changes, for the other processes
        self._flusher: gevent.Greenlet | None = None
        self._last_push: dict[str, float] = {}  # topic -> monotonic time of its last diff push
        self._closed = False
        self._ref_prefix = uuid.uuid4().hex[:8] + "."
        self._ref_counter = itertools.count(1)

    # -- the API ---------------------------------------------------------------

    def track(self, topic: str, key: str, meta: dict[str, Any] | None = None, *,
              owner: str | None = None) -> None:
        """Record ``key`` (with ``meta``) as present in ``topic`` for ``owner``.

        Tracking the same ``(topic, key)`` again for the same owner updates its meta.

        Raises:
            TopicError: ``topic`` is malformed; ValueError: a pattern, an empty key;
            TypeError: ``meta`` is not a JSON object; RuntimeError: presence is closed.
        """
        topic, key, meta = _checked(topic, key, meta)
        if self._closed:
            raise RuntimeError("presence is closed: the application shut down")
        ref = self._ref(owner, key)
        entries = self._entries.setdefault(topic, {})
        old = entries.get(ref)
        if old is not None and {k: v for k, v in old[1].items() if k != "ref"} == meta:
            return
        # Each entry's meta carries a "ref" unique across processes, new at each track or
        # update: a client merges a listing and diffs that overlap without duplicates.
        meta = {**meta, "ref": f"{self._ref_prefix}{next(self._ref_counter)}"}
        entries[ref] = (key, meta)
        self._owned.setdefault(owner, set()).add((topic, ref))
        self._changed(topic, [(ref, key, meta)], [(ref, key, old[1])] if old is not None else [])

    def update(self, topic: str, key: str, meta: dict[str, Any] | None = None, *,
               owner: str | None = None) -> None:
        """Replace the meta of an entry (members see it leave with the old meta and join with the new).

        Raises:
            KeyError: ``owner`` does not track ``key`` in ``topic``; see :meth:`track` for the rest.
        """
        topic, key, meta = _checked(topic, key, meta)
        if self._ref(owner, key) not in self._entries.get(topic, {}):
            raise KeyError(f"presence.update: {key!r} is not tracked in {topic!r} by this owner; track it first")
        self.track(topic, key, meta, owner=owner)

    def untrack(self, topic: str, key: str, *, owner: str | None = None) -> bool:
        """Remove ``owner``'s entry ``key`` from ``topic``; False when there was none."""
        ref = self._ref(owner, key)
        entries = self._entries.get(topic)
        old = entries.pop(ref, None) if entries is not None else None
        if old is None:
            return False
        if not entries:
            del self._entries[topic]
        owned = self._owned.get(owner)
        if owned is not None:
            owned.discard((topic, ref))
            if not owned:
                del self._owned[owner]
        self._changed(topic, [], [(ref, old[0], old[1])])
        return True

    def untrack_owner(self, owner: str | None) -> int:
        """Remove every entry of ``owner`` (a connection that ended); returns how many."""
        owned = self._owned.get(owner)
        if not owned:
            return 0
        removed = 0
        for topic, ref in sorted(owned):
            key = self._entries.get(topic, {}).get(ref, ("", None))[0]
            removed += self.untrack(topic, key, owner=owner)
        return removed

    def list(self, topic: str) -> dict[str, builtins.list[Any]]:
        """Who is in ``topic``: ``{key: [meta, ...]}``, every live process's entries included."""
        found = _grouped(self._entries.get(topic, {}))
        if self.store is not None:
            for key, meta in self.store.remote_entries(topic):
                found.setdefault(key, []).append(meta)
        return found

    def topics(self) -> builtins.list[str]:
        """The topics this process tracks entries in."""
        return sorted(self._entries)

    def entries_by_namespace(self) -> dict[str, int]:
        """This process's entries per topic namespace (the first segment: ``rooms`` of ``rooms/lobby``)."""
        counts: dict[str, int] = {}
        for topic, entries in self._entries.items():
            namespace = topic.split("/", 1)[0]
            counts[namespace] = counts.get(namespace, 0) + len(entries)
        return counts

    def local_entries(self, topic: str) -> dict[str, tuple[str, Any]]:
        """This process's entries of ``topic`` as ``ref -> (key, meta)`` (what the store writes)."""
        return dict(self._entries.get(topic, {}))

    def for_identity(self, identity: Identity | None) -> PresenceHandle:
        """The API bound to ``identity``: a connection's entries end with it."""
        return PresenceHandle(self, identity)

    # -- diffs -----------------------------------------------------------------

    def receive_remote(self, topic: str, joins: builtins.list[Change], leaves: builtins.list[Change]) -> None:
        """Another process's diff (from the store): delivered to this process's members."""
        if self._closed:
            return
        self._pending.setdefault(topic, _Batch()).add(joins, leaves)
        self._schedule()

    @staticmethod
    def _ref(owner: str | None, key: str) -> str:
        return f"{owner or '-'} {key}"  # unique in this process; diffs prefix the instance

    def _changed(self, topic: str, joins: builtins.list[Change], leaves: builtins.list[Change]) -> None:
        instance = self.instance
        joins = [(f"{instance} {r}", k, m) for r, k, m in joins]
        leaves = [(f"{instance} {r}", k, m) for r, k, m in leaves]
        self._pending.setdefault(topic, _Batch()).add(joins, leaves)
        if self.store is not None:
            self._outgoing.setdefault(topic, _Batch()).add(joins, leaves)
            self.store.changed(topic)
        self._schedule()

    def _schedule(self) -> None:
        flusher = self._flusher
        if flusher is None or flusher.dead:  # dead: killed before its window ended
            flusher = self._flusher = gevent.spawn_later(self.batch, self.flush)
            flusher.rawlink(self._flusher_ended)

    def _flusher_ended(self, flusher: gevent.Greenlet) -> None:
        # In the hub, once per window, however the flusher ended: killed before it ran, or
        # broken by an exception raised into it (a stray Timeout, GreenletExit). What it had
        # not sent is back in the window (see flush): the next window still goes out.
        if self._flusher is flusher:
            self._flusher = None
        if self._flusher is None and not self._closed and (self._pending or self._outgoing):
            self._schedule()

    def flush(self) -> None:
        """Send the window's diffs now (called by the timer; and at close).

        Nothing swapped out is lost: whatever was not sent when an exception (even a
        BaseException raised into the flusher) stops it goes back in front of the next
        window, which is scheduled (members may then hear the interrupted topic's diff
        twice; clients merge diffs by ``ref``, so a repeated join or leave changes nothing).
        """
        self._flusher = None
        pending, self._pending = self._pending, {}
        outgoing, self._outgoing = self._outgoing, {}
        try:
            store = self.store
            if store is not None:
                for topic, batch in builtins.list(outgoing.items()):
                    joins, leaves = batch.lists()
                    if joins or leaves:
                        try:
                            store.publish(topic, joins, leaves)
                        except Exception:  # noqa: BLE001 - kept for the next window; pushes go on
                            _log.exception("presence: publishing the diff of %s failed", topic)
                            continue
                    del outgoing[topic]
            for topic, batch in builtins.list(pending.items()):
                if batch.joins or batch.leaves:
                    try:
                        if not self._push(topic, batch):
                            continue  # held: its window has not ended yet
                    except Exception:  # noqa: BLE001 - one topic's failure must not lose the others'
                        _log.exception("presence: pushing the diff of %s failed", topic)
                del pending[topic]
        finally:
            # Held or unsent batches are older than what arrived meanwhile: first.
            _put_back(self._outgoing, outgoing)
            _put_back(self._pending, pending)
            if (pending or outgoing) and not self._closed:
                self._schedule()

    def _push(self, topic: str, batch: _Batch) -> bool:
        """Push the diff to the topic's members; False when the topic's window has not ended yet."""
        members = builtins.list(self.members(topic))
        if not members:
            self._last_push.pop(topic, None)
            return True
        now = time.monotonic()
        window = len(members) / PUSH_BUDGET
        if window > self.batch and not self._closed and now - self._last_push.get(topic, 0.0) < window:
            return False  # a big topic: its window grows with its members (see PUSH_BUDGET)
        self._last_push[topic] = now
        payload = {"stream": topic, "joins": _grouped(batch.joins), "leaves": _grouped(batch.leaves)}
        frame = self.encode(DIFF_TOPIC, payload)
        event = PresenceDiff(topic, payload)
        self.diffs += 1
        for member in members:
            if member.deliver(event, frame, BACKEND, None):
                self.pushes += 1
        return True

    def close(self) -> None:
        """Untrack everything left (leave diffs go out), then close the store (idempotent)."""
        if self._closed:
            return
        for owner in builtins.list(self._owned):
            self.untrack_owner(owner)
        self._closed = True
        if self._flusher is not None:
            self._flusher.kill(block=False)
        self.flush()
        if self.store is not None:
            self.store.close()

    def snapshot(self) -> dict[str, Any]:
        """Counters and sizes as plain data (for inspection)."""
        return {"instance": self.instance, "topics": len(self._entries),
                "entries": sum(len(e) for e in self._entries.values()),
                "diffs": self.diffs, "pushes": self.pushes}


class PresenceHandle:
    """Presence as one identity sees it (``ctx.presence``): a connection owns what it tracks.

    A websocket identity's entries are untracked when its connection ends; any other
    identity's (a view, the shell, a job) belong to the process until untracked.
    """

    __slots__ = ("presence", "identity", "owner")

    def __init__(self, presence: Presence, identity: Identity | None) -> None:
        self.presence = presence
        self.identity = identity
        self.owner: str | None = (
            getattr(identity, "conn_id", None) if getattr(identity, "type", None) == "websocket" else None
        )

    def _check_open(self) -> None:
        if self.owner is not None and getattr(self.identity, "state", None) == "closed":
            raise RuntimeError(f"connection {self.owner} has ended: it cannot track presence")

    def track(self, topic: str, key: str, meta: dict[str, Any] | None = None) -> None:
        """See :meth:`Presence.track`; raises RuntimeError when the connection has ended."""
        self._check_open()
        self.presence.track(topic, key, meta, owner=self.owner)

    def update(self, topic: str, key: str, meta: dict[str, Any] | None = None) -> None:
        """See :meth:`Presence.update`."""
        self._check_open()
        self.presence.update(topic, key, meta, owner=self.owner)

    def untrack(self, topic: str, key: str) -> bool:
        """See :meth:`Presence.untrack`."""
        return self.presence.untrack(topic, key, owner=self.owner)

    def list(self, topic: str) -> dict[str, builtins.list[Any]]:
        """See :meth:`Presence.list`."""
        return self.presence.list(topic)


def _checked(topic: str, key: str, meta: dict[str, Any] | None) -> tuple[str, str, dict[str, Any]]:
    parsed = Topic(topic)
    if parsed.is_pattern:
        raise ValueError(f"presence: {topic!r} is a pattern; track a concrete topic (rooms/lobby)")
    if not isinstance(key, str) or not key:
        raise ValueError(f"presence: the key must be a non-empty string, got {key!r}")
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise TypeError(f"presence: meta must be a dict (a JSON object), got {type(meta).__name__}")
    if "ref" in meta:
        raise ValueError('presence: "ref" is reserved in a meta (the entry\'s unique reference)')
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as err:
        raise TypeError(f"presence: meta must be JSON-serialisable: {err}") from None
    return str(parsed), key, meta

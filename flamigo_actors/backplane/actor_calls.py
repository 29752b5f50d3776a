"""Calls to domain actors owned by another process, over Redis streams.

Each process reads one **inbox** stream, ``{<channel>:node:<node id>}:inbox``:

* An entry has one field, ``m``, a JSON array (one field: less to pack and
  parse than one field per item). A call, appended to the *owner's* inbox:
  ``["c", call id, caller node, kind, key, method, args, kwargs, want reply,
  deadline (Unix ms)]``. Its reply is *published* on the caller's reply channel
  (:mod:`.reply_io`: a reply needs no durability, the caller is waiting), where it
  resolves the caller's future: ``["r", call id, true, value]`` or
  ``["r", call id, false, [type name, message, status, public message]]`` (a reply
  found in an inbox, from a process of an earlier version, is taken too).
* Writes go through a per-process outbox and one sender greenlet (``XADD ...
  MAXLEN ~``, pipelined when several wait); one reader greenlet per process
  ``XREAD BLOCK``s the inbox and hands calls to the local
  runtime's handler, which returns at once with a future; the reply is sent
  when that future settles (no greenlet per call).
* An inbox lives while its process refreshes its expiry; the inbox of a
  process that is gone expires (``inbox_ttl``), whoever still writes to it.

Guarantees and failures:

* **At-most-once**: a call is written once and never retried. The caller's
  future fails with :class:`~flamigo_actors.runtime.actor_errors.ActorUnavailable`
  when no reply came within the call's timeout (the owner may be gone; the call
  may or may not have run), and at once when Redis is unreachable or the link
  drops while the call waits (fail fast). A call read after its deadline is not
  run (its caller gave up on it already).
* Redis lost → every waiting call fails at once, new calls fail at once, the
  link reconnects with backoff (:class:`~flamigo_actors.backplane.link.RedisLink`),
  and calls work again once it is back. Local calls never touch this module.
* Arguments and replies are JSON (orjson); an argument that cannot be encoded
  raises ``TypeError`` in the caller before anything is sent; a reply that
  cannot be encoded fails the call with the owner's explanation. An exception
  crosses as (type name, message, status, public message) and is raised again
  on the caller's side as the same class when it is a known one (``errors``),
  else as :class:`RemoteActorError`.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import gevent
import orjson
from gevent.event import AsyncResult
from gevent.pool import Pool

from ..core.errors import FlamigoError, public_message, status_of
from ..runtime import actor_errors
from ..runtime.actor_errors import ActorTimeout, ActorUnavailable
from .inbox_io import InboxReader, InboxWriter, NodeWriters
from .link import RedisLink
from .reply_io import ReplySubscriber, replies_of

__all__ = ["RedisRemoteCalls", "RemoteActorError", "inbox_of"]

_log = logging.getLogger("flamigo_actors.actors.redis")

Handler = Callable[..., Any]  # (kind, key, method, args, kwargs, want_reply[, chain=])


def inbox_of(channel: str, node: str) -> str:
    """The Redis key of node ``node``'s inbox stream."""
    return f"{{{channel}:node:{node}}}:inbox"


class RemoteActorError(FlamigoError):
    """An exception raised by an actor in another process, of a class not known here."""

    def __init__(self, type_name: str, message: str, *, public: str | None, status: int | None) -> None:
        super().__init__(f"{type_name}: {message}", public=public, status=status)
        self.type_name = type_name


def _percentile_ms(ordered: list[float], q: float) -> float | None:
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3) if ordered else None


def encode_error(error: BaseException) -> list[Any]:
    """How an exception crosses: [type name, message, status, public message] (JSON)."""
    flamigo = isinstance(error, FlamigoError)
    return [type(error).__name__, str(error),
            status_of(error) if flamigo else None, public_message(error) if flamigo else None]


def reply_document(call_id: str, method: str, value: Any, error: BaseException | None) -> bytes:
    """A reply entry: ``["r", call id, true, value]`` or ``["r", call id, false, encoded error]``."""
    if error is None:
        try:
            return orjson.dumps(["r", call_id, True, value])
        except TypeError as err:
            error = TypeError(f"the reply of {method}() cannot cross processes ({err}): return JSON-able values")
    return orjson.dumps(["r", call_id, False, encode_error(error)])


def decode_error(errors: Mapping[str, type[FlamigoError]], encoded: Any, label: str,
                 stats: dict[str, int]) -> FlamigoError:
    """The exception a failed reply carries (ActorUnavailable when it cannot be read)."""
    try:
        type_name, message, status, public = encoded
    except (TypeError, ValueError) as err:
        stats["decode_errors"] += 1
        return ActorUnavailable(f"{label}: unreadable reply ({err})")
    return rebuild_error(errors, type_name, f"{message} (in {label})", public, status)


def when_settled(future: Any, pool: Pool, callback: Callable[[Any], None]) -> None:
    """``callback(future)`` once ``future`` settles: the runtime's futures of served calls
    at once in the settling greenlet (``settle_with``), its other futures and gevent's
    AsyncResult through the hub; any other future is waited for in a pooled greenlet."""
    settle_with = getattr(future, "settle_with", None)
    if settle_with is not None:
        settle_with(callback)
    elif hasattr(future, "add_done_callback"):
        future.add_done_callback(callback)
    elif hasattr(future, "rawlink"):
        future.rawlink(callback)
    else:
        pool.spawn(callback, future)


def outcome(future: Any) -> tuple[Any, BaseException | None]:
    """(value, None) or (None, error) of a settled future (``get`` returns at once)."""
    try:
        return future.get(), None
    except Exception as err:  # noqa: BLE001 - the caller's answer
        return None, err


def rebuild_error(errors: Mapping[str, type[FlamigoError]], type_name: str, message: str,
                  public: str | None, status: int | None) -> FlamigoError:
    """The caller's side of :func:`encode_error`: the same class when ``errors`` knows it."""
    cls = errors.get(type_name)
    if cls is None:
        return RemoteActorError(type_name, message, public=public, status=status)
    error = cls.__new__(cls)  # whatever its constructor takes: a FlamigoError layer
    FlamigoError.__init__(error, message, public=public, status=status)
    return error


class RedisRemoteCalls:
    """Remote calls through per-process inbox streams (see the module docstring).

    Args:
        link: the shared Redis link.
        node_id: this process's node id (the placement's).
        channel: prefix of the keys (``FLAMIGO_REDIS_CHANNEL``).
        future_factory: makes the future a call returns; it needs ``set(value)``
            and ``set_exception(error)`` (a ``gevent.event.AsyncResult`` by default).
        errors: exception classes (by name) rebuilt as themselves when an actor in
            another process raises them; must be :class:`FlamigoError` subclasses.
        maxlen: approximate entries an inbox keeps.
        batch: most entries per pipeline and per ``XREAD``.
        max_serving: greenlets waiting for futures that offer no done-callback; beyond, reading waits.
        inbox_ttl: seconds an inbox outlives its last refresh (its process gone).
        on_unreachable: ``on_unreachable(kind, key)`` after a call to that actor got no
            reply in time (e.g. the placement forgets the owner it remembered).
    """

    def __init__(self, link: RedisLink, node_id: str, *, channel: str = "flamigo",
                 future_factory: Callable[[], Any] = AsyncResult,
                 errors: Mapping[str, type[FlamigoError]] | None = None,
                 maxlen: int = 10_000, batch: int = 500, max_serving: int = 10_000,
                 inbox_ttl: float = 60.0,
                 on_unreachable: Callable[[str, str], None] | None = None) -> None:
        self.link = link
        self.node_id = node_id
        self.channel = channel
        self.inbox = inbox_of(channel, node_id)
        self.future_factory = future_factory
        self.errors: dict[str, type[FlamigoError]] = {
            name: getattr(actor_errors, name) for name in actor_errors.__all__}
        self.errors.update(errors or {})
        self.maxlen = maxlen
        self.batch = batch
        self.inbox_ttl = inbox_ttl
        self.on_unreachable = on_unreachable
        self.stats = {"sent": 0, "replied": 0, "timeouts": 0, "failed": 0, "served": 0,
                      "expired": 0, "decode_errors": 0, "deadlocks": 0}
        self.latencies: deque[float] = deque(maxlen=4096)
        """Seconds from sending to the reply, of the latest remote asks."""
        # (the prefix made once: a uuid4 per call cost a getrandom syscall and a UUID each)
        self._ids = map(f"{uuid.uuid4().hex[:8]}.{{}}".format, itertools.count(1))
        self._pending: dict[str, tuple[Any, Any, float, str]] = {}
        self._out: Any = NodeWriters(self) if link.cluster else InboxWriter(self)
        self._pool = Pool(max_serving)
        self._handler: Handler | None = None
        self._in = InboxReader(self)
        self._replies = ReplySubscriber(self)
        self._subscriber: gevent.Greenlet | None = None  # from the first ask on
        self._unsettled = 0  # calls read whose reply is not written yet
        self._closed = False
        # Started by serve() or the first call (replies to this node's calls arrive
        # through its inbox too): a process that never uses them holds no connection.
        self._reader: gevent.Greenlet | None = None
        self._sender: gevent.Greenlet | None = None
        link.when_down(self._fail_waiting)

    def start(self, *, wait: bool = False) -> None:
        """Start the inbox reader and the sender (idempotent; ``serve`` and ``call`` do it).

        ``wait``: until the reader knows where the inbox ends (at most ``socket_timeout``
        when Redis is up): an entry written from then on is read.
        """
        if self._reader is None and not self._closed:
            self._reader = gevent.spawn(self._in.run)
            self._sender = gevent.spawn(self._out.run)
        if wait and self.link.connected:
            self._in.positioned.wait(self.link.socket_timeout)

    @property
    def started(self) -> bool:
        """Whether the reader and sender run (they hold a Redis connection each)."""
        return self._reader is not None

    # -- the caller's side --------------------------------------------------------------

    def call(self, owner: str, kind: str, key: str, method: str, args: tuple, kwargs: dict,
             *, want_reply: bool, timeout: float, future: Any = None,
             chain: list[str] | None = None) -> Any:
        """Send ``method(*args, **kwargs)`` to actor (kind, key) on node ``owner``.

        Returns a future (``want_reply``: ``future``, or a new one), else None; it fails with
        ActorUnavailable after ``timeout`` s without a reply, or at once when Redis is
        unreachable. ``chain``: the actors waiting for the reply (the owner's cycle check).

        Raises:
            TypeError: an argument is not JSON-able (nothing was sent).
            ActorUnavailable: a ``tell`` while Redis is unreachable.
        """
        label = f"{kind}:{key}.{method}() on {owner}"
        call_id = next(self._ids)
        message = ["c", call_id, self.node_id, kind, key, method, args, kwargs,
                   want_reply, int((time.time() + timeout) * 1000)]
        if chain:
            message.append(chain)
        try:
            document = orjson.dumps(message)
        except TypeError as err:
            raise TypeError(f"the arguments of {label} cannot cross processes ({err}): pass "
                            "JSON-able values (lists, dicts, strings, numbers, booleans, None)") from None
        if self._closed or not self.link.connected:
            self.stats["failed"] += 1
            error = ActorUnavailable(f"{label}: Redis is unreachable ({self.link.last_error})"
                                     if not self._closed else f"{label}: remote calls are closed")
            if not want_reply:
                raise error
            if future is None:
                future = self.future_factory()
            future.set_exception(error)
            return future
        if self._reader is None:
            self.start()
        if want_reply:
            if self._subscriber is None:  # (the writer waits for the subscription)
                self._subscriber = gevent.spawn(self._replies.run)
            if future is None:
                future = self.future_factory()
            timer = gevent.get_hub().loop.timer(timeout)
            self._pending[call_id] = (future, timer, time.perf_counter(), label)
            timer.start(self._timed_out, call_id, timeout, kind, key)
        else:
            future = None
        self._out.put(inbox_of(self.channel, owner), document, call_id if want_reply else None)
        return future

    def _timed_out(self, call_id: str, timeout: float, kind: str, key: str) -> None:
        future, timer, _started, label = self._pending.pop(call_id, (None, None, 0.0, ""))
        if future is None:
            return
        timer.close()
        self.stats["timeouts"] += 1
        if self.on_unreachable is not None:
            self.on_unreachable(kind, key)
        future.set_exception(ActorTimeout(
            f"{label}: no reply within {timeout:g}s (the owner may be gone or overloaded; the call "
            "may or may not have run and is not retried)"))

    def _fail(self, call_id: Any, why: str) -> None:
        entry = self._pending.pop(call_id, None) if call_id else None
        self.stats["failed"] += 1
        if entry is not None:
            future, timer, _started, label = entry
            timer.close()
            future.set_exception(ActorUnavailable(f"{label}: {why} (the call may or may not have run)"))

    def _fail_waiting(self) -> None:
        """The link dropped: every queued or waiting call fails now rather than at its timeout."""
        why = f"lost Redis ({self.link.last_error})"
        for call_id in self._out.drop_all():
            self._fail(call_id, why)
        for call_id in list(self._pending):
            self._fail(call_id, why)

    def _resolve(self, reply: list[Any]) -> None:
        entry = self._pending.pop(reply[1], None)
        if entry is None:
            return  # timed out already, or a reply to a previous process with our node id
        future, timer, started, label = entry
        timer.close()
        self.stats["replied"] += 1
        self.latencies.append(time.perf_counter() - started)
        if reply[2] is True:
            future.set(reply[3])
        else:
            future.set_exception(decode_error(self.errors, reply[3], label, self.stats))

    # -- the owner's side -----------------------------------------------------------------

    def serve(self, handler: Handler) -> None:
        """Run the calls that other nodes send here through ``handler`` (until then they fail).

        ``handler(kind, key, method, args, kwargs, want_reply)`` returns a future (or None
        without reply); a call carrying a caller chain passes it as ``chain=``.
        Returns once the reader knows where the inbox ends (at most ``socket_timeout``
        when Redis is up): a call written before that would not be read.
        """
        if self._handler is not None:
            raise RuntimeError("already serving")
        self._handler = handler
        self.start(wait=True)

    def _receive(self, document: bytes) -> None:
        try:
            message = orjson.loads(document)
            if message[0] == "r":
                self._resolve(message)
                return
            _c, call_id, caller, kind, key, method, args, kwargs, want_reply, deadline = message[:10]
        except Exception as err:  # noqa: BLE001 - one bad entry must not stop the reader
            self.stats["decode_errors"] += 1
            _log.error("domain actors: unreadable entry in %s: %s: %s", self.inbox, type(err).__name__, err)
            return
        if deadline < time.time() * 1000:
            self.stats["expired"] += 1  # its caller gave up already: never run it late
            return
        reply_to = (caller, call_id, method) if want_reply else None
        if reply_to is not None:
            self._unsettled += 1
        try:
            if self._handler is None:
                raise ActorUnavailable(f"{kind}:{key}: {self.node_id} does not serve actor calls (yet)")
            if len(message) > 10:  # the chain of actors waiting for this reply
                future = self._handler(kind, key, method, tuple(args), kwargs, want_reply, chain=message[10])
            else:
                future = self._handler(kind, key, method, tuple(args), kwargs, want_reply)
        except Exception as err:  # noqa: BLE001 - the caller's answer
            if reply_to is None:
                _log.warning("domain actors: a remote tell to %s:%s failed here: %s: %s",
                             kind, key, type(err).__name__, err)
            else:
                self._reply(reply_to, error=err)
            return
        self.stats["served"] += 1
        if reply_to is None:
            return
        when_settled(future, self._pool, lambda done: self._reply(reply_to, *outcome(done)))

    def _reply(self, reply_to: tuple[str, str, str], value: Any = None, error: BaseException | None = None) -> None:
        self._unsettled -= 1
        caller, call_id, method = reply_to
        document = reply_document(call_id, method, value, error)
        target = replies_of(self.channel, caller)
        if self._in.collecting:  # the reader writes it with its next XREAD: one write, no answer
            self._in.replies.append((target, document))
        else:
            self._out.put(target, document, None, publish=True)

    # -- lifecycle ----------------------------------------------------------------------------

    def greenlets(self) -> list[gevent.Greenlet]:
        """Live greenlets: reader, sender and calls being served."""
        own = [g for g in (self._reader, self._sender, self._subscriber) if g is not None and not g.dead]
        return own + [g for g in self._pool if not g.dead]

    def close(self, timeout: float = 1.0) -> None:
        """Stop reading and writing; calls still waiting fail with ActorUnavailable (idempotent)."""
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        self._in.hand_over()  # replies the reader holds go out through the sender
        while self._out.pending and self.link.connected and self._sender is not None \
                and time.monotonic() < deadline:
            gevent.sleep(0.005)  # replies already computed still go out
        self._closed = True
        gevent.killall(self.greenlets(), block=True, timeout=max(0.1, deadline - time.monotonic()))
        for call_id in self._out.drop_all():
            self._fail(call_id, "remote calls closed")
        for call_id in list(self._pending):
            self._fail(call_id, "remote calls closed")

    def snapshot(self) -> dict[str, Any]:
        """Counters and latency of remote asks (for inspection)."""
        ordered = sorted(self.latencies)
        return {"inbox": self.inbox, "waiting": len(self._pending), "queued": self._out.pending,
                "serving": len(self._pool), "started": self.started, **self.stats,
                "p50_ms": _percentile_ms(ordered, 0.5), "p99_ms": _percentile_ms(ordered, 0.99)}

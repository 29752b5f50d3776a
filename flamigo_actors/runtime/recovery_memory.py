"""The embedded recovery store: streams and sessions in this process's memory.

Nothing to install; the default when no Redis is configured. Guarantees:
offsets consecutive from 1 per stream, assigned synchronously at publish (so
publish order is offset order); one random epoch per store start (a restarted
process answers ``epoch_mismatch``, never a silent ``recovered: true``); the
last ``history`` events per stream are kept, older ones are forgotten (a
resume from before them answers ``too_many``). Sessions live until
``ttl`` seconds after their last save. Everything is lost with the process:
recovery then works only with the Redis store.
"""

from __future__ import annotations

import time
from collections import deque

from .recovery import ReadResult, SessionData, new_epoch

__all__ = ["MemoryStore"]


class _Stream:
    __slots__ = ("offset", "entries")

    def __init__(self, history: int) -> None:
        self.offset = 0
        self.entries: deque[tuple[int, bytes]] = deque(maxlen=history)


class MemoryStore:
    """Streams and sessions in memory (see the module docstring).

    Args:
        history: events kept per stream.
    """

    assigns_locally = True

    def __init__(self, history: int = 1000) -> None:
        self.history = history
        self.epoch = new_epoch()
        self._streams: dict[str, _Stream] = {}
        self._sessions: dict[str, tuple[SessionData, float]] = {}

    def append(self, stream: str, doc: bytes) -> tuple[int, str]:
        """Append ``doc``; its ``(offset, epoch)``."""
        entry = self._streams.get(stream)
        if entry is None:
            entry = self._streams[stream] = _Stream(self.history)
        entry.offset += 1
        entry.entries.append((entry.offset, doc))
        return entry.offset, self.epoch

    def submit(self, stream: str, doc: bytes, event: object, identity: object, waiter: object) -> None:
        """Not used: this store assigns offsets locally."""
        raise NotImplementedError("MemoryStore assigns offsets locally: use append()")

    def claim(self, seq: int) -> None:
        """Nothing comes back through a backplane for this store."""
        return None

    def position(self, stream: str) -> tuple[int, str]:
        """The current ``(offset, epoch)``."""
        entry = self._streams.get(stream)
        return (entry.offset if entry is not None else 0), self.epoch

    def read(self, stream: str, after: int, epoch: str) -> ReadResult:
        """The events after ``after`` (see :class:`ReadResult`)."""
        entry = self._streams.get(stream)
        offset = entry.offset if entry is not None else 0
        if epoch != self.epoch or after > offset:
            return ReadResult("epoch_mismatch", [], offset, self.epoch)
        if after == offset or entry is None:
            return ReadResult(None, [], offset, self.epoch)
        entries = entry.entries
        if not entries or entries[0][0] > after + 1:
            return ReadResult("too_many", [], offset, self.epoch)
        return ReadResult(None, [e for e in entries if e[0] > after], offset, self.epoch)

    def load_session(self, key: str) -> SessionData | None:
        """The live session under ``key``, or None."""
        found = self._sessions.get(key)
        if found is None:
            return None
        if found[1] < time.monotonic():
            del self._sessions[key]
            return None
        return found[0]

    def save_session(self, session: SessionData, ttl: float) -> None:
        """Keep ``session`` for ``ttl`` seconds from now (and drop the expired ones)."""
        now = time.monotonic()
        if len(self._sessions) % 256 == 0:
            for key in [k for k, (_, until) in self._sessions.items() if until < now]:
                del self._sessions[key]
        self._sessions[session.key] = (session, now + ttl)

    def save_reply(self, session: SessionData, ack: str, reply: bytes, dropped: list[str], ttl: float) -> None:
        """Nothing to write: the session object is the stored one."""
        self.save_session(session, ttl)

    def close(self) -> None:
        """Nothing to release."""

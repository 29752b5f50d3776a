"""Where domain actors' snapshots are stored: the :class:`SnapshotStore` seam.

One process uses :class:`MemorySnapshotStore` (nothing to install); with the
Redis backplane configured, the extension passes a Redis store instead
(``flamigo_actors.backplane``), which this module never imports.

Snapshots are JSON (orjson) in every store, so what survives a restart in one
process is exactly what would survive a move to another process: a snapshot
that is not JSON-able fails ``persist()`` at once, in both.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from .actor_errors import StaleOwner

__all__ = ["MemorySnapshotStore", "SnapshotStore", "encode_snapshot"]


class SnapshotStore(Protocol):
    """Stores the newest snapshot of each (kind, key), fenced by lease tokens."""

    def load(self, kind: str, key: str) -> tuple[Any, int] | None:
        """The newest stored snapshot and the fence it was written with, or None."""

    def save(self, kind: str, key: str, state: Any, fence: int) -> None:
        """Store before returning. Raises StaleOwner if a newer fence has written (or holds the lease)."""


def encode_snapshot(kind: str, key: str, state: Any) -> bytes:
    """``state`` as JSON bytes; a clear error naming the actor when it is not JSON-able."""
    try:
        return orjson.dumps(state)
    except TypeError as err:
        raise TypeError(
            f"snapshot of {kind}:{key} is not JSON-able ({err}): return lists, dicts, "
            "strings, numbers, booleans or None from snapshot()"
        ) from None


class MemorySnapshotStore:
    """Snapshots in this process's memory (as JSON bytes: mutating the state later cannot change them)."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str], tuple[bytes, int]] = {}

    def load(self, kind: str, key: str) -> tuple[Any, int] | None:
        stored = self._data.get((kind, key))
        if stored is None:
            return None
        return orjson.loads(stored[0]), stored[1]

    def save(self, kind: str, key: str, state: Any, fence: int) -> None:
        stored = self._data.get((kind, key))
        if stored is not None and stored[1] > fence:
            raise StaleOwner(f"snapshot of {kind}:{key}: fence {fence} is older than {stored[1]}")
        self._data[(kind, key)] = (encode_snapshot(kind, key, state), fence)

    def delete(self, kind: str, key: str) -> None:
        """Forget the snapshot of (kind, key)."""
        self._data.pop((kind, key), None)

    def __len__(self) -> int:
        return len(self._data)

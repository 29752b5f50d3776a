"""The Pykka actor base every actor of this package builds on.

With gevent's monkey-patching, Pykka's :class:`pykka.ThreadingActor` already
runs each actor in a greenlet. This base keeps Pykka's actor loop, registry,
refs and futures, and swaps two internals for cheaper gevent-native ones:

* the inbox is a ``gevent.queue.SimpleQueue`` (compiled; a patched
  ``queue.Queue`` pays for three condition variables per actor);
* the loop runs in a plain ``gevent.spawn`` greenlet instead of a patched
  ``threading.Thread`` (no Thread object, no start handshake).

Both matter with ten thousand connection actors alive at once. Without
monkey-patching (``flask shell`` on an offline app) the stock threads are used.

The module also records which actor runs in the current greenlet, so that
``publish_sync`` can refuse to wait where waiting would deadlock.
"""

from __future__ import annotations

import contextvars
import time
import weakref
from typing import Any

import gevent
import gevent.queue
import pykka
from gevent import monkey

__all__ = ["FlamigoActor", "current_actor", "gevent_patched", "live_actor"]

_live: weakref.WeakValueDictionary[str, FlamigoActor] = weakref.WeakValueDictionary()

_current: contextvars.ContextVar[FlamigoActor | None] = contextvars.ContextVar(
    "flamigo_current_actor", default=None
)


def gevent_patched() -> bool:
    """Whether ``gevent.monkey.patch_all()`` (at least threading) is in effect."""
    return bool(monkey.is_module_patched("threading"))


def live_actor(urn: str) -> FlamigoActor | None:
    """The running :class:`FlamigoActor` with this URN (for inspection), if any."""
    return _live.get(urn)


def current_actor() -> FlamigoActor | None:
    """The actor whose mailbox is being processed in this greenlet, if any."""
    return _current.get()


class FlamigoActor(pykka.ThreadingActor):
    """A Pykka actor running in its own greenlet with a gevent inbox.

    Subclasses override :meth:`on_receive` (plain ``tell`` messages are the
    hot path: no proxy, no future) and may override :meth:`on_start` /
    :meth:`on_stop` (calling ``super()``).
    """

    kind: str = "actor"
    """A short label for inspection (``"connection"``, ``"bus"``, ``"listener"``)."""

    def __init__(self) -> None:
        self._patched = gevent_patched()
        super().__init__()
        self.started_at = time.time()
        _live[self.actor_urn] = self

    def _create_actor_inbox(self) -> Any:  # type: ignore[override]
        if self._patched:
            return gevent.queue.SimpleQueue()
        return super()._create_actor_inbox()

    def _start_actor_loop(self) -> None:
        if self._patched:
            gevent.spawn(self._actor_loop)
        else:
            super()._start_actor_loop()

    def on_start(self) -> None:
        _current.set(self)

    def _handle_receive(self, message: Any) -> Any:
        try:
            return super()._handle_receive(message)
        except gevent.Timeout as err:
            # gevent.Timeout is a BaseException: escaping here would make Pykka
            # stop *every* actor in the process. Make it an ordinary failure.
            raise RuntimeError(f"unhandled gevent.Timeout in {self}: {err}") from err
        except KeyboardInterrupt:
            raise  # the operator's: Pykka stops every actor, as it should
        except BaseException as err:  # noqa: BLE001 - SystemExit, GreenletExit...
            # Likewise: one actor's failure, never the whole process's.
            raise RuntimeError(f"unhandled {type(err).__name__} in {self}: {err}") from err

    def mailbox_depth(self) -> int:
        """Messages waiting in the inbox (not counting the one being handled)."""
        return self.actor_inbox.qsize()  # type: ignore[attr-defined,no-any-return]

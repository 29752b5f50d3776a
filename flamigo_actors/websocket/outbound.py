"""The single, bounded path from a connection to its socket.

Every frame a connection sends (replies, pushes, pings, pongs, the close
frame) goes through one :class:`Outbound`, so two sends never interleave.

The common case costs no greenlet switch: when nothing is pending, a frame is
written with a non-blocking send straight from the calling greenlet. Only when
the socket's buffer is full is the rest queued and a writer greenlet started;
it drains the queue and exits. While it runs, new frames queue behind it.

A connection's actor may *cork* the queue while it works through several
messages in a row (:meth:`Outbound.cork`): the frames it pushes meanwhile
are held, in order, and written together by :meth:`Outbound.uncork`, one
``send`` for the batch instead of one per frame (a pipelining client's
replies). Corked frames are never held past a yield to the hub: cork
schedules its own uncork as a hub callback, so a strategy that blocks lets
them go out first, and at most :data:`CORK_FRAMES` are held (the first
reply of a long drain does not wait for the last). They count toward the
bounds like queued frames.

The queue is bounded in frames and in bytes. A client that stops reading hits
the bound: the frame is refused, counted, and ``on_overflow`` is called (the
connection then closes with 1013). Nothing is dropped without a trace: every
frame is either written, or counted in :attr:`Outbound.refused` (never
queued) or :attr:`Outbound.dropped` (queued, then discarded).

The queue does not decide when a connection ends: it reports into the
connection's lifecycle through ``on_overflow`` (client too slow) and
``on_failure`` (socket failed), and the connection tells it to
:meth:`~Outbound.finish` (close frame, then tear down) or :meth:`~Outbound.stop`.
Its own ``closed`` is only the write gate: after the close frame, nothing more
may be written (RFC 6455 5.5.1).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import gevent

from .framing import Transport

__all__ = ["CORK_FRAMES", "Outbound"]

CORK_FRAMES = 16
"""Most frames a cork holds: the 16th is sent at once, with the 15 before it."""


class Outbound:
    """A bounded, ordered write queue in front of a :class:`Transport`.

    Args:
        transport: where frames go.
        max_messages: most frames waiting at once.
        max_bytes: most bytes waiting at once.
        on_overflow: called once when a frame would exceed a bound.
        on_failure: called once when the socket fails while writing.
    """

    __slots__ = (
        "_transport", "_queue", "_bytes", "_writer", "_close_when_drained", "_finished",
        "_last_queued", "_give_up", "_cork", "max_messages", "max_bytes", "on_overflow", "on_failure", "closed",
        "sent", "refused", "dropped",
    )

    def __init__(
        self,
        transport: Transport,
        *,
        max_messages: int,
        max_bytes: int,
        on_overflow: Callable[[], None],
        on_failure: Callable[[], None],
    ) -> None:
        self._transport = transport
        self._queue: deque[bytes | memoryview] = deque()
        self._bytes = 0
        self._writer: gevent.Greenlet | None = None
        self._close_when_drained = False
        self._finished = False
        self._last_queued = False  # the close frame is at the end of the queue
        self._give_up: gevent.Greenlet | None = None  # aborts a drain that takes too long
        self._cork: list[bytes] | None = None  # frames held by cork(), in order
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.on_overflow = on_overflow
        self.on_failure = on_failure
        self.closed = False
        self.sent = 0
        """Frames accepted: written, or queued behind others."""
        self.refused = 0
        """Frames refused: the connection was closing, or the queue was full."""
        self.dropped = 0
        """Frames accepted but never written whole (discarded for a slow client, or the socket failed)."""

    @property
    def depth(self) -> int:
        """Frames waiting to be written (queued, or held by :meth:`cork`)."""
        return len(self._queue) + (len(self._cork) if self._cork is not None else 0)

    @property
    def pending_bytes(self) -> int:
        """Bytes waiting to be written."""
        return self._bytes

    def push(self, frame: bytes) -> bool:
        """Send ``frame`` now or queue it; False when it was refused (closed or full)."""
        if self.closed:
            self.refused += 1
            return False
        cork = self._cork
        if self._writer is None and cork is None:
            try:
                written = self._transport.try_send(frame)
            except OSError:
                self.refused += 1
                self._fail()
                return False
            self.sent += 1
            if written < len(frame):
                self._write_later(memoryview(frame)[written:])
            return True
        held = len(self._queue) + (len(cork) if cork is not None else 0)
        if held >= self.max_messages or self._bytes + len(frame) > self.max_bytes:
            self.refused += 1
            self.closed = True
            self.on_overflow()
            return False
        self.sent += 1
        if cork is not None:
            cork.append(frame)
            self._bytes += len(frame)
            if len(cork) >= CORK_FRAMES:  # held long enough: the first waited for 15 more
                self.uncork()
        else:
            self._enqueue(frame)
        return True

    def cork(self) -> None:
        """Hold the frames pushed from now on until :meth:`uncork` (or the next yield to the hub)."""
        if self._cork is None and self._writer is None and not self.closed:
            self._cork = []
            gevent.get_hub().loop.run_callback(self.uncork)  # never held past a yield

    def uncork(self) -> None:
        """Write the frames held since :meth:`cork`, in one ``send`` (a no-op when not corked)."""
        frames = self._cork
        if frames is None:
            return
        self._cork = None
        if not frames:
            return
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        self._bytes -= len(data)
        if self.closed:  # stopped meanwhile (the peer is gone): never written
            self.dropped += len(frames)
            return
        try:
            written = self._transport.try_send(data)
        except OSError:
            self.dropped += len(frames)
            self._fail()
            return
        if written < len(data):
            self._write_later(memoryview(data)[written:])

    def _write_later(self, rest: memoryview) -> None:
        # The socket's buffer is full: a writer greenlet sends the rest (and what queues behind).
        self._enqueue(rest)
        self._writer = gevent.spawn(self._drain)

    def _enqueue(self, chunk: bytes | memoryview) -> None:
        self._queue.append(chunk)
        self._bytes += len(chunk)

    def _drain(self) -> None:
        queue = self._queue
        try:
            while queue:
                chunk = queue[0]
                self._transport.send_all(chunk)
                queue.popleft()
                self._bytes -= len(chunk)
        except OSError:
            self._fail()
        finally:
            self._writer = None
        if self._close_when_drained:
            self._transport.abort()

    def _fail(self) -> None:
        if self._cork is not None:
            self.dropped += len(self._cork)
            self._cork = None
        self.dropped += self._data_frames_queued()
        self._queue.clear()
        self._bytes = 0
        if not self.closed:
            self.closed = True
            self.on_failure()

    def _data_frames_queued(self) -> int:
        # The final close frame is not a message anyone was promised.
        return len(self._queue) - (1 if self._last_queued and self._queue else 0)

    def wait_drained(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) until the queued frames are written."""
        writer = self._writer
        if writer is not None:
            writer.join(timeout)

    def stop(self) -> None:
        """Refuse every frame from now on (the peer is gone); what is queued is left to fail."""
        self.closed = True
        if self._cork is not None:  # held frames will not be written: count them now
            self.dropped += len(self._cork)
            self._bytes -= sum(len(frame) for frame in self._cork)
            self._cork = None

    def release(self) -> None:
        """Cancel the drain time limit (the connection's cleanup ran)."""
        if self._give_up is not None:
            self._give_up.kill(block=False)
            self._give_up = None

    def finish(
        self, last_frame: bytes | None, *, flush: bool, drain_timeout: float | None = None
    ) -> bool:
        """Send ``last_frame`` (a close frame) and end the connection.

        With ``flush``, frames already queued are written first; without it
        (the client is too slow to wait for) they are discarded and counted.
        The socket is torn down once the last frame is out, or after
        ``drain_timeout`` seconds if the client does not read them. Calling it
        again only matters without ``flush``: it then stops waiting for the drain.

        Returns:
            True when frames are still draining (the socket ends later), False
            when the socket was torn down already.
        """
        draining = self._finish(last_frame, flush)
        if draining and drain_timeout is not None and self._give_up is None:
            # Do not wait for a stuck client forever.
            self._give_up = gevent.spawn_later(drain_timeout, self._transport.abort)
        return draining

    def _finish(self, last_frame: bytes | None, flush: bool) -> bool:
        if flush:
            self.uncork()  # held frames go before the close frame
        else:
            self._discard()
        if self._finished:
            if not flush:
                self._transport.abort()
            return self._writer is not None
        self._finished = True
        self.closed = True
        if self._writer is None and last_frame is not None:
            try:
                written = self._transport.try_send(last_frame)
            except OSError:
                written = len(last_frame)  # the peer is gone: nothing left to send
            if written < len(last_frame):
                # The socket is full: a half-sent close frame would corrupt the stream.
                self._enqueue(memoryview(last_frame)[written:])
                self._last_queued = True
                self._close_when_drained = True
                self._writer = gevent.spawn(self._drain)
                return True
        if self._writer is None:
            self._transport.abort()
            return False
        if last_frame is not None:
            self._enqueue(last_frame)
            self._last_queued = True
        self._close_when_drained = True
        return True

    def _discard(self) -> None:
        # Frames not started are dropped (and counted). The one the writer is in
        # the middle of is finished: cutting it would corrupt the stream and make
        # the close frame after it unreadable.
        if self._cork is not None:
            self.dropped += len(self._cork)
            self._cork = None
        queue = self._queue
        keep_is_last = self._last_queued and len(queue) == 1
        keep = queue.popleft() if self._writer is not None and queue else None
        self.dropped += self._data_frames_queued()
        queue.clear()
        self._last_queued = keep_is_last and keep is not None
        self._bytes = 0
        if keep is not None:
            self._enqueue(keep)

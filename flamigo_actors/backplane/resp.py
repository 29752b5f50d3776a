"""Redis's wire format (RESP) on a raw redis-py connection: commands written, replies read.

:func:`command` makes one command's bytes; :func:`command_head` makes all of it but its
last argument once, and :func:`with_last` splices that argument in per call;
:func:`write` sends bytes in one ``send`` when they fit.

:class:`RespReader` is the read side of the domain actors' latency path: the inbox
reader's ``XREAD`` answers (:mod:`.inbox_io`) and the reply subscriber's pub/sub
messages (:mod:`.reply_io`). It parses with ``bytes.find`` and slices over one buffer,
without redis-py's per-reply machinery (its buffered reader, its parser objects, its
connection checks): redis-py's pure-Python parser took more time per reply than
anything else on either side of a remote ask.

Guarantees and failures:

* It owns the connection's reading from its creation on: the connection's redis-py
  parser must hold no unread byte then (nothing was sent that it did not read), and
  it must not read on that connection afterwards. Writing (``send``) is unaffected.
* Replies come back as redis-py returns them without decoding: bulk and simple
  strings as ``bytes``, integers as ``int``, arrays (and RESP3 pushes and sets) as
  lists, RESP3 maps as dicts, nulls as ``None``.
* An error reply (``-ERR ...``) is raised as redis-py's exception for it
  (``parse_error``: ``ResponseError``, ``MovedError``, ...), the connection staying
  usable; an error nested in an array is returned as a value, as redis-py does.
* The socket's timeout passing → redis-py's ``TimeoutError`` (what was read stays
  buffered: a reader that expects silence may read on); the connection closed or
  failing → its ``ConnectionError``; bytes that are not RESP → ``ConnectionError``
  (the stream cannot be trusted further: the connection is to be dropped). All are
  link errors to :class:`~.link.RedisLink`.
"""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["RespReader", "command", "command_head", "with_last", "write"]

_CRLF = b"\r\n"
_READ_SIZE = 65536


def command(*args: Any) -> bytes:
    """One command in Redis's wire format (RESP): what redis-py's packer makes, without its per-call cost."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def command_head(*args: Any) -> bytes:
    """The bytes of command ``args`` plus one more argument, up to that argument
    (:func:`with_last` completes them): made once for a command sent many times."""
    return command(*args, "")[:-6]  # (the empty argument's own bytes: "$0\r\n\r\n")


def with_last(head: bytes, last: bytes) -> bytes:
    """The command :func:`command_head` began, with ``last`` as its last argument."""
    return b"%s$%d\r\n%s\r\n" % (head, len(last), last)


def write(conn: Any, data: bytes) -> None:
    """Write ``data`` on a raw redis-py connection: one ``send`` when it all fits (gevent's
    ``sendall``, which redis-py uses, asks the kernel for ``SO_SNDBUF`` on every call: a
    syscall more per message); redis-py writes what is left, and reports a failure its way
    (its ``ConnectionError``, the connection closed)."""
    sock = conn._sock
    if sock is not None:
        try:
            sent = sock.send(data)
        except OSError:
            sent = 0  # (redis-py's write below fails the same way, as redis-py's error)
        if sent == len(data):
            return
        data = data[sent:]
    conn.send_packed_command([data], check_health=False)


class _Incomplete(Exception):
    """The buffer ends inside a reply: read more."""


_INCOMPLETE = _Incomplete()


class RespReader:
    """The replies of one raw redis-py connection, read from its socket (see the module docstring)."""

    __slots__ = ("sock", "buf", "pos", "parse_error", "_closed_error", "timeout_error")

    timeout_error: type[Exception]
    """redis-py's ``TimeoutError``: what :meth:`read` raises when the socket's timeout passes
    (the bytes read so far stay buffered: reading again goes on where it stopped)."""

    def __init__(self, conn: Any) -> None:
        from redis.exceptions import ConnectionError, TimeoutError  # (redis-py is there: the link started)

        if conn._sock is None:
            conn.connect()
        self.sock = conn._sock
        self.buf = b""
        self.pos = 0
        self.parse_error = conn._parser.parse_error
        self._closed_error = ConnectionError
        self.timeout_error = TimeoutError

    @property
    def buffered(self) -> bool:
        """Whether bytes of a reply not returned yet are held here."""
        return self.pos < len(self.buf)

    def read(self) -> Any:
        """The next reply, waiting for it as long as the socket's timeout allows.

        Raises:
            redis.ResponseError (or a subclass): an error reply.
            redis.TimeoutError: nothing complete within the socket's timeout.
            redis.ConnectionError: the connection closed or failed, or not RESP.
        """
        while True:
            buf, pos = self.buf, self.pos
            if pos < len(buf):
                try:
                    value, pos = self._parse(buf, pos)
                except _Incomplete:
                    pass
                else:
                    if pos == len(buf):
                        self.buf, self.pos = b"", 0
                    else:
                        self.pos = pos
                    if isinstance(value, Exception):  # an error reply (a value inside an array)
                        raise value
                    return value
            self.fill()

    def fill(self) -> None:
        """Wait for more bytes (the socket's timeout), append them to the buffer."""
        try:  # (at least as much as is held: a long reply takes few reads and re-parses)
            data = self.sock.recv(max(_READ_SIZE, len(self.buf) - self.pos))
        except socket.timeout:
            raise self.timeout_error("Timeout reading from socket") from None
        except OSError as err:
            raise self._closed_error(f"Error while reading from socket: {err}") from None
        if not data:
            raise self._closed_error("Connection closed by server.")
        buf, pos = self.buf, self.pos
        self.buf, self.pos = (buf[pos:] + data if pos < len(buf) else data), 0

    def _parse(self, buf: bytes, pos: int) -> tuple[Any, int]:
        end = buf.find(_CRLF, pos)
        if end < 0:
            raise _INCOMPLETE
        kind = buf[pos]
        if kind == 36 or kind == 61:  # $ bulk string, = verbatim (RESP3)
            size = self._int(buf, pos, end)
            if size < 0:
                return None, end + 2
            start = end + 2
            stop = start + size
            if stop + 2 > len(buf):
                raise _INCOMPLETE
            return (buf[start:stop] if kind == 36 else buf[start + 4:stop]), stop + 2
        if kind == 42 or kind == 62 or kind == 126:  # * array, > push, ~ set
            count = self._int(buf, pos, end)
            if count < 0:
                return None, end + 2
            pos = end + 2
            items: list[Any] = []
            append, size_of = items.append, len(buf)
            for _ in range(count):
                if pos < size_of and buf[pos] == 36:  # a bulk string (most items): inline
                    end = buf.find(_CRLF, pos)
                    if end < 0:
                        raise _INCOMPLETE
                    size = self._int(buf, pos, end)
                    if size >= 0:
                        stop = end + 2 + size
                        if stop + 2 > size_of:
                            raise _INCOMPLETE
                        append(buf[end + 2:stop])
                        pos = stop + 2
                        continue
                value, pos = self._parse(buf, pos)
                append(value)
            return items, pos
        if kind == 43:  # + simple string
            return buf[pos + 1:end], end + 2
        if kind == 58 or kind == 40:  # : integer, ( big number
            return self._int(buf, pos, end), end + 2
        if kind == 45:  # - error
            return self.parse_error(buf[pos + 1:end].decode("utf-8", "replace")), end + 2
        if kind == 37 or kind == 124:  # % map, | attribute (RESP3)
            count = self._int(buf, pos, end)
            pos = end + 2
            pairs = {}
            for _ in range(count):
                name, pos = self._parse(buf, pos)
                value, pos = self._parse(buf, pos)
                pairs[name if name.__class__ is not list else tuple(name)] = value
            if kind == 124:  # an attribute precedes the reply it annotates: skip it
                return self._parse(buf, pos)
            return pairs, pos
        if kind == 95:  # _ null
            return None, end + 2
        if kind == 35:  # # boolean
            return buf[pos + 1:end] == b"t", end + 2
        if kind == 44:  # , double
            try:
                return float(buf[pos + 1:end]), end + 2
            except ValueError:
                raise self._closed_error(f"Protocol error: bad double {buf[pos:end][:40]!r}") from None
        if kind == 33:  # ! blob error
            size = self._int(buf, pos, end)
            stop = end + 2 + size
            if stop + 2 > len(buf):
                raise _INCOMPLETE
            return self.parse_error(buf[end + 2:stop].decode("utf-8", "replace")), stop + 2
        raise self._closed_error(f"Protocol error: unexpected reply {buf[pos:end][:40]!r}")

    def _int(self, buf: bytes, pos: int, end: int) -> int:
        try:
            return int(buf[pos + 1:end])
        except ValueError:
            raise self._closed_error(f"Protocol error: bad length {buf[pos:end][:40]!r}") from None


"""Reading a pub/sub connection's replies with little work per message.

Every event a hub fans out is first read from its pub/sub connection, one
at a time when publishes come one at a time. redis-py's generic path (a
readiness check with a timeout, then a layered parser) costs about as much
as the wait for the data itself, so a link reads its connection's socket
itself: one ``recv``, then every complete reply in what came, parsed by the
few lines below. Both RESP2 and RESP3 (whichever the connection speaks);
a reply of a type a subscribed connection never gets is an error, and the
link reconnects.

Connections without a socket of the operating system's (the embedded
broker's) are read through redis-py, as before.

:func:`read_answers` reads a command connection's replies the same way, for
``commands.py``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from redis._parsers import BaseParser
from redis.exceptions import ConnectionError, InvalidResponse

#: What a reader returns: the replies that came (none after a timeout, or with part of one).
ReadReplies = Callable[[], list[Any]]

_INCOMPLETE = object()
_AGGREGATES = frozenset(b"*>~")  # array, push (RESP3), set (RESP3)
_LINES = frozenset(b"+:#,(")  # simple string, integer; boolean, double, big number (RESP3)


def reader_for(connection: Any, timeout: float) -> ReadReplies:
    """A reader of ``connection``'s replies.

    Reading the connection's own socket waits as long as it takes (a
    ``shutdown`` of the socket ends the wait; ``links.py`` says why).
    Reading through redis-py (no socket: the embedded broker) waits at most
    ``timeout``.
    """
    sock = getattr(connection, "_sock", None)
    if isinstance(sock, socket.socket):
        sock.settimeout(None)
        return SocketReplies(sock).read

    def through_redis_py() -> list[Any]:
        if not connection.can_read(timeout=timeout):
            return []
        return [connection.read_response(disconnect_on_error=False, push_request=True)]

    return through_redis_py


class SocketReplies:
    """The replies arriving on one socket, parsed as they complete."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def read(self) -> list[Any]:
        """Every reply completed by one ``recv`` (none if it brought part of one).

        Raises ``ConnectionError`` when the connection ends, also by a
        ``shutdown`` of the socket from another thread while it waits.
        """
        data = self._sock.recv(65536)
        if not data:
            raise ConnectionError("Redis closed the connection")
        replies, self._buffer = _complete(self._buffer + data if self._buffer else data)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies


class Push(list[Any]):
    """A push message (RESP3): sent by the server unasked, not the reply to a command."""


def read_answers(sock: socket.socket, count: int) -> list[Any]:
    """The replies to the ``count`` commands just sent on ``sock``, in order.

    An error reply comes back as its exception (redis-py's class for it),
    not raised. Push messages are skipped: a command connection gets them
    only for features this package does not turn on (client-side caching,
    maintenance notifications of managed Redis services). Raises
    ``TimeoutError`` after the socket's timeout of silence, and
    ``redis.ConnectionError`` if Redis closes the connection or sends more
    than was asked.
    """
    answers: list[Any] = []
    buffer = b""
    while len(answers) < count or buffer:  # a push message begun is read to its end
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("Redis closed the connection")
        replies, buffer = _complete(buffer + data)
        for reply in replies:
            if isinstance(reply, Push):
                continue
            if len(answers) == count:
                raise ConnectionError(f"Redis sent more replies than commands: {reply!r:.60}")
            answers.append(reply)
    return answers


#: How every pub/sub message goes on after its first byte (``*`` in RESP2, ``>``
#: in RESP3): read by :func:`_message`, the path nearly all a link reads takes.
_MESSAGE = b"3\r\n$7\r\nmessage\r\n"


def _complete(buffer: bytes) -> tuple[list[Any], bytes]:
    """Every complete reply at the start of ``buffer``, and the rest (a reply still coming)."""
    replies = []
    position = 0
    while position < len(buffer):
        if buffer[position] in b"*>" and buffer.startswith(_MESSAGE, position + 1):
            reply, end = _message(buffer, position)
        else:
            reply, end = _parse(buffer, position)
        if reply is _INCOMPLETE:
            break
        replies.append(reply)
        position = end
    return replies, buffer[position:]


def _message(buffer: bytes, start: int) -> tuple[Any, int]:
    """:func:`_parse` of a pub/sub message: its two bulk strings read in a row."""
    after = start + 1 + len(_MESSAGE)
    parts = [b"message"]
    for _ in range(2):
        line_end = buffer.find(b"\r\n", after)
        if line_end < 0 or buffer[after] != 36:  # not yet all here, or not a $ bulk string
            return _parse(buffer, start)
        length = int(buffer[after + 1 : line_end])
        after = line_end + 2 + length
        if length < 0 or len(buffer) < after + 2:
            return _parse(buffer, start)
        parts.append(buffer[line_end + 2 : after])
        after += 2
    return (Push(parts) if buffer[start] == 62 else parts), after


def _parse(buffer: bytes, start: int) -> tuple[Any, int]:
    """The reply at ``start`` and where the next begins; ``_INCOMPLETE`` if it has not all come."""
    line_end = buffer.find(b"\r\n", start)
    if line_end < 0:
        return _INCOMPLETE, start
    kind = buffer[start]
    line = buffer[start + 1 : line_end]
    after = line_end + 2
    if kind == 36 or kind == 61:  # $ bulk string, = verbatim string (RESP3)
        length = int(line)
        if length < 0:
            return None, after
        if len(buffer) < after + length + 2:
            return _INCOMPLETE, start
        return buffer[after : after + length], after + length + 2
    if kind in _AGGREGATES or kind == 37:  # % map (RESP3): its keys and values in a row
        count = int(line) * (2 if kind == 37 else 1)
        items = []
        for _ in range(count):
            item, after = _parse(buffer, after)
            if item is _INCOMPLETE:
                return _INCOMPLETE, start
            items.append(item)
        return (Push(items) if kind == 62 else items), after
    if kind in _LINES:
        return line, after
    if kind == 45:  # - error
        return BaseParser.parse_error(line.decode("utf-8", "replace")), after  # type: ignore[no-untyped-call]
    if kind == 95:  # _ null (RESP3)
        return None, after
    raise InvalidResponse(f"Unexpected reply from Redis: {buffer[start:line_end][:40]!r}")

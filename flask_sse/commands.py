"""Sending the history script's calls on a pool's connection with little work per call.

A publish is one ``EVALSHA`` whose answer is two short values. redis-py's
command path (each argument through its encoder, a retry wrapper, its
observability hooks, a layered parser) was a quarter of a publish call's
user CPU: 132 us a call through it, 99 this way (see docs/performance.md).
So :class:`DirectCalls` borrows a connection from the pool as any command does
(the pool's checks for a fork and for a broken connection still apply),
sends the calls it is given, packed by :func:`pack`, in one write
(redis-py's ``send_packed_command``), reads as many replies with
``replies.py``'s parser, and gives the connection back.

Error replies come back as redis-py's exceptions (``NoScriptError``,
``ReadOnlyError``, ...), one per call; a timeout or a broken connection
raises ``redis.TimeoutError`` or ``redis.ConnectionError`` for all of them,
after closing the connection, since an answer may still be on its way.
Commands sent this way do not pass through redis-py's ``execute_command``,
so instrumentation that wraps it does not see them.

Only for connections with an operating system socket; the embedded broker's
(``memory://``) and Redis Cluster's clients use redis-py's path.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

import redis

from .replies import read_answers

#: What one argument of a command may be.
Argument = bytes | str | int


def pack(arguments: Sequence[Argument]) -> bytes:
    """One command as Redis reads it (RESP): an array of bulk strings, ``str`` as UTF-8."""
    parts = [b"*%d\r\n" % len(arguments)]
    for argument in arguments:
        if isinstance(argument, str):
            data = argument.encode()
        elif isinstance(argument, int):
            data = b"%d" % argument
        else:
            data = argument
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class DirectCalls:
    """Sends packed commands on a connection of ``pool`` and reads their replies itself."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool

    def send(self, commands: list[bytes]) -> list[Any] | None:
        """Each command's reply (an error reply as its exception), in order.

        ``None``, with nothing sent, if the pool's connections have no
        socket of the operating system's: use redis-py instead.
        """
        connection: Any = self._pool.get_connection()
        try:
            sock = getattr(connection, "_sock", None)
            if not isinstance(sock, socket.socket):
                return None
            connection.send_packed_command([b"".join(commands)], check_health=False)
            try:
                return read_answers(sock, len(commands))
            except BaseException as error:
                connection.disconnect()  # an answer may still come: out of step for good
                if isinstance(error, TimeoutError):
                    raise redis.TimeoutError(
                        "Timeout reading from Redis (it did not answer within the "
                        "socket_timeout of SSE_REDIS_URL)"
                    ) from error
                if isinstance(error, OSError):
                    raise redis.ConnectionError(f"Error talking to Redis: {error}") from error
                raise
        finally:
            self._pool.release(connection)

"""Sending the history script's calls on a connection of their own, with little work per call.

A publish is one ``EVALSHA`` whose answer is two short values. redis-py's
command path (each argument through its encoder, a retry wrapper, its
observability hooks, a layered parser) was a quarter of a publish call's
user CPU, and borrowing a connection from its pool (a fork check, a
readiness check of three system calls, its counters) as much again (see
docs/performance.md). So :class:`DirectCalls` keeps one connection of its
own, made by the pool's connection class with the pool's settings (the
URL's password, database, TLS, timeouts), writes the calls it is given,
packed by :func:`pack`, in one ``sendall``, and reads as many replies with
``replies.py``'s parser. Callers take turns on it, as on the pool.

Instead of checking a connection before each use, a call that finds it
closed (Redis restarted, an idle timeout, ``CLIENT KILL``) is sent once more
at once on a new connection. That is safe only for what is sent here: the
history script's calls, which Redis stores once per identity however often
they arrive.

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
import threading
from collections.abc import Sequence
from typing import Any

import redis

from .replies import read_answers

#: Seconds a command waits for its turn on a connection before it fails (the
#: registry's pool waits as long).
CONNECTION_WAIT = 20.0

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
    """Sends packed commands on a connection of its own, made with ``pool``'s settings,
    and reads their replies itself; :meth:`close` closes it."""

    def __init__(self, pool: redis.ConnectionPool, wait: float = CONNECTION_WAIT) -> None:
        self._pool = pool
        self._wait = wait
        self._turn = threading.Lock()  # one caller at a time on the connection
        self._connection: Any = None

    def send(self, commands: list[bytes]) -> list[Any] | None:
        """Each command's reply (an error reply as its exception), in order.

        ``None``, with nothing sent, if the pool's connections have no
        socket of the operating system's: use redis-py instead. Waits up to
        ``wait`` seconds for another caller's commands to be answered first.
        """
        if not self._turn.acquire(timeout=self._wait):
            raise redis.ConnectionError(
                f"No connection to Redis within {self._wait:g} s: other publishes held it"
            )
        try:
            reused = self._connection is not None
            sock = self._socket()
            if sock is None:
                return None
            data = b"".join(commands)
            try:
                return self._exchange(sock, data, len(commands))
            except redis.ConnectionError:
                if not reused:
                    raise
            sock = self._socket()  # found closed since its last use: once more, on a new one
            assert sock is not None
            return self._exchange(sock, data, len(commands))
        finally:
            self._turn.release()

    def close(self) -> None:
        """Close the connection (a later :meth:`send` opens another)."""
        with self._turn:
            self._disconnect()

    def _socket(self) -> socket.socket | None:
        """The connection's socket, connecting first if there is none; ``None`` if it has none."""
        if self._connection is None:
            connection = self._pool.connection_class(**self._pool.connection_kwargs)
            connection.connect()
            self._connection = connection
        sock = getattr(self._connection, "_sock", None)
        if not isinstance(sock, socket.socket):
            self._disconnect()
            return None
        return sock

    def _exchange(self, sock: socket.socket, data: bytes, count: int) -> list[Any]:
        """Write ``data`` and read ``count`` replies; on any failure, close the connection
        (an answer may still come: it is out of step for good) and raise redis-py's error."""
        try:
            sock.sendall(data)
            return read_answers(sock, count)
        except BaseException as error:
            self._disconnect()
            if isinstance(error, TimeoutError):
                raise redis.TimeoutError(
                    "Timeout talking to Redis (it did not answer within the "
                    "socket_timeout of SSE_REDIS_URL)"
                ) from error
            if isinstance(error, OSError):
                raise redis.ConnectionError(f"Error talking to Redis: {error}") from error
            raise

    def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.disconnect()

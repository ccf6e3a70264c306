"""The links' own reader of pub/sub replies: pieces of RESP2 and RESP3, and a real server."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.exceptions import ConnectionError, InvalidResponse, ResponseError

from flask_sse.replies import SocketReplies, reader_for

from .conftest import RedisServer
from .sse_client import wait_for


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, SocketReplies]]:
    """The server's end of a connection, and a reader of the client's end."""
    server, client = socket.socketpair()
    client.settimeout(0.2)
    with server, client:
        yield server, SocketReplies(client)


def read_all(server: socket.socket, reader: SocketReplies, data: bytes, piece: int) -> list[Any]:
    """What the reader makes of ``data`` sent ``piece`` bytes at a time."""
    replies = []
    for start in range(0, len(data), piece):
        server.sendall(data[start : start + piece])
        replies += reader.read()
    return replies


RESP2 = (
    b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$11\r\n{\"a\":\"\r\n\"}x\r\n"
    b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
    b"*3\r\n$7\r\nmessage\r\n:5\r\n$1\r\nx\r\n"  # not the usual shape: parsed the long way
)
RESP3 = (
    b">3\r\n$10\r\nssubscribe\r\n$4\r\nnews\r\n:1\r\n"
    b">3\r\n$8\r\nsmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n"
    b">3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\na\r\nbc\r\n"
    b"+PONG\r\n_\r\n%1\r\n+k\r\n#t\r\n"
)


@pytest.mark.parametrize("piece", [1, 2, 7, 1000])
def test_replies_split_anywhere_come_out_whole_and_in_order(
    pair: tuple[socket.socket, SocketReplies], piece: int
) -> None:
    server, reader = pair
    assert read_all(server, reader, RESP2 + RESP3, piece) == [
        [b"subscribe", b"news", b"1"],
        [b"message", b"news", b'{"a":"\r\n"}x'],  # a payload holding CRLF is taken by its length
        [b"pong", b""],
        [b"message", b"5", b"x"],
        [b"ssubscribe", b"news", b"1"],
        [b"smessage", b"news", b"hi"],
        [b"message", b"news", b"a\r\nbc"],
        b"PONG",
        None,
        [b"k", b"t"],
    ]


def test_a_closed_connection_is_an_error(pair: tuple[socket.socket, SocketReplies]) -> None:
    server, reader = pair
    server.close()
    with pytest.raises(ConnectionError):
        reader.read()


def test_a_shutdown_from_another_thread_ends_a_read_that_waits_without_a_timeout() -> None:
    """How a link's watchdog ends its reader's wait on a connection gone silent."""
    server, client = socket.socketpair()
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            SocketReplies(client).read()
        except BaseException as error:  # noqa: BLE001 - what the test looks at
            outcome.append(error)

    with server, client:
        reader = threading.Thread(target=read)
        reader.start()
        wait_for(lambda: _waiting_in_recv(reader), what="the reader to wait in recv")
        client.shutdown(socket.SHUT_RDWR)
        reader.join(5)
    assert not reader.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], ConnectionError)


def _waiting_in_recv(thread: threading.Thread) -> bool:
    frame = sys._current_frames().get(thread.ident or 0)
    return frame is not None and frame.f_code is SocketReplies.read.__code__


def test_an_error_reply_is_raised_as_redis_py_s_exception_and_an_unknown_reply_is_refused(
    pair: tuple[socket.socket, SocketReplies],
) -> None:
    server, reader = pair
    server.sendall(b"-NOAUTH Authentication required.\r\n")
    with pytest.raises(redis.exceptions.AuthenticationError, match="Authentication required"):
        reader.read()
    server.sendall(b"-ERR unknown command 'FOO'\r\n")
    with pytest.raises(ResponseError, match="unknown command"):
        reader.read()
    server.sendall(b"|1\r\n")  # a RESP3 attribute: never sent to a subscribed connection
    with pytest.raises(InvalidResponse, match="Unexpected reply"):
        reader.read()


@pytest.mark.parametrize("protocol", [2, 3])
def test_a_real_server_s_subscription_and_messages(redis_server: RedisServer, protocol: int) -> None:
    connection_class: Any = redis.Connection  # untyped in redis-py
    connection = connection_class(port=redis_server.port, protocol=protocol)
    connection.connect()
    try:
        read = reader_for(connection, 5)
        connection.send_command("SUBSCRIBE", "news")
        with redis_server.client() as publisher:
            assert read() == [[b"subscribe", b"news", b"1"]]
            publisher.publish("news", "line one\r\nline two")
            publisher.publish("news", b"x" * 100_000)  # more than one recv
            received: list[Any] = []
            while len(received) < 2:
                received += read()
        assert received == [
            [b"message", b"news", b"line one\r\nline two"],
            [b"message", b"news", b"x" * 100_000],
        ]
    finally:
        connection.disconnect()

"""DirectWriter: the hub's write straight to a sleeping stream's socket."""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Iterator

import pytest

from flask_sse import Message
from flask_sse.history import Position
from flask_sse.hub import Delivery, Subscription
from flask_sse.stream import DirectWriter


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    server.setblocking(False)
    yield server, client
    server.close()
    client.close()


def writer_for(
    server: socket.socket, positions: dict[str, Position], history: bool = True
) -> tuple[DirectWriter, Subscription]:
    subscription = Subscription(("news",), limit=10)
    writer = DirectWriter.for_stream(subscription, server, True, history, positions, 15, math.inf)
    assert writer is not None
    return writer, subscription


def delivery(data: str, position: str | None) -> Delivery:
    return Delivery("news", Message(data, id=position))


def read_all(client: socket.socket) -> bytes:
    client.setblocking(False)
    received = b""
    while True:
        try:
            piece = client.recv(1 << 20)
        except BlockingIOError:
            return received
        if not piece:
            return received
        received += piece


def test_writes_one_http_chunk_and_moves_the_position(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    positions = {"news": (1, 0)}
    writer, subscription = writer_for(server, positions)
    assert writer(delivery("hi", "5-0"))
    assert read_all(client) == b"10\r\ndata:hi\nid:5-0\n\n\r\n"
    assert positions == {"news": (5, 0)}
    assert subscription.due < math.inf


def test_skips_what_the_client_has_and_leaves_idless_events_to_the_stream(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    writer, _ = writer_for(server, {"news": (5, 0)})
    assert writer(delivery("old", "5-0"))  # handled: nothing to send
    assert not writer(delivery("raw publish", None))  # the stream renders it without id
    assert read_all(client) == b""


def test_without_history_ids_pass_through(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    writer, _ = writer_for(server, {"news": (0, 0)}, history=False)
    assert writer(delivery("x", "anything"))
    assert read_all(client) == b"14\r\ndata:x\nid:anything\n\n\r\n"


def test_a_full_socket_keeps_the_rest_for_the_stream(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    writer, subscription = writer_for(server, {"news": (0, 0)})
    filler = b"f" * 4096
    sent = 0
    while True:  # fill the socket
        try:
            sent += server.send(filler)
        except BlockingIOError:
            break
    client.setblocking(True)
    drained = client.recv(30_000, socket.MSG_WAITALL)  # room for part of the next event
    first, second = delivery("a" * 200_000, "1-0"), delivery("b", "2-0")
    assert writer(first)  # taken: part written, the rest kept
    assert writer.remainder and first.framed().endswith(writer.remainder)
    assert subscription._wakeup.is_set()  # the stream's greenlet must send the rest
    assert not writer(second)  # must wait behind the rest: queued, not written
    received = [drained]

    def read_rest() -> None:
        expected = sent + len(first.framed()) - len(drained)
        while expected:
            piece = client.recv(expected)
            received.append(piece)
            expected -= len(piece)

    reader = threading.Thread(target=read_rest)
    reader.start()
    server.setblocking(True)
    assert writer.flush(server)
    reader.join(10)
    assert b"".join(received) == b"f" * sent + first.framed()
    assert writer(second)  # all sent: the next one goes straight out again


def test_a_closed_client_is_noticed(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    writer, subscription = writer_for(server, {"news": (0, 0)})
    client.close()
    while not writer.broken:
        assert writer(delivery("x" * 1000, "9-0"))
    assert subscription._wakeup.is_set()
    assert not writer.flush(server)


def test_only_for_chunked_non_blocking_single_channel_streams(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    one = Subscription(("a",), 1)
    two = Subscription(("a", "b"), 1)
    positions = {"a": (0, 0), "b": (0, 0)}
    assert DirectWriter.for_stream(one, server, False, True, positions, 15, math.inf) is None
    assert DirectWriter.for_stream(two, server, True, True, positions, 15, math.inf) is None
    assert DirectWriter.for_stream(one, None, True, True, positions, 15, math.inf) is None
    assert DirectWriter.for_stream(one, client, True, True, positions, 15, math.inf) is None  # blocking

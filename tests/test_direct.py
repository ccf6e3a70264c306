"""DirectWriter: the hub's write straight to a sleeping stream's socket, and when it is used."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from gunicorn.http.wsgi import Response as GunicornResponse  # type: ignore[import-untyped]

from flask_sse import Message
from flask_sse.delivery import Delivery
from flask_sse.history import Position
from flask_sse.subscription import Subscription
from flask_sse.transport import DirectWriter, Transport, frame


class NoScheduler:
    def schedule(self, subscription: Subscription, when: float) -> None:
        pass


def subscription_of(*channels: str) -> Subscription:
    return Subscription(channels, 10, NoScheduler())


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
    subscription = subscription_of("news")
    return DirectWriter(subscription, server, history, positions), subscription


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
    assert writer.write(delivery("hi", "5-0"))
    assert read_all(client) == b"10\r\ndata:hi\nid:5-0\n\n\r\n"
    assert positions == {"news": (5, 0)}
    assert writer.last_write > 0  # no keepalive is due right after


def test_skips_what_the_client_has_and_leaves_idless_events_to_the_stream(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    writer, _ = writer_for(server, {"news": (5, 0)})
    assert not writer.write(delivery("old", "5-0"))  # not written: queued, the stream skips it
    assert not writer.write(delivery("raw publish", None))  # the stream renders it without id
    assert read_all(client) == b""


def test_without_history_ids_pass_through(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    writer, _ = writer_for(server, {"news": (0, 0)}, history=False)
    assert writer.write(delivery("x", "anything"))
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
    assert writer.write(first)  # taken: part written, the rest kept
    assert writer.remainder and frame(first.chunk).endswith(writer.remainder)
    assert subscription._wakeup.is_set()  # the stream's greenlet must send the rest
    assert not writer.write(second)  # must wait behind the rest: queued, not written
    received = [drained]

    def read_rest() -> None:
        expected = sent + len(frame(first.chunk)) - len(drained)
        while expected:
            piece = client.recv(expected)
            received.append(piece)
            expected -= len(piece)

    reader = threading.Thread(target=read_rest)
    reader.start()
    server.setblocking(True)
    assert writer.flush()
    reader.join(10)
    assert b"".join(received) == b"f" * sent + frame(first.chunk)
    assert writer.write(second)  # all sent: the next one goes straight out again


def test_a_closed_client_is_noticed(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    writer, subscription = writer_for(server, {"news": (0, 0)})
    client.close()
    while writer.write(delivery("x" * 1000, "9-0")):  # written until the socket breaks
        pass
    assert writer.broken
    assert subscription._wakeup.is_set()
    assert not writer.flush()


def served_by_gunicorn(sock: socket.socket, chunked: bool = True, sent: int = 10) -> Transport:
    """A transport whose response reached gunicorn's own ``start_response``."""
    server_response = GunicornResponse(None, sock, None)
    server_response.chunked = chunked
    server_response.sent = sent
    transport = Transport(sock)
    transport.offer_direct(server_response.start_response)
    return transport


def test_only_for_untouched_chunked_non_blocking_single_channel_streams(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    positions = {"a": (0, 0), "b": (0, 0)}
    one, two = subscription_of("a"), subscription_of("a", "b")
    assert served_by_gunicorn(server).direct_writer(one, True, positions, 10) is not None
    assert served_by_gunicorn(server).direct_writer(two, True, positions, 10) is None
    assert served_by_gunicorn(server, chunked=False).direct_writer(one, True, positions, 10) is None
    # gunicorn got fewer bytes than the stream yielded: something transforms the body
    assert served_by_gunicorn(server, sent=7).direct_writer(one, True, positions, 10) is None
    assert served_by_gunicorn(client).direct_writer(one, True, positions, 10) is None  # blocking
    not_gunicorn = Transport(server)
    not_gunicorn.offer_direct(lambda status, headers: None)  # a middleware's start_response
    assert not_gunicorn.direct_writer(one, True, positions, 10) is None

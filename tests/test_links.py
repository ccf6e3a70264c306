"""A link to a real Redis whose network goes silent: no FIN, no RST, nothing.

A cut cable or a dropped NAT entry looks like this. The link has to notice
by itself (its PING goes unanswered), reconnect, and have the hub replay
from history what was published meanwhile.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

from flask_sse import links
from flask_sse.registry import REDIS_TIMEOUT, history_for, hub_for
from flask_sse.subscription import Subscription

from .conftest import Gunicorn, RedisServer
from .sse_client import open_stream, wait_for


class CuttableRelay:
    """A TCP relay to a Redis server whose open connections can be cut.

    A cut connection stays open at both ends, and what either end sends is
    dropped, as on a broken network. Connections made after a cut pass.
    """

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut(self) -> None:
        """Drop everything sent on the connections open now, from now on."""
        with self._lock:
            for _, _, cut in self._open:
                cut.set()

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for client, upstream, _ in self._open:
                for sock in (client, upstream):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass  # the other end has closed it already
                    sock.close()
        for thread in self._threads:
            thread.join(5)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self._target_port))
            cut = threading.Event()
            with self._lock:
                self._open.append((client, upstream, cut))
            for source, sink in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pass, args=(source, sink, cut), daemon=True)
                self._threads.append(thread)
                thread.start()

    @staticmethod
    def _pass(source: socket.socket, sink: socket.socket, cut: threading.Event) -> None:
        while True:
            try:
                data = source.recv(65536)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                if not cut.is_set():
                    sink.sendall(data)
            except OSError:
                return  # closed


@pytest.fixture
def relay(redis_server: RedisServer) -> Iterator[CuttableRelay]:
    relay = CuttableRelay(redis_server.port)
    yield relay
    relay.close()


def _received(subscription: Subscription, into: list[str]) -> list[str]:
    for delivery in subscription.take():
        data = delivery.chunk.decode().split("data:", 1)[1].split("\n", 1)[0]
        into.append(data)
    return into


def test_a_link_whose_network_goes_silent_reconnects_and_replays_what_it_missed(
    relay: CuttableRelay, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(links, "PING_INTERVAL", 0.2)
    monkeypatch.setattr(links, "READ_TIMEOUT", 0.6)
    history = history_for(redis_server.url)

    def publish(data: str) -> None:
        history.publish("cut", json.dumps({"data": data}), 100, 60, f"cut-{data}")

    subscription, _ = hub_for(relay.url).subscribe(["cut"], 100)
    received: list[str] = []
    publish("before")
    wait_for(lambda: _received(subscription, received), what="the event before the cut")
    relay.cut()  # the hub's command connection (it read the channel's position) goes silent too
    with caplog.at_level(logging.WARNING, logger="flask_sse"):
        publish("during 1")
        publish("during 2")
        wait_for(  # within the command connections' timeout: the replay did not wait it out
            lambda: "during 2" in _received(subscription, received), timeout=REDIS_TIMEOUT - 1,
            what="the events published while the link was cut",
        )
    assert received == ["before", "during 1", "during 2"]
    assert "no answer to PING for 1 s" in caplog.text


@pytest.mark.parametrize("gunicorn", ["gevent", "parking"], indirect=True)
def test_a_served_stream_gets_what_was_published_while_its_worker_s_link_was_cut(
    gunicorn: Callable[..., Gunicorn], relay: CuttableRelay, redis_server: RedisServer,
) -> None:
    """The same under gunicorn's gevent workers, where the link's threads are greenlets."""
    server = gunicorn(relay.url, TEST_PING_INTERVAL=0.2)
    channel = f"served-cut-{uuid.uuid4()}"  # a publish's identity is remembered with its channel
    stream = open_stream(server, f"channel={channel}")
    history = history_for(redis_server.url)

    def publish(data: str) -> None:
        history.publish(channel, json.dumps({"data": data}), 100, 60, f"{channel}-{data}")

    publish("before")
    assert stream.next_event().data == "before"
    relay.cut()
    publish("during 1")
    publish("during 2")
    assert [stream.next_event().data for _ in range(2)] == ["during 1", "during 2"]
    stream.close()

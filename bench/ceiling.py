"""The ceiling: the least a gevent process can do for the same job.

One pub/sub connection, read with one ``recv`` and a minimal parse of what
came (``flask_sse.replies.SocketReplies``, the parser this project's links
use), each message framed once (SSE event inside an HTTP chunk) and the
same bytes written to every open socket of its channel from one greenlet;
a ``POST /publish?channel=C`` that publishes to Redis. A channel is
subscribed when its first stream opens, and the stream's headers are sent
once Redis has confirmed it. No Flask, no WSGI, no per-client queue, no
history. Run as ``python -m bench.ceiling PORT REDIS_URL``.

Its sockets get ``TCP_NODELAY``, as the other servers' do (``bench.servers``):
without it Nagle's algorithm coalesces writes and halves the cost of a
delivery at saturation, for any server. ``BENCH_SSE_TCP_NODELAY=false``
leaves it off, as ``python -m bench --nagle`` does for every server.
"""

from __future__ import annotations

from gevent import monkey  # type: ignore[import-untyped]

monkey.patch_all()

import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from urllib.parse import parse_qs, urlsplit  # noqa: E402

import gevent  # noqa: E402
import redis  # noqa: E402
from gevent.event import Event  # type: ignore[import-untyped]  # noqa: E402
from gevent.server import StreamServer  # type: ignore[import-untyped]  # noqa: E402

from flask_sse.commands import pack  # noqa: E402
from flask_sse.replies import SocketReplies  # noqa: E402

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
NODELAY = os.environ.get("BENCH_SSE_TCP_NODELAY", "true") != "false"


class Channels:
    """The open streams of each channel, and the one pub/sub connection that feeds them."""

    def __init__(self, url: str) -> None:
        options = redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
        self.pubsub = socket.create_connection((options.get("host", "127.0.0.1"), options["port"]))
        self.streams: dict[str, set[socket.socket]] = {}
        self.subscribed: dict[str, Event] = {}

    def open(self, channel: str, client: socket.socket) -> None:
        """Add ``client`` to ``channel``, once Redis has confirmed the channel's SUBSCRIBE."""
        confirmed = self.subscribed.get(channel)
        if confirmed is None:
            confirmed = self.subscribed[channel] = Event()
            self.pubsub.sendall(pack(["SUBSCRIBE", channel]))
        confirmed.wait()
        self.streams.setdefault(channel, set()).add(client)

    def close(self, channel: str, client: socket.socket) -> None:
        self.streams.get(channel, set()).discard(client)

    def fan_out(self) -> None:
        read = SocketReplies(self.pubsub).read
        while True:
            for kind, name, body in read():
                channel = name.decode()
                if kind == b"subscribe":
                    self.subscribed[channel].set()
                    continue
                event = b"data:" + body + b"\n\n"
                chunk = b"%X\r\n%s\r\n" % (len(event), event)
                for client in tuple(self.streams.get(channel, ())):
                    try:
                        client.sendall(chunk)
                    except OSError:
                        self.close(channel, client)


def serve(url: str, channels: Channels) -> StreamServer:
    publisher = redis.Redis.from_url(url)

    def handle(client: socket.socket, address: object) -> None:
        # the socket option the other servers' streams have: equal packets for every server
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(NODELAY))
        reader = client.makefile("rb")
        while request_line := reader.readline():
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            target = urlsplit(request_line.split()[1].decode())
            channel = parse_qs(target.query).get("channel", ["bench"])[0]
            if target.path == "/stream":
                channels.open(channel, client)
                client.sendall(HEAD)
                try:
                    while reader.read(4096):
                        pass
                finally:
                    channels.close(channel, client)
                return
            body = reader.read(length)
            publisher.publish(channel, body)
            client.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")

    return StreamServer(("127.0.0.1", int(sys.argv[1])), handle, backlog=4096)


if __name__ == "__main__":
    channels = Channels(sys.argv[2])
    gevent.spawn(channels.fan_out)
    server = serve(sys.argv[2], channels)
    gevent.signal_handler(signal.SIGINT, server.close)
    server.serve_forever()

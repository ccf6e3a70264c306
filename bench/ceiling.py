"""The ceiling: the least a gevent process can do for the same job.

One pub/sub connection, each message framed once (SSE event inside an HTTP
chunk) and the same bytes written to every open socket from one greenlet; a
``POST /publish`` that publishes to Redis. No Flask, no WSGI, no per-client
queue. Run as ``python -m bench.ceiling PORT REDIS_URL``.

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

import gevent  # noqa: E402
import redis  # noqa: E402
from gevent.server import StreamServer  # type: ignore[import-untyped]  # noqa: E402

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
subscribers: set[socket.socket] = set()
NODELAY = os.environ.get("BENCH_SSE_TCP_NODELAY", "true") != "false"


def fan_out(url: str) -> None:
    pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe("bench")
    for message in pubsub.listen():
        event = b"data:" + message["data"] + b"\n\n"
        chunk = b"%X\r\n%s\r\n" % (len(event), event)
        for client in tuple(subscribers):
            try:
                client.sendall(chunk)
            except OSError:
                subscribers.discard(client)


def serve(url: str) -> StreamServer:
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
            if request_line.startswith(b"GET /stream"):
                client.sendall(HEAD)
                subscribers.add(client)
                try:
                    while reader.read(4096):
                        pass
                finally:
                    subscribers.discard(client)
                return
            body = reader.read(length)
            publisher.publish("bench", body)
            client.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")

    return StreamServer(("127.0.0.1", int(sys.argv[1])), handle, backlog=4096)


if __name__ == "__main__":
    gevent.spawn(fan_out, sys.argv[2])
    server = serve(sys.argv[2])
    gevent.signal_handler(signal.SIGINT, server.close)
    server.serve_forever()

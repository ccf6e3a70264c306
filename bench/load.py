"""The load generator: raw-socket SSE subscribers in one asyncio process, and the publisher.

A subscriber counts the events it reads and checks their order by the
sequence numbers ``bench.publish`` puts in their data; the tally of a
scenario adds up what all of them received and when.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import redis

from .servers import ROOT, Server, cpu_seconds, open_sockets

#: Sockets a server may hold with no stream open (listener, Redis, a publisher's).
SETTLED_SOCKETS = 50

EVENT = re.compile(rb"data: ?(\d+) (\d+\.\d+)")


@dataclass
class Tally:
    """What all subscribers of one scenario received."""

    expected: int = 0  # deliveries to wait for in the current phase
    delivered: int = 0
    latencies: list[float] = field(default_factory=list)
    record_latency: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    connected: int = 0
    #: status lines of the streams the server refused (connect gives up at the first)
    refused: list[bytes] = field(default_factory=list)


class Subscriber(asyncio.Protocol):
    """One SSE client on a raw socket: counts events, checks their order.

    On one of K channels it expects every K-th seq, from its channel's number.
    """

    def __init__(self, tally: Tally, channel: str, step: int = 1, first: int = 0) -> None:
        self.tally = tally
        self.request = (
            b"GET /stream?channel=%s HTTP/1.1\r\nHost: bench\r\n"
            b"Accept: text/event-stream\r\n\r\n" % channel.encode()
        )
        self.buffer = b""
        self.headers_done = False
        self.count = 0
        self.step = step
        self.last = first - step
        self.out_of_order = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        if not self.headers_done:
            head, separator, buffer = buffer.partition(b"\r\n\r\n")
            if not separator:
                self.buffer = head
                return
            if not head.startswith(b"HTTP/1.1 200"):
                self.tally.refused.append(head.partition(b"\r\n")[0])
                assert self.transport is not None
                self.transport.close()
                return
            self.headers_done = True
            self.tally.connected += 1
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self.buffer = buffer
            return
        region, self.buffer = buffer[:end], buffer[end + 2 :]
        events = region.count(b"data:")
        if not events:
            return
        start = region.rfind(b"data:") + 5
        start += region[start : start + 1] == b" "  # nchan writes "data: "
        seq = int(region[start : region.index(b" ", start)])
        if seq != self.last + events * self.step:
            self.out_of_order += 1
        self.last = seq
        self.count += events
        tally = self.tally
        if tally.record_latency:
            now = time.time()
            tally.latencies.extend(now - float(match[2]) for match in EVENT.finditer(region))
        tally.delivered += events
        if tally.delivered >= tally.expected:
            tally.done.set()


async def connect(
    port: int, count: int, tally: Tally, admin: redis.Redis, channels: int = 0
) -> list[Subscriber]:
    """Open ``count`` streams; return once the server has subscribed them all.

    ``channels``: stream k listens on ``c<k % channels>`` (else all on ``bench``).
    flask-sse 1.0.0 sends no byte (not even headers) before the first event,
    so for it "subscribed" is read from Redis: one subscription per stream.
    """
    loop = asyncio.get_running_loop()
    if channels:
        subscribers = [
            Subscriber(tally, f"c{k % channels}", step=channels, first=k % channels)
            for k in range(count)
        ]
    else:
        subscribers = [Subscriber(tally, "bench") for _ in range(count)]
    gate = asyncio.Semaphore(400)

    async def open_one(subscriber: Subscriber) -> None:
        async with gate:
            await loop.create_connection(lambda: subscriber, "127.0.0.1", port)

    subscribed_before = admin.pubsub_numsub("bench")[0][1]  # flask-sse 1.0.0 leaks closed ones
    await asyncio.gather(*(open_one(subscriber) for subscriber in subscribers))
    deadline = time.monotonic() + 120
    while (
        tally.connected < count and admin.pubsub_numsub("bench")[0][1] < subscribed_before + count
    ):
        if tally.refused:
            raise RuntimeError(f"{len(tally.refused)} streams refused: {tally.refused[0]!r}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {tally.connected} of {count} streams opened")
        await asyncio.sleep(0.05)
    return subscribers


async def publish(
    port: int, count: int, rate: float, first: int = 0, channels: int = 0, connections: int = 1
) -> None:
    """``bench.publish`` in a process of its own (see there)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.publish",
        str(port),
        str(count),
        str(rate),
        str(first),
        f"--channels={channels}",
        f"--connections={connections}",
        cwd=ROOT,
    )
    if await process.wait():
        raise RuntimeError("the publisher failed")


async def deliver(
    server: Server,
    subscribers: list[Subscriber],
    count: int,
    rate: float,
    first: int = 0,
    timeout: float = 180,
    *,
    publish_to: Server | None = None,
    channels: int = 0,
    connections: int = 1,
    watch: Mapping[str, int] | None = None,
) -> dict[str, float]:
    """Publish ``count`` events and wait until every subscriber has them.

    The events go to ``publish_to`` (else ``server``); the figures are the
    elapsed time, the deliveries and ``server``'s CPU seconds ("cpu"), and
    those of each process in ``watch`` ("cpu <name>").
    """
    tally = subscribers[0].tally
    per_stream = count // channels if channels else count
    tally.expected = tally.delivered + per_stream * len(subscribers)
    tally.done.clear()
    pids = {"cpu": server.pid, **{f"cpu {name}": pid for name, pid in (watch or {}).items()}}
    cpu_before, started = {key: cpu_seconds(pid) for key, pid in pids.items()}, time.perf_counter()
    port = (publish_to or server).port
    publishing = asyncio.ensure_future(publish(port, count, rate, first, channels, connections))
    try:
        await asyncio.wait_for(tally.done.wait(), timeout)
    except TimeoutError:
        pass
    elapsed = time.perf_counter() - started
    cpu = {key: cpu_seconds(pid) - cpu_before[key] for key, pid in pids.items()}
    await publishing
    delivered = per_stream * len(subscribers) - max(0, tally.expected - tally.delivered)
    return {"elapsed": elapsed, "delivered": delivered, **cpu}


def losses(subscribers: list[Subscriber], expected: int) -> dict[str, int]:
    return {
        "lost": sum(max(0, expected - subscriber.count) for subscriber in subscribers),
        "duplicated": sum(max(0, subscriber.count - expected) for subscriber in subscribers),
        "out_of_order": sum(subscriber.out_of_order for subscriber in subscribers),
    }


def close(subscribers: list[Subscriber]) -> None:
    for subscriber in subscribers:
        if subscriber.transport is not None:
            subscriber.transport.abort()


async def settled(server: Server, timeout: float = 120) -> None:
    """Until the server has let go of the last scenario's streams.

    A server notices a client that left at its next write at the latest
    (ours within ``SSE_KEEPALIVE``); measuring before then would charge
    that clean-up to the next scenario. flask-sse 1.0.0 never does (it
    keeps a departed client's socket and Redis connection until it next
    publishes to it), so it is not waited for.
    """
    if server.name == "flask-sse 1.0.0":
        return
    deadline = time.monotonic() + timeout
    while open_sockets(server.pid) > SETTLED_SOCKETS:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name} still holds {open_sockets(server.pid)} sockets")
        await asyncio.sleep(0.1)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")



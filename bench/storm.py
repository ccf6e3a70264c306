"""Reconnect storm: a server stops, its browsers move to another, with and without spreading.

``python -m bench.storm`` starts its own redis-server and two servers of
one gevent worker each (``bench.app``). ``--streams`` clients hold a stream on
the first and ``--bystanders`` on the second, while events are published at
``--rate`` through the second. Then the first gets SIGTERM, as in a rolling
deploy: each of its clients does what ``EventSource`` does when its stream
ends (waits the last ``retry:`` it was given, then reconnects with its
``Last-Event-ID``, here to the second server, as a load balancer would send
it). Reported per variant: seconds from SIGTERM until every client has
resumed on the second server, the peak of Redis commands per second
meanwhile, the bystanders' p99 publish-to-receive latency meanwhile (what
the storm does to the second server's own streams), and events lost or
duplicated over all clients (must be 0).

Variants: ``SSE_DRAIN_SECONDS=0`` (every stream ends at once) and
``--drain`` (10 s, the default: ends spread, with jittered ``retry:``);
``--admission`` adds one with ``SSE_ADMISSION_RATE`` on the second server.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from bench.load import percentile, publish
from bench.servers import Server, raise_file_limit, redis_server, start_server


@dataclass
class Client(asyncio.Protocol):
    """A browser: keeps ``retry:`` and ``id:``; when its stream ends, goes to ``next_port``."""

    port: int
    next_port: int
    bystander: bool = False
    seqs: list[int] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (received at, latency)
    last_id: str = ""
    retry_ms: int = 3000
    resumed_at: float | None = None  # when a stream on the next server first said its id
    moved: bool = False
    stopped: bool = False  # the benchmark is over: no more reconnects
    transport: asyncio.Transport | None = None
    _raw: bytes = b""
    _text: bytes = b""
    _headers: bool = False
    _left: int | None = None  # bytes left of the current chunk, or of a Content-Length body
    _chunked: bool = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._raw = self._text = b""
        self._headers, self._left, self._chunked = False, None, False
        resume = f"Last-Event-ID: {self.last_id}\r\n" if self.last_id else ""
        request = (
            "GET /stream?channel=bench HTTP/1.1\r\nHost: bench\r\n"
            f"Accept: text/event-stream\r\n{resume}\r\n"
        )
        transport.write(request.encode())

    def data_received(self, data: bytes) -> None:
        self._raw += data
        if not self._headers:
            head, separator, rest = self._raw.partition(b"\r\n\r\n")
            if not separator:
                return
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"stream refused: {head[:100]!r}")
            self._headers = True
            lowered = head.lower()
            self._chunked = b"transfer-encoding: chunked" in lowered
            if not self._chunked:
                self._left = int(lowered.split(b"content-length:")[1].split(b"\r\n")[0])
            self._raw = rest
        if self._chunked:
            self._dechunk()
        else:
            assert self._left is not None
            body, self._raw = self._raw[: self._left], b""
            self._left -= len(body)
            self._lines(body)
            if self._left == 0:
                self._ended()

    def _dechunk(self) -> None:
        while True:
            if self._left is None:
                size, separator, rest = self._raw.partition(b"\r\n")
                if not separator:
                    return
                self._left, self._raw = int(size, 16), rest
                if self._left == 0:
                    self._ended()
                    return
            if len(self._raw) < self._left + 2:
                return
            self._lines(self._raw[: self._left])
            self._raw, self._left = self._raw[self._left + 2 :], None

    def _lines(self, body: bytes) -> None:
        self._text += body
        *lines, self._text = self._text.split(b"\n")
        now = time.time()
        for line in lines:
            if line.startswith(b"data:"):
                seq, published = line[5:].split(b" ")
                self.seqs.append(int(seq))
                if self.bystander:
                    self.latencies.append((now, now - float(published)))
            elif line.startswith(b"id:"):
                self.last_id = line[3:].decode()
                if self.moved and self.resumed_at is None:
                    self.resumed_at = time.monotonic()
            elif line.startswith(b"retry:"):
                self.retry_ms = int(line[6:])

    def _ended(self) -> None:
        """The server ended the response: come back after ``retry``, as EventSource does."""
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.close()
        self.port, self.moved = self.next_port, True
        self._connect_later()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None and not self.stopped:  # cut short: a network error
            self._ended()

    async def connect(self) -> None:
        """Connect, or (refused, reset: the network errors EventSource retries) try again."""
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: self, "127.0.0.1", self.port)
        except OSError:
            self._connect_later()

    def _connect_later(self) -> None:
        """Connect again after ``retry``, as EventSource does."""
        loop = asyncio.get_running_loop()
        loop.call_later(self.retry_ms / 1000, lambda: asyncio.ensure_future(self.connect()))


def stop(clients: list[Client]) -> None:
    for client in clients:
        client.stopped = True
        if client.transport is not None:
            client.transport.abort()


async def open_all(clients: list[Client]) -> None:
    gate = asyncio.Semaphore(300)

    async def one(client: Client) -> None:
        async with gate:
            await client.connect()
            while not client.last_id:
                await asyncio.sleep(0.01)

    await asyncio.gather(*(one(client) for client in clients))


async def count_commands(admin: redis.Redis, samples: list[tuple[float, int]]) -> None:
    """Redis's count of commands processed, every 0.1 s, until cancelled."""
    while True:
        samples.append((time.monotonic(), int(admin.info("stats")["total_commands_processed"])))
        await asyncio.sleep(0.1)


async def variant(
    redis_url: str, admin: redis.Redis, settings: dict[str, str], args: Any
) -> dict[str, Any]:
    admin.flushall()
    first = start_server("ours", redis_url, {"SSE_DRAIN_SECONDS": settings["SSE_DRAIN_SECONDS"]})
    second = start_server("ours", redis_url, settings)
    try:
        return await move(first, second, admin, args)
    finally:
        for server in (first, second):
            if server.process.poll() is None:
                server.stop()


async def move(first: Server, second: Server, admin: redis.Redis, args: Any) -> dict[str, Any]:
    """Clients on ``first``, bystanders on ``second``; SIGTERM to ``first``; the figures."""
    movers = [Client(first.port, second.port) for _ in range(args.streams)]
    bystanders = [Client(second.port, second.port, bystander=True) for _ in range(args.bystanders)]
    await open_all(movers + bystanders)
    total = int(args.rate * args.seconds)
    publishing = asyncio.ensure_future(publish(second.port, total, args.rate))
    await asyncio.sleep(2)
    commands: list[tuple[float, int]] = []
    counting = asyncio.ensure_future(count_commands(admin, commands))
    signalled = time.monotonic()
    signalled_wall = time.time()
    first.process.send_signal(signal.SIGTERM)
    while any(client.resumed_at is None for client in movers):
        if time.monotonic() - signalled > 120:
            raise RuntimeError("clients did not all resume within 120 s")
        await asyncio.sleep(0.1)
    resumed = max(client.resumed_at or 0.0 for client in movers) - signalled
    await asyncio.sleep(1)  # the last resumes' commands
    counting.cancel()
    moved_wall = signalled_wall + resumed
    await publishing
    deadline = time.monotonic() + 60
    everyone = movers + bystanders
    while any(len(client.seqs) < total for client in everyone) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    first.process.wait(60)
    rates = [
        (later[1] - earlier[1]) / (later[0] - earlier[0])
        for earlier, later in zip(commands, commands[1:], strict=False)
    ]
    during = [latency for at, latency in (s for c in bystanders for s in c.latencies)
              if signalled_wall <= at <= moved_wall]
    stop(everyone)
    return {
        "resumed_s": resumed,
        "peak_redis_commands_per_s": max(rates, default=0.0),
        "bystander_p99_ms": 1000 * percentile(during, 0.99),
        "lost": sum(len(set(range(total)) - set(client.seqs)) for client in everyone),
        "duplicated": sum(len(client.seqs) - len(set(client.seqs)) for client in everyone),
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| variant | all resumed after SIGTERM (s) | peak Redis commands/s | bystanders' p99 (ms) "
        "| lost | duplicated |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        lines.append(
            f"| {name} | {result['resumed_s']:.1f} | {result['peak_redis_commands_per_s']:,.0f} "
            f"| {result['bystander_p99_ms']:.1f} | {result['lost']} | {result['duplicated']} |"
        )
    return "\n".join(lines)


async def main_async(args: Any) -> None:
    raise_file_limit()
    drain = f"{args.drain:g}"
    variants = {
        "all at once (SSE_DRAIN_SECONDS=0)": {"SSE_DRAIN_SECONDS": "0"},
        f"spread (SSE_DRAIN_SECONDS={drain})": {"SSE_DRAIN_SECONDS": drain},
    }
    if args.admission:
        variants[f"spread, SSE_ADMISSION_RATE={args.admission}"] = {
            "SSE_DRAIN_SECONDS": drain, "SSE_ADMISSION_RATE": str(args.admission),
        }
    results = {}
    with redis_server() as (redis_url, admin):
        for name, settings in variants.items():
            print(f"storm: {name}", flush=True)
            results[name] = await variant(redis_url, admin, settings, args)
    print(f"{args.streams} streams move from one server to another, {args.bystanders} stay, "
          f"{args.rate:g} events/s:")
    print(table(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=5000, help="clients on the stopped server")
    parser.add_argument("--bystanders", type=int, default=200, help="clients on the other one")
    parser.add_argument("--rate", type=float, default=20, help="events published per second")
    parser.add_argument("--seconds", type=float, default=30, help="how long events are published")
    parser.add_argument("--drain", type=float, default=10, help="SSE_DRAIN_SECONDS when spread")
    parser.add_argument("--admission", type=int, default=0, help="also a variant with this rate")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

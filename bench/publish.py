"""The publisher: ``POST /publish?channel=...`` COUNT events at RATE per second (0: flat out).

Each event's data is ``"<seq> <time.time()>"``, so receivers can count loss,
duplicates and publish-to-receive latency. A process of its own, so that
publishing is not slowed by the receivers.

``python -m bench.publish PORT COUNT RATE [FIRST] [--channels K] [--connections C]``

With ``--channels K`` event ``seq`` goes to channel ``c<seq % K>`` (else all
go to ``bench``), over C keep-alive connections, connection ``j`` sending the
events with ``seq % C == j``, each as soon as the previous one was answered.
K a multiple of C keeps each channel on one connection, so its events stay
in order.
"""

from __future__ import annotations

import argparse
import asyncio
import time


async def send(port: int, numbers: range, rate: float, channels: int) -> None:
    """One keep-alive connection: POST each event, read the answer, then the next."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start, first = time.perf_counter(), numbers.start
    try:
        for seq in numbers:
            if rate:
                delay = start + (seq - first) / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            channel = f"c{seq % channels}" if channels else "bench"
            body = f"{seq} {time.time():.6f}".encode()
            writer.write(
                b"POST /publish?channel=%s HTTP/1.1\r\nHost: bench\r\n"
                b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                % (channel.encode(), len(body), body)
            )
            if not await read_answer(reader, seq):  # the server closes this connection
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()


async def read_answer(reader: asyncio.StreamReader, seq: int) -> bool:
    """Read one answer; whether the connection stays open for the next request."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status >= 300:
        raise SystemExit(f"publish {seq} answered {status}")
    length, keep_alive = 0, True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            keep_alive = value.strip().lower() != b"close"
        elif name == b"transfer-encoding":
            raise SystemExit(f"publish {seq}: a chunked answer, which this reader does not parse")
    await reader.readexactly(length)
    return keep_alive


async def main_async(arguments: argparse.Namespace) -> None:
    connections = arguments.connections
    if arguments.rate and connections > 1:
        raise SystemExit("a fixed --rate is sent over one connection")
    end = arguments.first + arguments.count
    await asyncio.gather(
        *(
            send(arguments.port, range(arguments.first + j, end, connections), arguments.rate,
                 arguments.channels)
            for j in range(connections)
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("rate", type=float, help="events per second, 0: flat out")
    parser.add_argument("first", type=int, nargs="?", default=0, help="the first seq")
    parser.add_argument("--channels", type=int, default=0, help="0: every event on 'bench'")
    parser.add_argument("--connections", type=int, default=1)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

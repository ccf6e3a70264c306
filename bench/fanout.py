"""The Python a delivery costs beyond its write: ``python -m bench.fanout [--streams N]``.

N socket pairs in this one process, each with the subscription and direct
writer a sleeping stream has; events handed to every subscription as the
hub does (``Subscription.deliver``, then ``DirectWriter.write``), against a
bare loop of ``os.write`` of the same bytes to the same sockets. Rounds in
turns; checks that every client received every event, and prints the CPU
per delivery of each and their difference, which is what the package's own
code adds to the system call. No server, no network:
for changes to the fan-out's inner loop.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import time
from collections.abc import Callable, Sequence

from flask_sse import Message
from flask_sse.delivery import Delivery
from flask_sse.history import Position
from flask_sse.subscription import Subscription
from flask_sse.transport import DirectWriter, frame

EVENTS = 50


class NoScheduler:
    def schedule(self, subscription: Subscription, when: float) -> None:
        pass


def unscheduled(channel: str) -> Subscription:
    """A subscription to ``channel`` outside any hub, as a stream of one holds it."""
    return Subscription((channel,), 10, NoScheduler())


class Streams:
    """Socket pairs, one per channel given; the server ends with a sleeping subscription
    (``subscribe``'s) and a direct writer."""

    def __init__(
        self, channels: Sequence[str], subscribe: Callable[[str], Subscription] = unscheduled
    ) -> None:
        self.pairs = [socket.socketpair() for _ in channels]
        self.subscriptions: list[Subscription] = []
        for (server, client), channel in zip(self.pairs, channels, strict=True):
            server.setblocking(False)
            client.setblocking(False)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            subscription = subscribe(channel)
            positions: dict[str, Position] = {channel: (0, 0)}
            writer = DirectWriter(subscription, server, True, positions)
            subscription.write_directly_with(writer.write)
            subscription.sleep()  # as a parked stream between its turns
            self.subscriptions.append(subscription)

    def drain(self) -> int:
        """Empty every client's socket; how many bytes they held.

        Events are numbered on from round to round, so the writers'
        positions only move forward and every event is written.
        """
        received = 0
        for _, client in self.pairs:
            try:
                while piece := client.recv(1 << 20):
                    received += len(piece)
            except BlockingIOError:
                pass
        return received

    def close(self) -> None:
        for server, client in self.pairs:
            server.close()
            client.close()


def event(number: int) -> Delivery:
    return Delivery("news", Message(f"event {number}", id=f"{number + 1}-0"))


#: Writes event N to every stream; returns the bytes it meant to write to each.
FanOut = Callable[[int], int]


def through_the_package(streams: Streams) -> FanOut:
    def fan_out(number: int) -> int:
        delivery = event(number)
        for subscription in streams.subscriptions:
            subscription.deliver(delivery)
        return len(frame(delivery.chunk))

    return fan_out


def bare_writes(streams: Streams) -> FanOut:
    descriptors = [server.fileno() for server, _ in streams.pairs]

    def fan_out(number: int) -> int:
        framed = frame(event(number).chunk)
        for descriptor in descriptors:
            os.write(descriptor, framed)
        return len(framed)

    return fan_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    arguments = parser.parse_args()
    wanted = arguments.streams * 2 + 100
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
    streams = Streams(["news"] * arguments.streams)
    kinds = {"package": through_the_package(streams), "bare os.write": bare_writes(streams)}
    figures: dict[str, list[float]] = {name: [] for name in kinds}
    try:
        for number in range(arguments.rounds):
            for name, fan_out in kinds.items():
                streams.drain()
                started = time.process_time()
                meant = sum(fan_out(number * EVENTS + offset) for offset in range(EVENTS))
                spent = time.process_time() - started
                received = streams.drain()
                if received != meant * arguments.streams:
                    raise SystemExit(f"{name}: the clients received {received} bytes of "
                                     f"{meant * arguments.streams}")
                figures[name].append(1e6 * spent / (EVENTS * arguments.streams))
    finally:
        streams.close()
    package, bare = (statistics.median(figures[name]) for name in kinds)
    print(f"{arguments.streams} streams, {arguments.rounds} rounds, CPU per delivery (us):")
    print(f"through the package {package:.2f}, bare os.write {bare:.2f}, "
          f"the package's own {package - bare:.2f}")


if __name__ == "__main__":
    main()

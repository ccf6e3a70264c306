"""The Python a message costs the hub beyond its write: ``python -m bench.hub_path``.

One gevent-patched process, a real Redis for the hub's link, and N socket
pairs with the direct writer a sleeping stream has, one channel each.
RESP messages like those Redis sends a link (a history position in the id,
as ``sse.publish`` makes them) are parsed and handed to the link as its
reader does (``Link._dispatch``: the channel's name, decoding, the channel
table, the fan-out, the direct write), against a bare loop that parses the
same bytes and writes a framed copy of each payload to its channel's socket.
Rounds in turns; checks that every client received what it was sent, and
prints the CPU per message of each and their difference, which is what the
package's own code adds. For changes to the hub's path of one message.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

#: Messages a round reads, in pieces of PIECE (several messages to a ``recv``, as under load).
MESSAGES = 20_000
PIECE = 200
BASE_MS = 1_800_000_000_000


def payload_of(number: int) -> bytes:
    """Event ``number``'s payload as ``sse.publish`` and the history script make it."""
    return json.dumps({"id": f"{BASE_MS + number}-0", "data": f"event {number}"}).encode()


def message(number: int, channels: int) -> bytes:
    """Event ``number`` as Redis sends it to a link (RESP2), on ``c<number % channels>``:
    an array of three bulk strings, as a command is sent."""
    from flask_sse.commands import pack  # the package only once gevent has patched (main)

    return pack([b"message", f"c{number % channels}", payload_of(number)])


def main() -> None:
    from gevent import monkey  # type: ignore[import-untyped]

    monkey.patch_all()
    from flask_sse import registry
    from flask_sse.replies import _complete
    from flask_sse.transport import frame

    from .fanout import Streams
    from .servers import raise_file_limit, redis_server

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=2000, help="one stream on each")
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    count = arguments.channels
    raise_file_limit()
    with redis_server() as (redis_url, _):
        hub = registry.hub_for(redis_url)
        streams = Streams(
            [f"c{number}" for number in range(count)],
            lambda channel: hub.subscribe((channel,), 10)[0],
        )
        try:
            link = hub._dispatch.links.link(hub._node_of("c0"))
            descriptors = {
                f"c{number}".encode(): server.fileno()
                for number, (server, _) in enumerate(streams.pairs)
            }
            drain = streams.drain

            def through_the_package(buffer: bytes) -> None:
                replies, _ = _complete(buffer)
                for reply in replies:
                    link._dispatch(reply)

            def bare_loop(buffer: bytes) -> None:
                replies, _ = _complete(buffer)
                for _, channel, payload in replies:
                    os.write(descriptors[channel], frame(b"data:" + payload + b"\n\n"))

            #: each way, and the bytes it writes for a payload (counted before the clock runs)
            kinds: dict[str, tuple[Callable[[bytes], None], Callable[[bytes], bytes]]] = {
                "package": (through_the_package, wire_form),
                "bare loop": (bare_loop, lambda payload: b"data:" + payload + b"\n\n"),
            }
            figures: dict[str, list[float]] = {name: [] for name in kinds}
            for round_number in range(arguments.rounds):
                for name, (handle, written) in kinds.items():
                    first = (round_number * len(kinds) + list(kinds).index(name)) * MESSAGES
                    numbers = range(first, first + MESSAGES)
                    raw = [message(number, count) for number in numbers]
                    meant = sum(len(frame(written(payload_of(number)))) for number in numbers)
                    drain()
                    received = 0
                    started = time.process_time()
                    for start in range(0, MESSAGES, PIECE):
                        handle(b"".join(raw[start : start + PIECE]))
                        if start % (PIECE * 10) == 0:
                            received += drain()  # the clients keep up, as a browser does
                    spent = time.process_time() - started
                    received += drain()
                    if received != meant:
                        raise SystemExit(f"{name}: the clients received {received} bytes "
                                         f"of {meant}")
                    figures[name].append(1e6 * spent / MESSAGES)
                print(f"round {round_number + 1}: " + ", ".join(
                    f"{name} {values[-1]:.2f} us" for name, values in figures.items()
                ), flush=True)
        finally:
            registry.close_all()
            streams.close()
    package, bare = (statistics.median(figures[name]) for name in kinds)
    print(f"median CPU per message: package {package:.2f} us, bare loop {bare:.2f} us, "
          f"the package adds {package - bare:.2f} us")


def wire_form(payload: bytes) -> bytes:
    """What a stream receives for ``payload``: the package's general encoding, which the
    hub's short way must match."""
    from flask_sse import Message

    message = Message.from_payload(payload)
    assert message is not None
    return message.encode()


if __name__ == "__main__":
    main()

"""CPU per delivery at saturation, the servers taking turns: ``python -m bench.rounds``.

Whole benchmark runs drift by 20% on a small machine (another process, the
CPU's clock), which hides a difference of that size between two servers run
minutes apart. Here each server is started once and the saturation scenario
(N streams on one channel, events published flat out) runs on them in
rounds, in a new order each round, so drift falls on all of them alike. It
prints each round and the medians, with every server's streams written with
``TCP_NODELAY`` (as in ``python -m bench``) or, with ``--nagle``, without.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

from .overhead import wait_idle
from .scenarios import saturation
from .servers import SERVERS, raise_file_limit, redis_server, start_server


async def measure(arguments: argparse.Namespace) -> None:
    raise_file_limit()
    names: list[str] = arguments.servers
    figures: dict[str, list[float]] = {name: [] for name in names}
    with redis_server() as (redis_url, admin):
        servers = [start_server(name, redis_url, nagle=arguments.nagle) for name in names]
        try:
            for number in range(arguments.rounds):
                turn = servers[number % len(servers) :] + servers[: number % len(servers)]
                for server in turn:
                    wait_idle(server)
                    result = await saturation(server, arguments.streams, arguments.events, admin)
                    if result["lost"] or result["duplicated"] or result["out_of_order"]:
                        raise SystemExit(f"{server.name} lost or reordered events: {result}")
                    figures[server.name].append(result["cpu_us_per_delivery"])
                print(f"round {number + 1}: " + ", ".join(
                    f"{name} {values[-1]:.2f}" for name, values in figures.items()
                ), flush=True)
        finally:
            for server in servers:
                server.stop()
    packets = "without TCP_NODELAY (Nagle)" if arguments.nagle else "with TCP_NODELAY"
    print(f"N={arguments.streams}, saturated, streams {packets}: CPU per delivery (us), medians")
    for name, values in figures.items():
        spread = f"from {min(values):.2f} to {max(values):.2f}"
        print(f"{name}: {statistics.median(values):.2f} ({spread})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--nagle", action="store_true", help="streams without TCP_NODELAY")
    parser.add_argument(
        "--servers", nargs="+", default=["ours", "ours parked", "nchan redis"], choices=SERVERS
    )
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()

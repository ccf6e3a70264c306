"""The many-channel shape alone: ``python -m bench.channels [--repeat N] [--servers ...]``.

The two scenarios of ``python -m bench`` that weigh the cost per event
published (2,000 channels of one stream each, and one publish call), in a
minute a run instead of half an hour for the whole benchmark: for trying a
change to the publishing or decoding path (another parser, another payload)
in one environment against another. ``--servers`` takes several, which run
in turns (this machine's speed drifts over minutes, so turns compare
better than one after the other): ``ceiling``, the least a gevent process
can do for the many-channel scenario (``bench.ceiling``), and ``nchan
redis``, whose one worker both publishes and delivers (its "subscribing
worker" figure is its whole job).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

from .run import ROWS, Plan, channel_scenarios
from .servers import OURS, raise_file_limit, redis_server, start_server

#: The figures printed for each run and as medians: these rows of ``python -m bench``'s table.
FIGURES = (
    ("many channels", "server_cpu_us_per_event"),
    ("many channels", "subscriber_cpu_us_per_event"),
    ("many channels", "redis_cpu_us_per_event"),
    ("publish call", "caller_us"),
    ("publish call", "caller_user_us"),
    ("publish call", "redis_us"),
)


def labelled(plan: Plan) -> list[tuple[str, str, str]]:
    """(scenario, figure, label) of each of ``FIGURES``, labelled as in the table."""
    labels = {(scenario, key): label for scenario, key, label, _ in ROWS}
    return [
        (scenario, key, labels[scenario, key].format(channels=plan.channels))
        for scenario, key in FIGURES
    ]


async def measure(repeat: int, names: list[str]) -> None:
    raise_file_limit()
    plan = Plan()
    figures = labelled(plan)
    values: dict[str, dict[str, list[float]]] = {
        name: {label: [] for _, _, label in figures} for name in names
    }
    with redis_server() as (redis_url, admin):
        for number in range(repeat):
            for name in names:
                server = start_server(name, redis_url)
                try:
                    results = await channel_scenarios(server, redis_url, plan, admin)
                finally:
                    server.stop()
                measured = [
                    (label, results[scenario][key])
                    for scenario, key, label in figures
                    if key in results.get(scenario, {})  # the ceiling makes no publish call
                ]
                for label, value in measured:
                    values[name][label].append(value)
                print(f"run {number + 1}/{repeat}, {name}: " + ", ".join(
                    f"{label} {value:.0f}" for label, value in measured
                ), flush=True)
    for name in names:
        for label, runs in values[name].items():
            if runs:
                print(f"median, {name}: {label}: {statistics.median(runs):.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs (medians reported)")
    parser.add_argument(
        "--servers", nargs="+", choices=(*OURS, "ceiling", "nchan redis"), default=["ours"]
    )
    arguments = parser.parse_args()
    asyncio.run(measure(arguments.repeat, arguments.servers))


if __name__ == "__main__":
    main()

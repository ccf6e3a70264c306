"""Fan-out benchmark: this project beside flask-sse 1.0.0, a gevent ceiling and nginx+nchan.

``python -m bench`` starts its own redis-server on a loopback port, then
serves each server in turn on ONE worker (``bench.servers``), and drives it
from one asyncio process with raw protocols while a publisher process posts
events carrying their sequence number and publish time (``bench.load``).
Two shapes (``bench.scenarios``):

- one channel, N subscribers: deliveries per second, the worker's CPU time
  per delivery (from ``/proc/<pid>/stat``), publish-to-receive latency, RSS
  per open stream and the Redis connections held;
- many channels of one subscriber each, events spread over them: events per
  second, the server's and Redis's CPU per event, and what one publish call
  costs the process that makes it.

Lost, duplicated and out-of-order events are counted everywhere. Results go
to ``bench/results.json`` and ``bench/results.png``; the table is printed.
Each scenario runs ``--repeat`` times and the median is reported.
``--metrics`` serves this project with ``SSE_METRICS`` on, in prometheus_client's
multiprocess mode (as under gunicorn in production), to measure what counting costs.
Every server's streams have ``TCP_NODELAY`` (each event its own packet, as
gunicorn serves them); ``--nagle`` serves them all with Nagle's algorithm
instead, as nginx does by default (``bench.servers``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from .scenarios import idle_then_burst, latency, many_channels, publish_call, saturation
from .servers import (
    BENCH,
    NCHAN,
    OURS,
    SERVERS,
    Server,
    delivered_total,
    raise_file_limit,
    redis_server,
    start_server,
)


@dataclass
class Plan:
    """Sizes of one run; ``--quick`` shrinks them to a smoke test."""

    light: int = 100
    medium: int = 1000
    large: int = 10_000
    latency_rate: float = 20
    latency_events: int = 100
    saturation_events: dict[str, int] = field(
        default_factory=lambda: {
            "ours": 1000, "ours parked": 1000, "flask-sse 1.0.0": 150, "ceiling": 1000,
            "nchan memory": 1000, "nchan redis": 1000,
        }
    )
    burst: int = 20
    channels: int = 2000  # many channels: one stream on each
    channel_events: int = 20_000
    publish_calls: int = 5000


QUICK = Plan(
    light=10,
    medium=50,
    large=200,
    latency_events=10,
    saturation_events={
        "ours": 50, "ours parked": 50, "flask-sse 1.0.0": 20, "ceiling": 50,
        "nchan memory": 50, "nchan redis": 50,
    },
    burst=5,
    channels=20,
    channel_events=200,
    publish_calls=50,
)


async def run_server(
    name: str, redis_url: str, plan: Plan, admin: redis.Redis, metrics: bool = False,
    nagle: bool = False,
) -> dict[str, Any]:
    """Every scenario against ``name``; the many-channel ones only where channels are served."""
    counting = metrics and name in OURS
    server = start_server(name, redis_url, metrics=counting, nagle=nagle)
    try:
        results: dict[str, Any] = {}
        rate, events, flat_out = (
            plan.latency_rate,
            plan.latency_events,
            plan.saturation_events[name],
        )
        results["light latency"] = await latency(server, plan.light, rate, events, admin)
        results["light saturation"] = await saturation(server, plan.light, flat_out, admin)
        results["latency"] = await latency(server, plan.medium, rate, events, admin)
        results["saturation"] = await saturation(server, plan.medium, flat_out, admin)
        if name == "flask-sse 1.0.0" and plan.large >= 10_000:
            results["idle then burst"] = {
                "skipped": "needs one Redis connection per stream: "
                f"{plan.large:,} is past Redis's default maxclients"
            }
        else:
            results["idle then burst"] = await idle_then_burst(
                server, plan.large, plan.burst, admin
            )
        if name != "flask-sse 1.0.0":
            results.update(await channel_scenarios(server, redis_url, plan, admin))
        if counting:
            results["metrics"] = {"events_delivered": delivered_total(server.port)}
            print(f"metrics on: {results['metrics']['events_delivered']:,.0f} deliveries counted")
        return results
    finally:
        server.stop()


async def channel_scenarios(
    server: Server, redis_url: str, plan: Plan, admin: redis.Redis
) -> dict[str, Any]:
    """Many channels, and one publish call (not for the ceiling, which has no publish
    call of its own). Ours and the ceiling publish through a second server."""
    redis_pid = int(admin.info("server")["process_id"])
    publishing = server if server.name in NCHAN else start_server(server.name, redis_url)
    try:
        spread = await many_channels(
            server, publishing, plan.channels, plan.channel_events, admin, redis_pid
        )
    finally:
        if publishing is not server:
            publishing.stop()
    if server.name == "ceiling":
        return {"many channels": spread}
    call = publish_call(server, redis_url, plan.publish_calls, plan.channels, redis_pid)
    return {"many channels": spread, "publish call": call}


# -- the report ----------------------------------------------------------------

ROWS = [
    ("saturation", "deliveries_per_s", "N={medium}: deliveries/s at saturation", "{:,.0f}"),
    ("saturation", "cpu_us_per_delivery", "N={medium}: server CPU per delivery (us)", "{:.1f}"),
    ("latency", "p50_ms", "N={medium}, {rate:g} ev/s: latency p50 (ms)", "{:.1f}"),
    ("latency", "p99_ms", "N={medium}, {rate:g} ev/s: latency p99 (ms)", "{:.1f}"),
    ("latency", "max_ms", "N={medium}, {rate:g} ev/s: latency max (ms)", "{:.1f}"),
    (
        "latency",
        "cpu_us_per_delivery",
        "N={medium}, {rate:g} ev/s: CPU per delivery (us)",
        "{:.1f}",
    ),
    ("light latency", "p50_ms", "N={light}, {rate:g} ev/s: latency p50 (ms)", "{:.1f}"),
    ("light latency", "p99_ms", "N={light}, {rate:g} ev/s: latency p99 (ms)", "{:.1f}"),
    ("light saturation", "deliveries_per_s", "N={light}: deliveries/s at saturation", "{:,.0f}"),
    (
        "idle then burst",
        "rss_kb_per_stream",
        "N={large}: server RSS per open stream (KB)",
        "{:.1f}",
    ),
    ("idle then burst", "redis_connections", "N={large}: Redis connections held", "{:.0f}"),
    ("idle then burst", "reach_all_ms", "N={large}: one event reaches all (ms)", "{:.0f}"),
    ("idle then burst", "deliveries_per_s", "N={large}: burst deliveries/s", "{:,.0f}"),
    ("many channels", "events_per_s", "{channels:,} channels x 1 stream: events/s", "{:,.0f}"),
    (
        "many channels",
        "server_cpu_us_per_event",
        "{channels:,} channels: server CPU per event, publishing included (us)",
        "{:.0f}",
    ),
    (
        "many channels",
        "subscriber_cpu_us_per_event",
        "{channels:,} channels: subscribing worker's CPU per event (us)",
        "{:.0f}",
    ),
    ("many channels", "redis_cpu_us_per_event", "{channels:,} channels: Redis CPU per event (us)",
     "{:.0f}"),
    ("publish call", "caller_us", "one publish call: the caller's CPU (us)", "{:.0f}"),
    ("publish call", "caller_user_us", "one publish call: the caller's CPU, user space (us)",
     "{:.0f}"),
    ("publish call", "server_us", "one publish call: the server's CPU (us)", "{:.0f}"),
    ("publish call", "redis_us", "one publish call: Redis CPU (us)", "{:.0f}"),
]
#: (ours, peer): the ratios the table gives
RATIOS = (
    ("ours", "nchan redis"),
    ("ours parked", "nchan redis"),
    ("ours", "flask-sse 1.0.0"),
    ("ours", "ceiling"),
)
LOSS_KEYS = ("lost", "duplicated", "out_of_order")


def median_of(runs: list[dict[str, Any]], scenario: str, key: str) -> float | None:
    values = [run[scenario][key] for run in runs if key in run.get(scenario, {})]
    return statistics.median(values) if values else None


def report(runs: dict[str, list[dict[str, Any]]], plan: Plan) -> str:
    sizes = {
        "medium": plan.medium,
        "light": plan.light,
        "large": plan.large,
        "rate": plan.latency_rate,
        "channels": plan.channels,
    }
    header = ["figure", *SERVERS, *(f"{ours} / {peer}" for ours, peer in RATIOS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for scenario, key, label, style in ROWS:
        values = [median_of(runs[name], scenario, key) for name in SERVERS]
        cells = [label.format(**sizes)]
        cells += [style.format(value) if value is not None else "n/a" for value in values]
        for ours, peer in RATIOS:
            mine, other = values[SERVERS.index(ours)], values[SERVERS.index(peer)]
            ratio = mine / other if mine is not None and other else None
            cells.append(f"{ratio:.2f}x" if ratio is not None else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    problems = [
        f"{name} / {scenario}: {key} {value}"
        for name in SERVERS
        for run in runs[name]
        for scenario, figures in run.items()
        for key, value in figures.items()
        if key in LOSS_KEYS and value
    ]
    lines.append("")
    lines.append(
        "Lost, duplicated or out-of-order events: " + ("; ".join(problems) or "none in any run")
    )
    return "\n".join(lines)


def plot(runs: dict[str, list[dict[str, Any]]], plan: Plan, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[bench]')")
        return
    figure, axes = pyplot.subplots(1, 2, figsize=(11, 4.2))
    sizes = [plan.light, plan.medium, plan.large]
    panels = [  # per panel: the (scenario, figure) plotted at each size, and the labels
        (
            [
                ("light saturation", "deliveries_per_s"),
                ("saturation", "deliveries_per_s"),
                ("idle then burst", "deliveries_per_s"),
            ],
            "deliveries / s",
            "Throughput, one gevent worker",
        ),
        (
            [
                ("light latency", "p99_ms"),
                ("latency", "p99_ms"),
                ("idle then burst", "reach_all_ms"),
            ],
            "ms",
            f"Latency: p99 at {plan.latency_rate:g} ev/s; last delivery at N={plan.large:,}",
        ),
    ]
    for axis, (series, unit, title) in zip(axes, panels, strict=True):
        for name in SERVERS:
            values = [median_of(runs[name], scenario, key) for scenario, key in series]
            points = [(n, v) for n, v in zip(sizes, values, strict=True) if v is not None]
            axis.plot(*zip(*points, strict=True), marker="o", label=name)
        axis.set(xscale="log", yscale="log", xlabel="open streams (N)", ylabel=unit, title=title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


async def main_async(arguments: argparse.Namespace) -> None:
    raise_file_limit()
    plan = QUICK if arguments.quick else Plan()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SERVERS}
    with redis_server() as (redis_url, admin):
        for repetition in range(arguments.repeat):
            for name in arguments.servers:
                print(f"run {repetition + 1}/{arguments.repeat}: {name}", flush=True)
                admin.flushall()
                runs[name].append(await run_server(
                    name, redis_url, plan, admin, arguments.metrics, arguments.nagle
                ))
    table = report(runs, plan)
    print(table)
    out = Path(arguments.output)
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "plan": plan.__dict__, "metrics": arguments.metrics, "nagle": arguments.nagle,
                "runs": runs, "table": table,
            },
            indent=1,
        )
        + "\n"
    )
    plot(runs, plan, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per server (median reported)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--output", default=str(BENCH / "results"), help="path without suffix")
    parser.add_argument(
        "--metrics", action="store_true",
        help="this project's server with SSE_METRICS on (multiprocess mode, a temporary directory)",
    )
    parser.add_argument(
        "--nagle", action="store_true",
        help="streams without TCP_NODELAY, as nginx serves them (SSE_TCP_NODELAY = False for ours)",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

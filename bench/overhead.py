"""What metrics cost: CPU per delivery with ``SSE_METRICS`` on against off, in pairs.

``python -m bench.overhead`` serves this project on one gevent worker with
metrics on (prometheus_client's multiprocess mode, as under gunicorn in
production), and runs the saturation scenario (N streams on one channel,
events published flat out) on it in pairs of runs: one with its counting
switched off, one with it on (``bench.app`` switches it between runs). The
order alternates between pairs, so drift on the machine (other load, CPU
frequency) falls on both sides alike; and both sides are the same process,
since two identical servers, both with metrics off, differed by about 5% by
themselves. It prints each pair's ratio and their median.

``--hooks`` times the counting itself instead, in this process: the calls the
hub and a stream make per event and per chunk with metrics on, in
multiprocess mode. Their cost per event over a fan-out's cost is the
overhead no run-to-run noise hides.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import statistics
import tempfile
import time
import timeit
import urllib.request

import redis

from .scenarios import saturation
from .servers import (
    Server,
    cpu_seconds,
    delivered_total,
    raise_file_limit,
    redis_server,
    start_server,
)

WARM_STREAMS, WARM_EVENTS = 10, 20


def wait_idle(server: Server, quiet: float = 0.5, timeout: float = 60) -> None:
    """Until the worker has used no CPU for ``quiet`` seconds (closed streams are reaped)."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(server.pid)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = cpu_seconds(server.pid)
        if now == last:
            return
        last = now
    raise RuntimeError(f"{server.name} is still busy after {timeout} s")


async def measure(arguments: argparse.Namespace) -> None:
    raise_file_limit()
    with redis_server() as (redis_url, admin):
        server = start_server("ours", redis_url, metrics=True)
        try:
            await saturation(server, WARM_STREAMS, WARM_EVENTS, admin)  # the hub, pools, paths
            ratios = await pairs(server, arguments, admin)
            counted = delivered_total(server.port)
        finally:
            server.stop()
    expected = len(ratios) * arguments.events * arguments.n + WARM_STREAMS * WARM_EVENTS
    print(f"metrics on: {counted:,.0f} deliveries counted (at least {expected:,} expected)")
    if counted < expected:
        raise SystemExit("the server with metrics on did not count every delivery")
    logs = [math.log(ratio) for ratio in ratios]
    mean, spread = statistics.mean(logs), 2 * statistics.stdev(logs) / math.sqrt(len(logs))
    print(
        f"CPU per delivery, metrics on / off: median {statistics.median(ratios):.3f}, "
        f"geometric mean {math.exp(mean):.3f} (about 95% within "
        f"{math.exp(mean - spread):.3f} to {math.exp(mean + spread):.3f}); "
        f"pairs from {min(ratios):.3f} to {max(ratios):.3f}, {len(ratios)} pairs"
    )


def switch(server: Server, side: str) -> None:
    """Turn the server's counting on or off (``bench.app``'s ``/metrics/switch``)."""
    url = f"http://127.0.0.1:{server.port}/metrics/switch?on={int(side == 'on')}"
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10):
        pass


def hooks() -> None:
    """Microseconds per call of the hooks a fan-out makes, metrics on, multiprocess mode."""
    directory = tempfile.mkdtemp(prefix="bench-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory  # read when prometheus_client loads
    try:
        from flask_sse import metrics

        metrics.enable()
        calls = 100_000
        for name, hook in (
            ("fanned_out (the hub, once per event)", lambda: metrics.fanned_out(0.0, 1000)),
            ("written (a stream, at most once a second)", lambda: metrics.written(50)),
        ):
            seconds = min(timeit.repeat(hook, number=calls, repeat=5))
            print(f"{name}: {1e6 * seconds / calls:.2f} us per call")
    finally:
        shutil.rmtree(directory)


async def pairs(server: Server, arguments: argparse.Namespace, admin: redis.Redis) -> list[float]:
    ratios = []
    for number in range(arguments.pairs):
        order = ("off", "on") if number % 2 == 0 else ("on", "off")
        cost = {}
        for side in order:
            switch(server, side)
            result = await saturation(server, arguments.n, arguments.events, admin)
            if result["lost"] or result["duplicated"] or result["out_of_order"]:
                raise SystemExit(f"metrics {side}: {result}")
            cost[side] = result["cpu_us_per_delivery"]
            wait_idle(server)
        ratios.append(cost["on"] / cost["off"])
        print(
            f"pair {number + 1}: off {cost['off']:.2f} us, on {cost['on']:.2f} us, "
            f"on / off {ratios[-1]:.3f}",
            flush=True,
        )
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=10, help="off/on pairs of runs")
    parser.add_argument("-n", type=int, default=1000, help="streams on the channel")
    parser.add_argument("--events", type=int, default=1000, help="events per run")
    parser.add_argument("--hooks", action="store_true", help="time the counting calls only")
    arguments = parser.parse_args()
    if arguments.hooks:
        hooks()
    else:
        asyncio.run(measure(arguments))


if __name__ == "__main__":
    main()

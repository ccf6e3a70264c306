"""Where a worker's memory per open stream goes: ``python -m bench.memory [N]``.

Two servers of this project (``--server``: the gevent worker, or the one
that parks streams), one worker each, N idle streams on one
channel. The first gives the RSS per stream, as ``python -m bench`` measures
it. The second traces every Python allocation (``tracemalloc``, which
costs memory of its own, hence the first) and reports what the streams
added, by the package that allocated it, and the C stacks the streams'
greenlets keep saved while they wait (greenlet copies them into memory
allocated through Python, so they are inside the traced figures too).
What RSS has beyond the traced total is the C side: the allocator's
overhead and free space, libev's watchers, and interpreter internals.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tracemalloc
import urllib.request
from collections import defaultdict
from typing import Any

#: Where an allocation's file lives, by the first of these parts in its path.
AREAS = ("flask_sse", "gevent", "gunicorn", "werkzeug", "flask", "redis", "greenlet")


def start_tracing() -> None:
    tracemalloc.start()


def area_of(filename: str) -> str:
    parts = filename.replace("\\", "/").split("/")
    for area in AREAS:
        if area in parts:
            return area
    if "site-packages" in parts:
        return "other packages"
    if filename.startswith(sys.base_prefix) or filename.startswith("<"):
        return "python (stdlib, interpreter)"
    return "other"


def heap_view() -> tuple[str, dict[str, str]]:
    """The traced allocations by area, and the greenlets' saved stacks (bytes)."""
    gc.collect()
    areas: dict[str, int] = defaultdict(int)
    for statistic in tracemalloc.take_snapshot().statistics("filename"):
        areas[area_of(statistic.traceback[0].filename)] += statistic.size
    from greenlet import greenlet  # type: ignore[import-untyped]

    saved = [item._stack_saved for item in gc.get_objects() if isinstance(item, greenlet)]
    body = {"areas": areas, "stacks": sum(saved), "greenlets": len(saved)}
    return json.dumps(body), {"Content-Type": "application/json"}


def heap(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/heap", timeout=120) as response:
        result: dict[str, Any] = json.load(response)
        return result


async def measure(n: int, name: str = "ours") -> None:
    from .load import Tally, close, connect
    from .servers import raise_file_limit, redis_server, rss_kib, start_server

    raise_file_limit()
    with redis_server() as (redis_url, admin):
        plain = start_server(name, redis_url)
        try:
            close(await connect(plain.port, 1, Tally(), admin))  # the hub and its pools exist
            before = rss_kib(plain.pid)
            streams = await connect(plain.port, n, Tally(), admin)
            rss_per_stream = (rss_kib(plain.pid) - before) * 1024 / n
            close(streams)
        finally:
            plain.stop()
        traced = start_server(name, redis_url, settings={"HEAP": "1"})
        try:
            close(await connect(traced.port, 1, Tally(), admin))
            first = heap(traced.port)
            streams = await connect(traced.port, n, Tally(), admin)
            second = heap(traced.port)
            close(streams)
        finally:
            traced.stop()
    per_stream = {
        area: (second["areas"].get(area, 0) - first["areas"].get(area, 0)) / n
        for area in set(first["areas"]) | set(second["areas"])
    }
    total = sum(per_stream.values())
    stacks = (second["stacks"] - first["stacks"]) / n
    print(f"| memory per open stream, N={n:,} | bytes |")
    print("|---|---|")
    print(f"| RSS (without tracing) | {rss_per_stream:,.0f} |")
    print(f"| Python allocations, traced | {total:,.0f} |")
    for area, size in sorted(per_stream.items(), key=lambda item: -item[1]):
        if abs(size) >= 1:
            print(f"| - allocated in {area} | {size:,.0f} |")
    print(f"| of which greenlets' saved C stacks | {stacks:,.0f} |")
    print(f"| RSS beyond the traced allocations | {rss_per_stream - total:,.0f} |")
    print(f"greenlets: {first['greenlets']} before, {second['greenlets']} after")


def main() -> None:
    from .servers import OURS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, nargs="?", default=10_000, help="open streams")
    parser.add_argument(
        "--server", choices=OURS, default="ours",
        help="ours: gunicorn -k gevent; ours parked: -k flask_sse.worker.GeventWorker",
    )
    arguments = parser.parse_args()
    asyncio.run(measure(arguments.n, arguments.server))


if __name__ == "__main__":
    main()

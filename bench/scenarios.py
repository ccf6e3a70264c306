"""The benchmark's scenarios, each run against one server (see ``bench.run``)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import redis

from .load import Tally, close, connect, deliver, losses, percentile, settled
from .servers import NCHAN, ROOT, Server, cpu_seconds, rss_kib


async def latency(
    server: Server, n: int, rate: float, count: int, admin: redis.Redis
) -> dict[str, Any]:
    """N subscribers, ``count`` events at a fixed ``rate``: publish-to-receive latency."""
    await settled(server)
    tally = Tally(record_latency=True)
    subscribers = await connect(server.port, n, tally, admin)
    run = await deliver(server, subscribers, count, rate)
    close(subscribers)
    samples = tally.latencies
    return {
        "p50_ms": 1000 * percentile(samples, 0.50),
        "p99_ms": 1000 * percentile(samples, 0.99),
        "max_ms": 1000 * max(samples, default=float("nan")),
        "cpu_us_per_delivery": 1e6 * run["cpu"] / max(1, run["delivered"]),
        **losses(subscribers, count),
    }


async def saturation(server: Server, n: int, count: int, admin: redis.Redis) -> dict[str, Any]:
    """N subscribers, ``count`` events published flat out: deliveries per second."""
    await settled(server)
    tally = Tally()
    subscribers = await connect(server.port, n, tally, admin)
    run = await deliver(server, subscribers, count, 0)
    close(subscribers)
    return {
        "deliveries_per_s": run["delivered"] / run["elapsed"],
        "cpu_us_per_delivery": 1e6 * run["cpu"] / max(1, run["delivered"]),
        **losses(subscribers, count),
    }


async def idle_then_burst(server: Server, n: int, burst: int, admin: redis.Redis) -> dict[str, Any]:
    """N idle streams (memory, Redis connections), one event to all, then a burst."""
    await settled(server)
    warm = Tally()
    close(await connect(server.port, 1, warm, admin))  # the hub and pools exist before we measure
    rss_before = rss_kib(server.pid)
    tally = Tally(record_latency=True)
    subscribers = await connect(server.port, n, tally, admin)
    rss_after = rss_kib(server.pid)
    redis_connections = len(admin.client_list()) - 1  # all but this admin connection
    await deliver(server, subscribers, 1, 0)
    reach_all = max(tally.latencies, default=float("nan"))
    tally.record_latency = False
    run = await deliver(server, subscribers, burst, 0, first=1)
    close(subscribers)
    return {
        "rss_kb_per_stream": (rss_after - rss_before) * 1.024 / n,
        "redis_connections": redis_connections,
        "reach_all_ms": 1000 * reach_all,
        "deliveries_per_s": run["delivered"] / run["elapsed"],
        "cpu_us_per_delivery": 1e6 * run["cpu"] / max(1, run["delivered"]),
        **losses(subscribers, 1 + burst),
    }


async def many_channels(
    subscribing: Server,
    publishing: Server,
    channels: int,
    events: int,
    admin: redis.Redis,
    redis_pid: int,
) -> dict[str, Any]:
    """One stream on each of ``channels`` channels, ``events`` spread over them.

    Published flat out over four keep-alive connections to ``publishing``
    (a second worker of ours, so that the subscribing worker's share shows;
    nchan's one worker does both).
    """
    await settled(subscribing)
    tally = Tally()
    subscribers = await connect(subscribing.port, channels, tally, admin, channels=channels)
    watch = {"redis": redis_pid}
    if publishing.pid != subscribing.pid:
        watch["publishing"] = publishing.pid
    run = await deliver(
        subscribing, subscribers, events, 0, publish_to=publishing, channels=channels,
        connections=4, watch=watch,
    )
    close(subscribers)
    server_cpu = run["cpu"] + run.get("cpu publishing", 0.0)
    return {
        "events_per_s": run["delivered"] / run["elapsed"],
        "server_cpu_us_per_event": 1e6 * server_cpu / events,
        "subscriber_cpu_us_per_event": 1e6 * run["cpu"] / events,
        "redis_cpu_us_per_event": 1e6 * run["cpu redis"] / events,
        **losses(subscribers, events // channels),
    }


def publish_call(
    server: Server, redis_url: str, calls: int, channels: int, redis_pid: int
) -> dict[str, Any]:
    """What one publish costs the calling process, the server (nchan's) and Redis."""
    from .publish_call import WARM_UP

    kind, target = ("nchan", str(server.port)) if server.name in NCHAN else ("ours", redis_url)
    server_before, redis_before = cpu_seconds(server.pid), cpu_seconds(redis_pid)
    finished = subprocess.run(
        [sys.executable, "-m", "bench.publish_call", kind, target, str(calls), str(channels)],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )
    made = calls + WARM_UP
    caller, user, system = map(float, finished.stdout.split())
    figures = {
        "caller_us": caller,
        "caller_user_us": user,
        "caller_system_us": system,
        "redis_us": 1e6 * (cpu_seconds(redis_pid) - redis_before) / made,
    }
    if server.name in NCHAN:
        figures["server_us"] = 1e6 * (cpu_seconds(server.pid) - server_before) / made
    return figures

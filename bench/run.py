"""Fan-out benchmark: this project, flask-sse 1.0.0 and a gevent ceiling, side by side.

``python -m bench`` starts its own redis-server on a loopback port, then
serves each server in turn on ONE gevent worker, and drives it from one
asyncio process with raw protocols (N subscribers on one channel) while a
publisher process posts events carrying their sequence number and publish
time. Per server it reports deliveries per second, the worker's CPU time per
delivery (from ``/proc/<pid>/stat``), publish-to-receive latency, lost and
duplicated events, RSS per open stream and the Redis connections held.

Results go to ``bench/results.json`` and ``bench/results.png``; the table is
printed. Each scenario runs ``--repeat`` times and the median is reported.
``--metrics`` serves this project with ``SSE_METRICS`` on, in prometheus_client's
multiprocess mode (as under gunicorn in production), to measure what counting costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LEGACY = BENCH / ".legacy"
SERVERS = ("ours", "flask-sse 1.0.0", "ceiling")
TICKS = os.sysconf("SC_CLK_TCK")
EVENT = re.compile(rb"data:(\d+) (\d+\.\d+)")


def raise_file_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- the servers -------------------------------------------------------------


def install_legacy() -> Path:
    """flask-sse 1.0.0 from the package index, in a folder of its own."""
    if not (LEGACY / "flask_sse.py").exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--target",
                str(LEGACY),
                "flask-sse==1.0.0",
                "six",
            ],
            check=True,
        )
    return LEGACY


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    pid: int  # the process that serves: gunicorn's worker, or the ceiling itself

    def stop(self) -> None:
        """Quick shutdown (streams are open), and make sure the worker is gone too."""
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.pid != self.process.pid:
            wait_until(lambda: not Path(f"/proc/{self.pid}").exists(), 10, "the worker to exit")


def start_server(
    name: str,
    redis_url: str,
    settings: dict[str, str] | None = None,
    metrics_dir: str | None = None,
) -> Server:
    """``name`` on one worker; ``settings`` are ``SSE_*`` keys for ``bench.app``.

    ``metrics_dir``: this project's server counts, into that (empty) directory.
    """
    port = free_port()
    env = {**os.environ, "BENCH_REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)}
    env.update({f"BENCH_{key}": value for key, value in (settings or {}).items()})
    if metrics_dir is not None:
        env.update(BENCH_METRICS="1", PROMETHEUS_MULTIPROC_DIR=metrics_dir)
    cwd = ROOT
    if name == "ceiling":
        command = [sys.executable, "-m", "bench.ceiling", str(port), redis_url]
    else:
        if name == "flask-sse 1.0.0":
            # its flask_sse.py must come before this project's flask_sse/ on the path
            cwd = install_legacy()
            env["PYTHONPATH"] = f"{cwd}{os.pathsep}{ROOT}"
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "-k",
            "gevent",
            "-w",
            "1",
            "--worker-connections",
            "20000",
            "--backlog",
            "4096",
            "--log-level",
            "warning",
            "-b",
            f"127.0.0.1:{port}",
            "bench.app:app",
        ]
    process = subprocess.Popen(command, cwd=cwd, env=env, preexec_fn=raise_file_limit)

    def answers() -> bool:
        import socket

        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_until(answers, 30, f"{name} to listen")
    pid = process.pid
    if name != "ceiling":
        children = Path(f"/proc/{pid}/task/{pid}/children")
        wait_until(lambda: children.read_text().strip() != "", 30, "gunicorn's worker")
        pid = int(children.read_text().split()[0])
    return Server(name, port, process, pid)


def delivered_total(port: int) -> float:
    """``sse_events_delivered_total`` of a server with metrics on: proof that they counted."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("sse_events_delivered_total{")
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# -- the load generator ------------------------------------------------------


@dataclass
class Tally:
    """What all subscribers of one scenario received."""

    expected: int = 0  # deliveries to wait for in the current phase
    delivered: int = 0
    latencies: list[float] = field(default_factory=list)
    record_latency: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    connected: int = 0


class Subscriber(asyncio.Protocol):
    """One SSE client on a raw socket: counts events, checks their order."""

    def __init__(self, tally: Tally, request: bytes) -> None:
        self.tally = tally
        self.request = request
        self.buffer = b""
        self.headers_done = False
        self.count = 0
        self.last = -1
        self.out_of_order = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        if not self.headers_done:
            head, separator, buffer = buffer.partition(b"\r\n\r\n")
            if not separator:
                self.buffer = head
                return
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"stream refused: {head[:100]!r}")
            self.headers_done = True
            self.tally.connected += 1
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self.buffer = buffer
            return
        region, self.buffer = buffer[:end], buffer[end + 2 :]
        events = region.count(b"data:")
        if not events:
            return
        start = region.rfind(b"data:") + 5
        seq = int(region[start : region.index(b" ", start)])
        if seq != self.last + events:
            self.out_of_order += 1
        self.last = seq
        self.count += events
        tally = self.tally
        if tally.record_latency:
            now = time.time()
            tally.latencies.extend(now - float(match[2]) for match in EVENT.finditer(region))
        tally.delivered += events
        if tally.delivered >= tally.expected:
            tally.done.set()


async def connect(port: int, count: int, tally: Tally, admin: redis.Redis) -> list[Subscriber]:
    """Open ``count`` streams; return once the server has subscribed them all.

    flask-sse 1.0.0 sends no byte (not even headers) before the first event,
    so for it "subscribed" is read from Redis: one subscription per stream.
    """
    loop = asyncio.get_running_loop()
    request = (
        b"GET /stream?channel=bench HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
    )
    subscribers = [Subscriber(tally, request) for _ in range(count)]
    gate = asyncio.Semaphore(400)

    async def open_one(subscriber: Subscriber) -> None:
        async with gate:
            await loop.create_connection(lambda: subscriber, "127.0.0.1", port)

    subscribed_before = admin.pubsub_numsub("bench")[0][1]  # flask-sse 1.0.0 leaks closed ones
    await asyncio.gather(*(open_one(subscriber) for subscriber in subscribers))
    deadline = time.monotonic() + 120
    while (
        tally.connected < count and admin.pubsub_numsub("bench")[0][1] < subscribed_before + count
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {tally.connected} of {count} streams opened")
        await asyncio.sleep(0.05)
    return subscribers


async def publish(port: int, count: int, rate: float, first: int = 0) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.publish",
        str(port),
        str(count),
        str(rate),
        str(first),
        cwd=ROOT,
    )
    if await process.wait():
        raise RuntimeError("the publisher failed")


async def deliver(
    server: Server,
    subscribers: list[Subscriber],
    count: int,
    rate: float,
    first: int = 0,
    timeout: float = 180,
) -> dict[str, float]:
    """Publish ``count`` events and wait until every subscriber has them."""
    tally = subscribers[0].tally
    tally.expected = tally.delivered + count * len(subscribers)
    tally.done.clear()
    cpu_before, started = cpu_seconds(server.pid), time.perf_counter()
    publishing = asyncio.ensure_future(publish(server.port, count, rate, first))
    try:
        await asyncio.wait_for(tally.done.wait(), timeout)
    except TimeoutError:
        pass
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(server.pid) - cpu_before
    await publishing
    delivered = count * len(subscribers) - max(0, tally.expected - tally.delivered)
    return {"elapsed": elapsed, "cpu": cpu, "delivered": delivered}


def losses(subscribers: list[Subscriber], expected: int) -> dict[str, int]:
    return {
        "lost": sum(max(0, expected - subscriber.count) for subscriber in subscribers),
        "duplicated": sum(max(0, subscriber.count - expected) for subscriber in subscribers),
        "out_of_order": sum(subscriber.out_of_order for subscriber in subscribers),
    }


def close(subscribers: list[Subscriber]) -> None:
    for subscriber in subscribers:
        if subscriber.transport is not None:
            subscriber.transport.abort()


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


# -- the scenarios -----------------------------------------------------------


async def latency(
    server: Server, n: int, rate: float, count: int, admin: redis.Redis
) -> dict[str, Any]:
    """N subscribers, ``count`` events at a fixed ``rate``: publish-to-receive latency."""
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


@dataclass
class Plan:
    """Sizes of one run; ``--quick`` shrinks them to a smoke test."""

    light: int = 100
    medium: int = 1000
    large: int = 10_000
    latency_rate: float = 20
    latency_events: int = 100
    saturation_events: dict[str, int] = field(
        default_factory=lambda: {"ours": 1000, "flask-sse 1.0.0": 150, "ceiling": 1000}
    )
    burst: int = 20


QUICK = Plan(
    light=10,
    medium=50,
    large=200,
    latency_events=10,
    saturation_events={"ours": 50, "flask-sse 1.0.0": 20, "ceiling": 50},
    burst=5,
)


async def run_server(
    name: str, redis_url: str, plan: Plan, admin: redis.Redis, metrics: bool = False
) -> dict[str, Any]:
    metrics_dir = tempfile.mkdtemp(prefix="bench-metrics-") if metrics and name == "ours" else None
    server = start_server(name, redis_url, metrics_dir=metrics_dir)
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
        if metrics_dir is not None:
            results["metrics"] = {"events_delivered": delivered_total(server.port)}
            print(f"metrics on: {results['metrics']['events_delivered']:,.0f} deliveries counted")
        return results
    finally:
        server.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir)


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
]
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
    }
    header = ["figure", *SERVERS, "ours / flask-sse", "ours / ceiling"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for scenario, key, label, style in ROWS:
        values = [median_of(runs[name], scenario, key) for name in SERVERS]
        cells = [label.format(**sizes)]
        cells += [style.format(value) if value is not None else "n/a" for value in values]
        for other in (values[1], values[2]):
            ratio = values[0] / other if values[0] is not None and other else None
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
                runs[name].append(
                    await run_server(name, redis_url, plan, admin, arguments.metrics)
                )
    table = report(runs, plan)
    print(table)
    out = Path(arguments.output)
    out.with_suffix(".json").write_text(
        json.dumps(
            {"plan": plan.__dict__, "metrics": arguments.metrics, "runs": runs, "table": table},
            indent=1,
        )
        + "\n"
    )
    plot(runs, plan, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


@contextmanager
def redis_server() -> Iterator[tuple[str, redis.Redis]]:
    """A redis-server of the benchmark's own on a loopback port: its URL and a client."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    arguments = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen([binary, *arguments], stdout=subprocess.DEVNULL)
    admin = redis.Redis(port=port)
    try:
        wait_until(lambda: _pings(admin), 10, "redis-server")
        yield f"redis://127.0.0.1:{port}/0", admin
    finally:
        admin.close()
        process.terminate()
        process.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


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
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

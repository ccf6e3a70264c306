"""The servers the benchmark runs, each on ONE worker, and the Redis they share.

- ``ours``: this project's blueprint in ``bench.app``, under ``gunicorn -k gevent``;
- ``ours parked``: the same under the package's worker, which parks established
  streams (``gunicorn -k flask_sse.worker.GeventWorker``);
- ``flask-sse 1.0.0``: the same app with the original library on the path;
- ``ceiling``: ``bench.ceiling``, the least a gevent process can do;
- ``nchan memory`` and ``nchan redis``: nginx with the nchan module, history in
  nginx's shared memory or in the same Redis (Debian's ``nginx-core`` and
  ``libnginx-mod-nchan``, which ``bash bench/setup`` installs).

Every server answers ``GET /stream?channel=C`` with an event stream and
``POST /publish?channel=C`` by publishing the body as one event's data.

Every server writes the same packets: its streams' sockets have
``TCP_NODELAY``, which gunicorn sets on every connection. nginx sets it only
on a connection kept alive between requests, never on an event stream, so
nchan is given a listening socket that has it (accepted sockets inherit it).
``nagle=True`` serves every server the other way, Nagle's algorithm on for
its streams (nchan as shipped, ours with ``SSE_TCP_NODELAY = False``),
except flask-sse 1.0.0, which gunicorn serves with ``TCP_NODELAY`` whatever
we ask.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import redis

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LEGACY = BENCH / ".legacy"
#: Worker classes other than gunicorn's gevent worker, by server.
WORKERS = {"ours parked": "flask_sse.worker.GeventWorker"}
#: This project's servers.
OURS = ("ours", "ours parked")
SERVERS = ("ours", "ours parked", "flask-sse 1.0.0", "ceiling", "nchan memory", "nchan redis")
NCHAN = ("nchan memory", "nchan redis")
TICKS = os.sysconf("SC_CLK_TCK")
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
SETUP = "bash bench/setup"
#: events each server keeps per channel for resuming clients (SSE_HISTORY's default)
HISTORY = 1000


def raise_file_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
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
    pid: int  # the process that serves: gunicorn's or nginx's worker, or the ceiling itself
    #: the server's temporary files (nginx's configuration and logs, the metrics'
    #: multiprocess directory), removed by :meth:`stop`
    directory: Path | None = None

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
        if self.directory is not None:
            shutil.rmtree(self.directory)


def start_server(
    name: str,
    redis_url: str,
    settings: dict[str, str] | None = None,
    metrics: bool = False,
    nagle: bool = False,
) -> Server:
    """``name`` on one worker; ``settings`` are ``SSE_*`` keys for ``bench.app``.

    ``metrics``: this project's server counts, in prometheus_client's
    multiprocess mode (a directory of the server's own). ``nagle``: streams
    without ``TCP_NODELAY`` (see the module's docstring).
    """
    port = free_port()
    env = {**os.environ, "BENCH_REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)}
    if nagle:  # read by bench.app (as SSE_TCP_NODELAY) and by bench.ceiling
        env["BENCH_SSE_TCP_NODELAY"] = "false"
    env.update({f"BENCH_{key}": value for key, value in (settings or {}).items()})
    cwd, directory, inherited = ROOT, None, None
    if metrics:
        directory = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
        env.update(BENCH_METRICS="1", PROMETHEUS_MULTIPROC_DIR=str(directory))
    if name in NCHAN:
        directory = Path(tempfile.mkdtemp(prefix="bench-nchan-"))
        store = redis_url if name == "nchan redis" else None
        (directory / "nginx.conf").write_text(nchan_config(port, directory, store))
        command = ["nginx", "-p", str(directory), "-c", "nginx.conf", "-e", "error.log"]
        if not nagle:
            inherited = nodelay_listener(port)
            env["NGINX"] = f"{inherited.fileno()};"  # nginx's variable for inherited listeners
    elif name == "ceiling":
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
            WORKERS.get(name, "gevent"),
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
    passed = (inherited.fileno(),) if inherited is not None else ()
    process = subprocess.Popen(
        command, cwd=cwd, env=env, preexec_fn=raise_file_limit, pass_fds=passed
    )
    if inherited is not None:
        inherited.close()  # nginx holds its own copy

    def answers() -> bool:
        if process.poll() is not None:
            log = (directory / "error.log").read_text() if directory is not None else ""
            raise RuntimeError(f"{name} exited with {process.returncode} {log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_until(answers, 30, f"{name} to listen")
    pid = process.pid
    if name != "ceiling":  # gunicorn's and nginx's masters have one worker
        children = Path(f"/proc/{pid}/task/{pid}/children")
        wait_until(lambda: children.read_text().strip() != "", 30, "gunicorn's worker")
        pid = int(children.read_text().split()[0])
    server = Server(name, port, process, pid, directory)
    if name in NCHAN:
        try:
            wait_until(lambda: _nchan_ready(port), 30, f"{name} to reach its store")
        except RuntimeError as error:
            log = (directory / "error.log").read_text() if directory is not None else ""
            server.stop()
            raise RuntimeError(f"{error}; its error log:\n{log}") from None
    return server


def _nchan_ready(port: int) -> bool:
    """Whether nchan answers: until its worker has connected to Redis, every stream
    and publish gets a 503 (the listening socket is ours, so accepting proves nothing)."""
    url = f"http://127.0.0.1:{port}/publish?channel=bench-ready"
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except urllib.error.HTTPError as error:
        return error.code != 503  # 404: no such channel yet, the store answered
    except OSError:
        return False


def nodelay_listener(port: int) -> socket.socket:
    """A listening socket on ``port`` whose accepted connections have ``TCP_NODELAY``."""
    listener = socket.socket()
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    return listener


def nchan_config(port: int, directory: Path, redis_url: str | None) -> str:
    """nginx with one worker; nchan keeps HISTORY events per channel, as ours does.

    ``redis_url``: nchan's Redis store (history and fan-out between servers in
    Redis, as ours); None: its memory store (one server only).
    """
    if shutil.which("nginx") is None or not NCHAN_MODULE.exists():
        raise SystemExit(f"nginx with the nchan module is not installed: {SETUP}")
    store = upstream = ""
    if redis_url is not None:
        address = urlsplit(redis_url)
        upstream = f"upstream store {{ nchan_redis_server redis://{address.netloc}; }}"
        store = "nchan_redis_pass store;"
    user = "user root;" if os.geteuid() == 0 else ""  # its worker writes our temporary files
    temporary = " ".join(
        f"{kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
load_module {NCHAN_MODULE};
{user}
daemon off;
worker_processes 1;
worker_rlimit_nofile 65536;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} warn;
events {{ worker_connections 30000; }}
http {{
    access_log off;
    keepalive_requests 1000000;  # as gunicorn: no limit on one connection's requests
    {temporary}
    {upstream}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /stream {{
            nchan_subscriber eventsource;
            nchan_subscriber_first_message newest;  # as ours without a Last-Event-ID
            nchan_channel_id $arg_channel;
            {store}
        }}
        location = /publish {{
            nchan_publisher;
            nchan_channel_id $arg_channel;
            nchan_message_buffer_length {HISTORY};
            nchan_message_timeout 1d;
            {store}
        }}
    }}
}}
"""


def delivered_total(port: int) -> float:
    """``sse_events_delivered_total`` of a server with metrics on: proof that they counted."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("sse_events_delivered_total{")
    )


def open_sockets(pid: int) -> int:
    """The sockets a process holds: its listener, its Redis links, its clients."""
    count = 0
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(entry).startswith("socket:")
        except OSError:
            pass  # closed meanwhile
    return count


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")



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



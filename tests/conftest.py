"""Fixtures: an app on the embedded broker, a real redis-server, a real gunicorn.

The real servers are started by fixtures on free loopback ports. Without a
``redis-server`` binary the integration tests are skipped on a developer's
machine, but fail under ``CI=true``: CI must never pass by running nothing.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import redis
import redis.cluster
from flask import Blueprint, Flask
from flask.testing import FlaskClient

from flask_sse import Publisher, refusal, registry, sse

from .browser import Browser
from .sse_client import TestClientStream, wait_for

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    """A clock the test moves by hand: ``clock.now += 20``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _our_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("flask-sse")]


@pytest.fixture(autouse=True)
def _close_hubs() -> Iterator[None]:
    """Every test ends with no hub, thread or connection of this process left over.

    And with no spell of trouble (``refusal.trouble``, process-wide) going on,
    so that the next test's first refusal waits ``SSE_RETRY``.
    """
    yield
    registry.close_all()
    refusal.trouble.ended()
    assert _our_threads() == [], "a flask-sse thread outlived registry.close_all()"


@pytest.fixture(autouse=True, scope="session")
def _nothing_outlives_the_suite() -> Iterator[None]:
    """After the last test no flask-sse thread is alive, so nothing can log at exit."""
    yield
    registry.close_all()
    assert _our_threads() == []


@pytest.fixture
def memory_url() -> str:
    """An embedded broker of this test's own."""
    return f"memory://test-{uuid.uuid4().hex}"


class MakeApp(Protocol):
    def __call__(
        self,
        redis_url: str | None = None,
        blueprint: Blueprint = sse,
        url_prefix: str = "/stream",
        **settings: Any,
    ) -> Flask: ...


@pytest.fixture
def make_app(memory_url: str) -> MakeApp:
    """Build an app with a stream blueprint registered; ``settings`` go into its config.

    By default on this test's embedded broker, with keepalives every 0.2 s so
    a test that reads a silent stream is woken quickly. Registration checks
    the settings, so a bad one raises here.
    """

    def make(
        redis_url: str | None = None,
        blueprint: Blueprint = sse,
        url_prefix: str = "/stream",
        **settings: Any,
    ) -> Flask:
        app = Flask(__name__)
        app.config.update(
            {"TESTING": True, "SSE_REDIS_URL": redis_url or memory_url, "SSE_KEEPALIVE": 0.2, **settings}
        )
        app.register_blueprint(blueprint, url_prefix=url_prefix)
        return app

    return make


@pytest.fixture
def app(make_app: MakeApp) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


class OpenClientStream(Protocol):
    def __call__(
        self,
        path: str = "/stream",
        *,
        headers: dict[str, str] | None = None,
        client: FlaskClient | None = None,
    ) -> TestClientStream: ...


@pytest.fixture
def client_stream(request: pytest.FixtureRequest) -> Iterator[OpenClientStream]:
    """Open streams through a test client (the ``client`` fixture's by default).

    Each must be answered 200. Every stream still open when the test ends is
    closed, so its channels are released before ``_close_hubs`` checks.
    """
    opened: list[TestClientStream] = []

    def open_client_stream(
        path: str = "/stream",
        *,
        headers: dict[str, str] | None = None,
        client: FlaskClient | None = None,
    ) -> TestClientStream:
        if client is None:
            client = request.getfixturevalue("client")
        response = client.get(path, headers=headers, buffered=False)
        assert response.status_code == 200, response.get_data(as_text=True)
        stream = TestClientStream(response)
        opened.append(stream)
        return stream

    yield open_client_stream
    for stream in opened:
        stream.close()


def _need(binary: str, package: str = "redis-server") -> str:
    path = shutil.which(binary)
    if path is None:
        message = f"{binary} is not installed (Debian: apt-get install {package})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@dataclass
class RedisServer:
    """A redis-server of the tests' own; ``restart`` keeps its port and data."""

    port: int
    arguments: list[str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def start(self) -> None:
        command = [_need("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1"]
        self.process = subprocess.Popen(command + self.arguments, stdout=subprocess.DEVNULL)
        with self.client() as probe:

            def answers() -> bool:
                try:
                    return bool(probe.ping())
                except redis.ConnectionError:
                    return False

            wait_for(answers, what=f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(free_port(), ["--save", "", "--appendonly", "no"])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own that keeps every write across a restart."""
    arguments = ["--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path)]
    server = RedisServer(free_port(), arguments)
    server.start()
    yield server
    server.stop()


@dataclass
class RedisCluster:
    """Three masters and three replicas on loopback ports, made with redis-cli."""

    servers: list[RedisServer]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.servers[0].port}"

    def client(self) -> redis.cluster.RedisCluster:
        return redis.cluster.RedisCluster(host="127.0.0.1", port=self.servers[0].port)

    def nodes(self) -> list[dict[str, str]]:
        """CLUSTER NODES as seen from any node that answers."""
        for server in self.servers:
            try:
                with server.client() as client:
                    table = client.execute_command("CLUSTER NODES")
            except redis.ConnectionError:
                continue
            return [
                {"id": node["node_id"], "addr": address, "flags": node["flags"],
                 "master": node["master_id"]}
                for address, node in table.items()
            ]
        raise AssertionError("no cluster node answers")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def free_cluster_port() -> int:
    """A free port whose cluster bus port (10,000 higher) is free too."""
    for port in random.sample(range(20000, 55000), 200):
        try:
            with socket.socket() as first, socket.socket() as second:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise AssertionError("no free pair of ports for a cluster node")


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    servers = []
    for number in range(6):
        folder = tmp_path / f"node{number}"
        folder.mkdir()
        arguments = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "1000", "--cluster-replica-validity-factor", "0",
                     "--repl-diskless-sync-delay", "0",
                     "--dir", str(folder), "--save", "",
                     "--appendonly", "no"]
        servers.append(RedisServer(free_cluster_port(), arguments))
    cluster = RedisCluster(servers)
    try:
        for server in servers:
            server.start()
        addresses = [f"127.0.0.1:{server.port}" for server in servers]
        subprocess.run(
            [_need("redis-cli"), "--cluster", "create", *addresses, "--cluster-replicas", "1",
             "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, timeout=60,
        )

        def ready() -> bool:
            with servers[0].client() as client:
                info = client.execute_command("CLUSTER INFO")
            replicas = [node for node in cluster.nodes() if "slave" in node["flags"]]
            if info.get("cluster_state") != "ok" or len(replicas) != 3:
                return False
            for replica in replicas:  # in sync with their masters, so a failover keeps the data
                port = int(replica["addr"].rsplit(":", 1)[1])
                with redis.Redis(port=port) as client:
                    if client.info("replication").get("master_link_status") != "up":
                        return False
            return True

        wait_for(ready, timeout=30, what="the cluster to settle")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The real server, emptied for this test."""
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url


@dataclass
class Gunicorn:
    port: int
    process: subprocess.Popen[bytes]

    def request(
        self, method: str, path: str, body: object = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, object]]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            payload = None if body is None else json.dumps(body)
            all_headers = {"Content-Type": "application/json", **(headers or {})}
            connection.request(method, path, body=payload, headers=all_headers)
            response = connection.getresponse()
            text = response.read()
            return response.status, json.loads(text) if text.startswith(b"{") else {}
        finally:
            connection.close()

    def count(self, path: str) -> int:
        """The ``{"count": n}`` a GET of ``path`` answers (open streams, subscribers)."""
        status, body = self.request("GET", path)
        assert status == 200
        count = body["count"]
        assert isinstance(count, int)
        return count

    @property
    def worker_pid(self) -> int:
        status, body = self.request("GET", "/pid")
        assert status == 200
        pid = body["pid"]
        assert isinstance(pid, int)
        return pid


class SteadyPublisher:
    """Publishes ``0, 1, 2...`` to each of ``channels`` every ``interval`` seconds, from a thread."""

    def __init__(self, redis_url: str, channels: list[str], interval: float = 0.02) -> None:
        self.publisher = Publisher(redis_url)
        self.channels = channels
        self.interval = interval
        self.published: dict[str, int] = dict.fromkeys(channels, 0)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            for channel in self.channels:
                self.publisher.publish(self.published[channel], channel=channel)
                self.published[channel] += 1

    def finish(self) -> dict[str, int]:
        """Stop publishing; how many events went to each channel."""
        self.stop.set()
        self.thread.join(10)
        return dict(self.published)


@pytest.fixture
def steady_publisher() -> Iterator[Callable[..., SteadyPublisher]]:
    """Start :class:`SteadyPublisher` threads, each stopped by the end of the test."""
    started: list[SteadyPublisher] = []

    def start(redis_url: str, channels: list[str], interval: float = 0.02) -> SteadyPublisher:
        started.append(SteadyPublisher(redis_url, channels, interval))
        return started[-1]

    yield start
    for publisher in started:
        publisher.finish()


@pytest.fixture
def browser() -> Iterator[Browser]:
    """A headless Chromium (Debian's ``chromium`` and ``chromium-driver``), closed after the test."""
    chromium = _need("chromium", "chromium")
    chromedriver = _need("chromedriver", "chromium-driver")
    started = Browser(chromedriver, chromium, free_port())
    yield started
    started.close()


#: The worker classes a stream is served by: gunicorn's gevent worker, and the
#: package's, which parks established streams (``flask_sse.worker``).
WORKERS = {"gevent": "gevent", "parking": "flask_sse.worker.GeventWorker"}


def serving_environ(redis_url: str, **settings: object) -> dict[str, str]:
    """The environment of a server of ``tests.serve:app`` on ``redis_url``, with ``SSE_*``
    ``settings`` for its config."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SSE_TEST_SETTINGS": json.dumps({"SSE_REDIS_URL": redis_url, **settings}),
        "REDIS_URL": redis_url,
    }


@pytest.fixture
def gunicorn(request: pytest.FixtureRequest) -> Iterator[Callable[..., Gunicorn]]:
    """Start an app (``tests.serve:app``) under ``gunicorn -k gevent`` (one worker).

    Parametrized indirectly with a key of :data:`WORKERS`, under that worker class.
    """
    worker = WORKERS[getattr(request, "param", "gevent")]
    started: list[Gunicorn] = []

    def start(
        redis_url: str,
        app: str = "tests.serve:app",
        options: tuple[str, ...] = ("-w", "1"),
        env: dict[str, str] | None = None,
        log: Path | None = None,
        **settings: object,
    ) -> Gunicorn:
        """``settings`` are ``SSE_*`` keys for ``tests.serve``'s config; ``env`` more variables.

        ``log``: a file for the server's stderr (its log), instead of the test's output.
        """
        port = free_port()
        env = {**serving_environ(redis_url, **settings), **(env or {})}
        command = [
            sys.executable, "-m", "gunicorn", "-k", worker, *options,
            "--worker-connections", "2000", "--graceful-timeout", "2",
            "-b", f"127.0.0.1:{port}", app,
        ]
        stderr = log.open("ab") if log is not None else None
        process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=stderr)
        if stderr is not None:
            stderr.close()  # the server holds its own copy
        server = Gunicorn(port, process)
        started.append(server)

        _wait_until_it_answers(server, "gunicorn")
        return server

    yield start
    for server in started:
        server.process.send_signal(signal.SIGINT)  # quick shutdown: streams are still open
    for server in started:
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture
def waitress() -> Iterator[Callable[..., Gunicorn]]:
    """Start ``tests.serve:app`` under waitress (threads, no gunicorn).

    The server is described as gunicorn's are (:class:`Gunicorn`: its port,
    process and requests), which is all the tests need of it.
    """
    started: list[Gunicorn] = []

    def start(
        redis_url: str, options: tuple[str, ...] = (), log: Path | None = None,
        **settings: object,
    ) -> Gunicorn:
        """``options`` for waitress's command line; ``settings`` and ``log`` as for gunicorn."""
        port = free_port()
        command = [
            sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", *options,
            "tests.serve:app",
        ]
        stderr = log.open("ab") if log is not None else None
        process = subprocess.Popen(
            command, cwd=ROOT, env=serving_environ(redis_url, **settings), stderr=stderr
        )
        if stderr is not None:
            stderr.close()  # the server holds its own copy
        server = Gunicorn(port, process)
        started.append(server)
        _wait_until_it_answers(server, "waitress")
        return server

    yield start
    for server in started:
        server.process.terminate()
    for server in started:
        server.process.wait(10)


def _wait_until_it_answers(server: Gunicorn, name: str) -> None:
    """Until ``server`` answers a request; fail if its process exits first."""

    def answers() -> bool:
        if server.process.poll() is not None:
            raise AssertionError(f"{name} exited with {server.process.returncode}")
        try:
            return server.request("GET", "/")[0] < 500
        except OSError:
            return False

    wait_for(answers, timeout=30, what=f"{name} to answer")

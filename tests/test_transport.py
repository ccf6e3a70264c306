"""What the server side of a stream must get right under real gunicorn: the body
is never bypassed when it is transformed, gone clients are noticed in time
whatever their socket and channel, and keepalives keep their time while Redis
is frozen.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from flask_sse import Publisher

from .conftest import ROOT, Gunicorn, RedisServer
from .sse_client import Parser, StreamClient, open_stream, wait_for

pytestmark = pytest.mark.integration

Start = Callable[..., Gunicorn]


def test_a_compressing_after_request_hook_gets_a_valid_compressed_stream(
    gunicorn: Start, redis_url: str
) -> None:
    server = gunicorn(redis_url, TEST_GZIP=True)
    stream = StreamClient(server.port, "/stream?channel=zipped", {"Accept-Encoding": "gzip"})
    assert stream.status == 200 and stream.headers["Content-Encoding"] == "gzip"
    decompressor = zlib.decompressobj(wbits=31)
    parser, text = Parser(), ""

    def events_so_far() -> int:
        nonlocal text
        piece = stream.response.read1(1 << 16)  # raises if nothing comes within the timeout
        text += decompressor.decompress(piece).decode()  # raw bytes mixed in would fail here
        *lines, text = text.split("\n")
        for line in lines:
            parser.feed_line(line)
        return len(parser.events)

    wait_for(lambda: parser.retry == 3000 or events_so_far() < 0, what="the opening lines")
    publisher = Publisher(redis_url)
    for number in range(20):
        publisher.publish(f"event {number}", channel="zipped")
    wait_for(lambda: events_so_far() >= 20, what="20 events")
    assert [event.data for event in parser.events] == [f"event {n}" for n in range(20)]
    stream.close()


def test_a_closed_client_on_a_high_descriptor_is_released_within_the_keepalive(
    gunicorn: Start, redis_url: str
) -> None:
    keepalive = 2.0
    server = gunicorn(redis_url, SSE_KEEPALIVE=keepalive, TEST_HOLD_FDS=1100)
    stream = StreamClient(server.port, "/stream?channel=high")
    assert server.count("/subscribers/high") == 1
    while stream.read_line() != ":\n":  # just after a keepalive: the next one is a full period away
        pass
    stream.close()
    closed = time.monotonic()
    wait_for(lambda: server.count("/subscribers/high") == 0, timeout=keepalive * 1.5,
             what="the closed client to be released")
    print(f"released {time.monotonic() - closed:.2f} s after the close (keepalive {keepalive} s)")


def test_a_half_closed_client_on_a_busy_channel_is_released(
    gunicorn: Start, redis_url: str
) -> None:
    keepalive = 1.0
    server = gunicorn(redis_url, SSE_KEEPALIVE=keepalive)
    client = socket.create_connection(("127.0.0.1", server.port))
    client.sendall(b"GET /stream?channel=busy HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    wait_for(lambda: server.count("/subscribers/busy") == 1, what="the stream to open")
    client.shutdown(socket.SHUT_WR)  # gone, as far as it will ever read; writes still succeed
    publisher = Publisher(redis_url)
    deadline = time.monotonic() + keepalive * 3
    try:
        while server.count("/subscribers/busy") != 0:
            assert time.monotonic() < deadline, "a gone client on a busy channel was kept"
            publisher.publish("more than once per keepalive", channel="busy")
            time.sleep(0.1)  # the publishing pace, not a wait for a condition
    finally:
        client.close()


def test_keepalives_keep_their_time_while_redis_is_frozen(
    gunicorn: Start, durable_redis: RedisServer
) -> None:
    keepalive = 1.0
    server = gunicorn(durable_redis.url, SSE_KEEPALIVE=keepalive)
    first = StreamClient(server.port, "/stream?channel=frozen", timeout=20)
    while first.read_line() != "\n":
        pass
    assert durable_redis.process is not None
    os.kill(durable_redis.process.pid, signal.SIGSTOP)
    try:
        # a second stream changes the counts, so they are reported while Redis is frozen
        second = StreamClient(server.port, "/stream?channel=frozen", timeout=20)
        arrivals = []
        started = time.monotonic()
        while time.monotonic() - started < 7:
            if first.read_line() == ":\n":
                arrivals.append(time.monotonic())
        second.close()
    finally:
        os.kill(durable_redis.process.pid, signal.SIGCONT)
    gaps = [later - earlier for earlier, later in zip([started, *arrivals[:-1]], arrivals, strict=True)]
    print("keepalive gaps while Redis was frozen (s):", json.dumps([round(g, 2) for g in gaps]))
    assert max(gaps) < keepalive * 1.5
    first.close()


def test_memory_under_several_workers_is_an_error_in_the_log(
    gunicorn: Start, tmp_path: Path
) -> None:
    log = tmp_path / "gunicorn.log"
    server = gunicorn("memory://", options=("-w", "2"), log=log)
    stream = StreamClient(server.port, "/stream?channel=news")
    assert stream.status == 200
    wait_for(lambda: "embedded broker of ONE process" in log.read_text(), what="the error in the log")
    assert "run a single worker (-w 1)" in log.read_text()
    stream.close()


def test_the_procfile_refuses_to_start_without_a_redis_url() -> None:
    (line,) = (ROOT / "Procfile").read_text().splitlines()
    command = line.removeprefix("web: ")
    env = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
    result = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "set REDIS_URL to a Redis server" in result.stderr


def test_a_sync_worker_refuses_streams_with_a_503_that_says_why(
    gunicorn: Start, redis_url: str
) -> None:
    server = gunicorn(redis_url, options=("-k", "sync", "-w", "1"))
    stream = StreamClient(server.port, "/stream?channel=news")
    assert stream.status == 503
    assert "gunicorn -k gevent" in json.loads(stream.body())["error"]
    stream.close()
    assert server.request("GET", "/pid")[0] == 200  # the worker is free for other requests


def test_waitress_serves_streams_and_says_once_in_the_log_what_limits_it(
    waitress: Start, redis_url: str, tmp_path: Path
) -> None:
    """Under waitress (threads, no gunicorn) streams get their events, and its limit is told."""
    log = tmp_path / "waitress.log"
    server = waitress(redis_url, options=("--threads=8",), log=log)
    streams = [open_stream(server, "channel=waitress") for _ in range(2)]
    assert [stream.status for stream in streams] == [200, 200]
    Publisher(redis_url).publish("through waitress", channel="waitress")
    assert [stream.next_event().data for stream in streams] == ["through waitress"] * 2
    wait_for(lambda: "waitress serves only" in log.read_text(), what="the warning")
    assert log.read_text().count("waitress serves only") == 1
    for stream in streams:
        stream.close()


def test_a_threaded_worker_says_once_in_the_log_what_limits_it(
    gunicorn: Start, redis_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "gunicorn.log"
    server = gunicorn(redis_url, options=("-k", "gthread", "--threads", "4", "-w", "1"), log=log)
    streams = [StreamClient(server.port, "/stream?channel=news") for _ in range(2)]
    assert [stream.status for stream in streams] == [200, 200]
    wait_for(lambda: "threaded (gthread) worker" in log.read_text(), what="the warning")
    assert log.read_text().count("threaded (gthread) worker") == 1
    for stream in streams:
        stream.close()

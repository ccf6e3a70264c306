"""Nothing accepted is lost: resume, the seam, Redis faults, slow clients (real parts).

Each test counts, per client, what it received against what was published:
the closing assertions are "none lost, none twice, in order".
"""

from __future__ import annotations

import functools
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
import redis

from flask_sse import Publisher

from .conftest import ROOT, Gunicorn, RedisServer
from .sse_client import Parser, open_stream, wait_for

pytestmark = pytest.mark.integration

Start = Callable[..., Gunicorn]


def in_thread(target: Callable[[], None]) -> Callable[[], None]:
    """Run ``target`` in a thread; the returned join re-raises what it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join() -> None:
        thread.join(120)
        assert not thread.is_alive(), "a client thread hung"
        if errors:
            raise errors[0]

    return join


@pytest.mark.parametrize("channels", [["one"], ["x", "y", "z"]])
def test_read_half_disconnect_and_resume_gets_exactly_the_rest(
    gunicorn: Start, redis_url: str, channels: list[str]
) -> None:
    server = gunicorn(redis_url)
    query = "&".join(f"channel={channel}" for channel in channels)
    publisher = Publisher(redis_url)
    stream = open_stream(server, query)
    for number in range(100):
        if number == 50:
            seen = stream.events(50)
            stream.close()
        publisher.publish(str(number), channel=channels[number % len(channels)])
    again = open_stream(server, query, last_event_id=seen[-1].last_event_id)
    rest = again.events(50)
    again.close()
    assert [event.data for event in seen + rest] == [str(number) for number in range(100)]


def test_the_seam_while_50_clients_reconnect_under_continuous_publishing(
    gunicorn: Start, redis_url: str
) -> None:
    server = gunicorn(redis_url)
    total = 600
    publisher = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys, time\n"
            "from flask_sse import Publisher\n"
            "publisher = Publisher(sys.argv[1])\n"
            "for number in range(int(sys.argv[2])):\n"
            "    publisher.publish(str(number), channel='seam')\n"
            "    time.sleep(1 / 150)\n",
            redis_url, str(total),
        ],
        cwd=ROOT,
    )
    received: dict[int, list[int]] = {}
    connections = []

    def client(number: int) -> None:
        rng = random.Random(number)
        numbers = received[number] = []
        last_event_id = None
        while not numbers or numbers[-1] != total - 1:
            stream = open_stream(server, "channel=seam", last_event_id=last_event_id)
            connections.append(number)
            last_event_id = stream.parser.last_event_id
            for _ in range(rng.randint(1, 40)):
                event = stream.next_event()
                numbers.append(int(event.data))
                last_event_id = event.last_event_id
                if numbers[-1] == total - 1:
                    break
            stream.close()

    joins = [in_thread(functools.partial(client, number)) for number in range(50)]
    for join in joins:
        join()
    assert publisher.wait(60) == 0
    for numbers in received.values():
        assert numbers == list(range(numbers[0], total)), "lost, duplicated or out of order"
    assert len(connections) > 50 * 10
    print(f"seam: {total} events, 50 clients, {len(connections)} connections: 0 lost, 0 twice")


def stream_and_collect(server: Gunicorn, query: str, until: str) -> tuple[Callable[[], None], list[str]]:
    """A client thread that reads events until one carries ``until``."""
    received: list[str] = []
    stream = open_stream(server, query)

    def read() -> None:
        while not received or received[-1] != until:
            received.append(stream.next_event().data)
        stream.close()

    return in_thread(read), received


@pytest.mark.parametrize("fault", ["restart redis-server", "CLIENT KILL TYPE pubsub"])
def test_every_accepted_event_reaches_100_clients_through_a_redis_fault(
    gunicorn: Start, durable_redis: RedisServer, fault: str
) -> None:
    server = gunicorn(durable_redis.url, SSE_KEEPALIVE=1)
    readers = [stream_and_collect(server, "channel=fault", until="end") for _ in range(100)]
    publisher = Publisher(durable_redis.url)
    accepted: list[str] = []
    refused: list[str] = []

    def outage() -> None:
        """Redis away until publishing has been refused a few times, then back."""
        durable_redis.stop()
        wait_for(lambda: len(refused) >= 5, what="publishes refused while Redis is away")
        durable_redis.start()

    for number in range(300):
        if number == 100:
            if fault == "restart redis-server":
                end_of_outage = in_thread(outage)
            else:
                with durable_redis.client() as admin:
                    assert admin.client_kill_filter(_type="pubsub") >= 1
        for attempt in range(1000):
            data = f"{number}:{attempt}"
            try:
                publisher.publish(data, channel="fault")
            except redis.ConnectionError:
                refused.append(data)
                time.sleep(0.02)  # the publisher's own retry pause while Redis is away
                continue
            accepted.append(data)
            break
        if not 100 <= number < 150:  # a burst right after the fault, into the reconnect window
            time.sleep(0.002)
    if fault == "restart redis-server":
        end_of_outage()
        assert refused, "publishing was never refused: the outage did not happen"
    publisher.publish("end", channel="fault")
    for join, _ in readers:
        join()
    for _, received in readers:
        assert len(received) == len(set(received)), "an event arrived twice"
        assert set(accepted) <= set(received), "an accepted event was lost"
        numbers = [int(data.split(":")[0]) for data in received[:-1]]
        assert numbers == sorted(numbers)
    print(f"{fault}: {len(accepted)} accepted, {len(refused)} refused, 100 clients: 0 lost, 0 twice")


def test_a_publish_retried_while_redis_is_frozen_is_delivered_once(
    gunicorn: Start, redis_server: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stopped (SIGSTOP) runs what it was sent when it wakes, after the publisher gave up."""
    server = gunicorn(redis_url)
    readers = [stream_and_collect(server, "channel=frozen", until="end") for _ in range(3)]
    publisher = Publisher(redis_url + "?socket_timeout=0.25", attempts=20)
    total = 150
    published = threading.Event()

    def publish_all() -> None:
        for number in range(total):
            publisher.publish(str(number), channel="frozen")
            time.sleep(0.01)
        published.set()

    assert redis_server.process is not None
    pid = redis_server.process.pid
    with caplog.at_level(logging.WARNING, logger="flask_sse"):
        end_of_publishing = in_thread(publish_all)
        try:
            for _ in range(3):
                if published.wait(0.3):
                    break
                os.kill(pid, signal.SIGSTOP)
                time.sleep(0.6)  # frozen for longer than the publisher waits for an answer
                os.kill(pid, signal.SIGCONT)
        finally:
            os.kill(pid, signal.SIGCONT)
        end_of_publishing()
    retries = [record for record in caplog.records if "trying again" in record.getMessage()]
    assert retries, "no publish timed out: Redis was not frozen while publishing"
    publisher.publish("end", channel="frozen")
    for join, _ in readers:
        join()
    for _, received in readers:
        assert received == [str(number) for number in range(total)] + ["end"]
    with redis_server.client() as client:
        assert client.xlen("sse:history:{frozen}") == total + 1
    print(f"frozen Redis: {len(retries)} publishes retried, 3 clients: 0 lost, 0 twice")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_client_that_stops_reading_is_cut_off_then_resumes_everything(
    gunicorn: Start, redis_url: str
) -> None:
    server = gunicorn(redis_url, SSE_QUEUE_SIZE=10, SSE_HISTORY=5000)
    pid = server.worker_pid
    publisher = Publisher(redis_url, history=5000)
    stuck = socket.create_connection(("127.0.0.1", server.port))
    stuck.sendall(b"GET /stream?channel=slow HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for(lambda: server.count("/subscribers/slow") == 1, what="the stuck client")
    before = rss_kib(pid)
    big = "x" * 16384
    total = 2000  # 32 MB: far more than the queue (10 events) and the socket buffers hold
    with open_stream(server, "channel=slow") as reader:
        for number in range(total):
            publisher.publish(f"{number} {big}", channel="slow")
            assert reader.next_event().data.startswith(f"{number} ")
        wait_for(lambda: server.count("/subscribers/slow") == 1, what="the cut-off")
    growth = rss_kib(pid) - before
    assert growth < 16 * 1024, f"the worker grew by {growth} KiB"

    stuck.settimeout(10)
    received = b""
    while chunk := stuck.recv(1 << 20):
        received += chunk
    stuck.close()
    head, _, body = received.partition(b"\r\n\r\n")
    parser = Parser()
    text = b"".join(_dechunk(body)).decode()
    for line in text.split("\n")[:-1]:
        parser.feed_line(line)
    got = [int(event.data.split()[0]) for event in parser.events]
    assert 0 < len(got) < total
    again = open_stream(server, "channel=slow", last_event_id=parser.last_event_id)
    rest = [int(event.data.split()[0]) for event in again.events(total - len(got))]
    again.close()
    assert got + rest == list(range(total))


def _dechunk(body: bytes) -> list[bytes]:
    """The chunks of a chunked HTTP body, as far as it goes."""
    pieces = []
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0 or len(rest) < size:
            break
        pieces.append(rest[:size])
        body = rest[size + 2 :]
    return pieces


def test_max_age_ends_streams_cleanly_and_the_client_resumes(gunicorn: Start, redis_url: str) -> None:
    server = gunicorn(redis_url, SSE_MAX_AGE=0.5)
    publisher = Publisher(redis_url)
    stream = open_stream(server, "channel=aged")
    publisher.publish("0", channel="aged")
    first = stream.next_event()
    with pytest.raises(EOFError):  # the last chunk arrived: a complete response
        while True:
            stream.read_line()
    stream.close()
    publisher.publish("1", channel="aged")
    again = open_stream(server, "channel=aged", last_event_id=first.last_event_id)
    assert again.next_event().data == "1"
    again.close()


def test_history_is_trimmed_and_expires(redis_url: str, redis_server: RedisServer) -> None:
    publisher = Publisher(redis_url, history=10, history_ttl=1)
    for number in range(500):
        publisher.publish(str(number), channel="short")
    with redis_server.client() as client:
        assert 10 <= client.xlen("sse:history:{short}") < 200
        wait_for(lambda: not client.exists("sse:history:{short}"), timeout=3, what="expiry")

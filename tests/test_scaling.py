"""Scaling out: rolling restarts across servers that share nothing but Redis."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import pytest
import redis

from flask_sse import Publisher

from .conftest import Gunicorn
from .sse_client import open_stream, wait_for

pytestmark = pytest.mark.integration


def test_sigterm_ends_streams_within_2s_and_clients_resume_elsewhere(
    gunicorn: Callable[..., Gunicorn], redis_url: str
) -> None:
    # gunicorn's graceful timeout here is 2 s, so the drain is 1 s, not 30
    old = gunicorn(redis_url, options=("-w", "2"), SSE_DRAIN_SECONDS=30)
    new = gunicorn(redis_url, options=("-w", "2"))
    total, clients = 200, 20
    received: dict[int, list[int]] = {number: [] for number in range(clients)}
    ended_at: dict[int, float] = {}
    parting_retries: dict[int, int | None] = {}
    errors: list[BaseException] = []
    opened = threading.Barrier(clients + 1)

    def client(number: int) -> None:
        try:
            stream = open_stream(old, "channel=roll")
            opened.wait()
            last_event_id = stream.parser.last_event_id
            try:
                while True:
                    event = stream.next_event()
                    received[number].append(int(event.data))
                    last_event_id = event.last_event_id
            except EOFError:  # the old server ended the stream: a complete response
                ended_at[number] = time.monotonic()
                parting_retries[number] = stream.parser.retry
            stream.close()
            stream = open_stream(new, "channel=roll", last_event_id=last_event_id)
            while not received[number] or received[number][-1] != total - 1:
                received[number].append(int(stream.next_event().data))
            stream.close()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            errors.append(error)

    threads = [threading.Thread(target=client, args=(number,), daemon=True) for number in range(clients)]
    for thread in threads:
        thread.start()
    opened.wait(30)
    publisher = Publisher(redis_url)
    for number in range(total):
        publisher.publish(str(number), channel="roll")
        if number == 50:
            old.process.send_signal(signal.SIGTERM)  # what a rolling restart does
            signalled = time.monotonic()
        time.sleep(0.01)  # a steady stream of events through the restart
    for thread in threads:
        thread.join(60)
    assert not errors, errors[0]
    assert len(ended_at) == clients
    slowest = max(ended_at.values()) - signalled
    assert slowest < 2, f"streams took {slowest:.2f}s to end"
    spread = slowest - (min(ended_at.values()) - signalled)
    assert spread > 0.3, f"streams ended within {spread:.2f}s of each other: not spread out"
    retries = list(parting_retries.values())
    assert all(retry is not None and 1500 <= retry <= 4500 for retry in retries), retries
    assert len(set(retries)) > 1, "every stream was told the same retry"
    for numbers in received.values():
        assert numbers == list(range(total)), "lost, duplicated or out of order"
    wait_for(lambda: old.process.poll() is not None, what="the old server to exit")
    print(f"rolling restart: {clients} clients, {total} events, streams ended {slowest:.2f}s "
          "after SIGTERM, 0 lost, 0 twice")


def test_every_subscriber_on_every_server_gets_each_event_once(
    gunicorn: Callable[..., Gunicorn], redis_url: str
) -> None:
    servers = [gunicorn(redis_url, options=("-w", "2")) for _ in range(3)]
    streams = []
    for server in servers:
        for _ in range(10):  # spread over the server's workers by its accept loop
            streams.append(open_stream(server, "channel=everywhere"))
    publishers = [Publisher(redis_url)]  # publish from outside, and through each server
    for number in range(100):
        if number % 2:
            publishers[0].publish(str(number), channel="everywhere")
        else:
            server = servers[number % 3]
            server.request("POST", "/publish", {"data": str(number), "channel": "everywhere"})
    for stream in streams:
        assert [int(event.data) for event in stream.events(100)] == list(range(100))
        stream.close()


def connections_named(redis_url: str, name: str) -> int:
    with redis.Redis.from_url(redis_url) as admin:
        return sum(1 for client in admin.client_list() if client.get("name") == name)


def test_500_browsers_resuming_at_once_share_the_workers_two_redis_connections(
    gunicorn: Callable[..., Gunicorn], redis_url: str
) -> None:
    server = gunicorn(redis_url + "?client_name=storm-worker")
    first = open_stream(server, "channel=storm")
    position = first.parser.last_event_id
    assert position
    assert connections_named(redis_url, "storm-worker") == 2  # pub/sub, and commands
    publisher = Publisher(redis_url)
    for number in range(50):
        publisher.publish(str(number), channel="storm")
    assert [event.data for event in first.events(50)] == [str(n) for n in range(50)]
    most = [0]
    storm_over = threading.Event()

    def count_connections() -> None:
        while not storm_over.is_set():
            most[0] = max(most[0], connections_named(redis_url, "storm-worker"))

    counter = threading.Thread(target=count_connections, daemon=True)
    counter.start()
    received: dict[int, list[str]] = {}
    start = threading.Barrier(500)

    def resume(number: int) -> None:
        start.wait(30)
        with open_stream(server, "channel=storm", last_event_id=position) as stream:
            received[number] = [event.data for event in stream.events(50)]

    clients = [threading.Thread(target=resume, args=(number,), daemon=True) for number in range(500)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(60)
    storm_over.set()
    counter.join(10)
    complete = [number for number, data in received.items() if data == [str(n) for n in range(50)]]
    assert len(complete) == 500, f"{500 - len(complete)} of 500 resumes lost events"
    assert most[0] == 2, f"the worker held up to {most[0]} Redis connections"
    assert connections_named(redis_url, "storm-worker") == 2
    first.close()

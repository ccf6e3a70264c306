"""Prometheus metrics: each count on its own, then the sums across two gunicorn workers.

The registry is the process's, so the tests in this process compare a
figure with what it was when the test began; the gunicorn tests read the
server's ``/metrics``, which sums its workers' figures.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import sys
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY, Metric
from prometheus_client.parser import text_string_to_metric_families

from flask_sse import Publisher, metrics, registry, send_event
from flask_sse.hub import Hub

from .conftest import Gunicorn, MakeApp, OpenClientStream, free_port
from .sse_client import StreamClient, open_stream, wait_for
from .test_docs import block, run
from .test_hub import FakeHistory, FakePresence, FakeRouter, received

#: Each sample by its name and labels.
Figures = dict[tuple[str, tuple[tuple[str, str], ...]], float]
Grown = Callable[..., float]


def figures_of(families: Iterable[Metric]) -> Figures:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        if family.name.startswith("sse_")
        for sample in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


@pytest.fixture
def grown() -> Grown:
    """How much a figure of this process grew since the test began (metrics on)."""
    metrics.enable()
    before = figures_of(REGISTRY.collect())

    def grown(name: str, **labels: str) -> float:
        now = figures_of(REGISTRY.collect())
        return now.get(key(name, **labels), 0.0) - before.get(key(name, **labels), 0.0)

    return grown


# -- each count, in this process -------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "settings"),
    [("client gone", {}), ("slow", {"SSE_QUEUE_SIZE": 2}), ("max age", {"SSE_MAX_AGE": 0.2}),
     ("shutdown", {})],
)
def test_streams_opened_and_closed_by_reason(
    make_app: MakeApp, memory_url: str, client_stream: OpenClientStream, grown: Grown,
    reason: str, settings: dict[str, Any],
) -> None:
    stream = client_stream(client=make_app(SSE_METRICS=True, **settings).test_client())
    stream.read_chunk()
    assert (grown("sse_streams_opened_total"), grown("sse_open_streams")) == (1, 1)
    if reason == "slow":
        for number in range(5):  # unread: the third overflows the queue of 2
            Publisher(memory_url).publish(number)
    elif reason == "shutdown":
        registry.close_all()
    if reason != "client gone":
        stream.read_to_end()  # the app ends the stream
    stream.close()
    assert grown("sse_streams_closed_total", reason=reason) == 1
    assert grown("sse_open_streams") == 0


def test_publishes_and_publish_errors(make_app: MakeApp, memory_url: str, grown: Grown) -> None:
    with make_app(SSE_METRICS=True).app_context():
        for number in range(3):
            send_event("tick", number)
    Publisher(memory_url).publish("from a task")  # no app: counted all the same
    assert grown("sse_events_published_total") == 4
    unreachable = Publisher(f"redis://127.0.0.1:{free_port()}/0", attempts=1)
    with pytest.raises(redis.ConnectionError):
        unreachable.publish("lost")
    assert grown("sse_publish_errors_total", error="ConnectionError") == 1
    assert grown("sse_events_published_total") == 4


def test_every_delivery_counts_and_each_fan_out_once(
    make_app: MakeApp, memory_url: str, client_stream: OpenClientStream, grown: Grown
) -> None:
    client = make_app(SSE_METRICS=True).test_client()
    streams = [client_stream(client=client) for _ in range(3)]
    publisher = Publisher(memory_url)
    for number in range(4):
        publisher.publish(str(number))
    for stream in streams:
        assert len(stream.events(4)) == 4
        stream.read_chunk()  # a chunk counts once the server asks for the next (a keepalive)
    assert grown("sse_events_delivered_total", path="queued") == 12
    assert grown("sse_events_delivered_total", path="direct") == 0  # the test client has no socket
    wait_for(lambda: grown("sse_fanout_seconds_count") == 4, what="one fan-out per event")
    assert grown("sse_fanout_seconds_bucket", le="+Inf") == 4


def test_resumes_replayed_events_and_resets(
    make_app: MakeApp, memory_url: str, client_stream: OpenClientStream, grown: Grown
) -> None:
    client = make_app(SSE_METRICS=True).test_client()
    publisher = Publisher(memory_url)
    for number in range(5):
        publisher.publish(str(number))
    resumed = client_stream(headers={"Last-Event-ID": "0-0"}, client=client)
    assert len(resumed.events(5)) == 5
    resumed.read_chunk()
    assert grown("sse_resumes_total") == 1
    assert grown("sse_resume_replayed_events_total") == 5
    assert grown("sse_events_delivered_total", path="queued") == 5
    ahead = client_stream(headers={"Last-Event-ID": "99999999999999-0"}, client=client)
    assert ahead.events(1)[0].type == "reset"
    ahead.read_chunk()
    assert grown("sse_resumes_total") == 2
    assert grown("sse_reset_events_total") == 1
    assert grown("sse_resume_replayed_events_total") == 5  # a reset is not an event from history
    assert grown("sse_events_delivered_total", path="queued") == 6
    assert grown("sse_streams_opened_total") == 2


def test_a_lost_link_and_what_the_hub_replays(grown: Grown) -> None:
    router, history = FakeRouter(), FakeHistory()
    hub = Hub(router, history, FakePresence(), subscribe_timeout=2)  # type: ignore[arg-type]
    try:
        subscription, _ = hub.subscribe(["a"], 10)
        first = router.live()
        first.message("a", "1-0", "seen")
        assert received(subscription, 1) == ["seen"]
        for seq, data in [(1, "seen"), (2, "missed"), (3, "missed too")]:
            history.append("a", (seq, 0), data)
        first.disconnect()
        assert received(subscription, 2) == ["missed", "missed too"]
        assert grown("sse_hub_link_losses_total") == 1
        wait_for(lambda: grown("sse_hub_replayed_events_total") == 2, what="the replay counted")
        history.gap = True  # history lost while away: a reset for each stream
        router.live().disconnect()
        (reset,) = wait_for(subscription.wait)
        assert reset.chunk.startswith(b"event:reset\n")
        assert grown("sse_hub_link_losses_total") == 2
        wait_for(lambda: grown("sse_reset_events_total") == 1, what="the reset counted")
        assert grown("sse_hub_replayed_events_total") == 2
        assert grown("sse_fanout_seconds_count") == 1  # replays are not live fan-outs
    finally:
        hub.close()


def test_off_nothing_is_counted(
    make_app: MakeApp, memory_url: str, client_stream: OpenClientStream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    metrics.enable()  # the metrics exist, so a stray count would show
    monkeypatch.setattr(metrics, "_on", None)  # as in a process where no app turned them on
    before = figures_of(REGISTRY.collect())
    stream = client_stream(client=make_app().test_client())
    Publisher(memory_url).publish("x")
    stream.events(1)
    stream.read_chunk()
    stream.close()
    assert figures_of(REGISTRY.collect()) == before


def test_without_prometheus_client_registration_fails_naming_the_extra(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "_on", None)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    install = re.escape("pip install 'flask-sse-hub[metrics]'")
    with pytest.raises(RuntimeError, match=install):
        make_app(SSE_METRICS=True)
    with pytest.raises(RuntimeError, match=install):
        metrics.metrics_view()
    with pytest.raises(ValueError, match="SSE_METRICS must be True or False"):
        make_app(SSE_METRICS="yes")


def test_the_docs_example_serves_the_metrics(memory_url: str) -> None:
    code = block("docs/metrics.md", "view_func=metrics_view").replace(
        "redis://localhost:6379/0", memory_url
    )
    response = run(code)["app"].test_client().get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert "# TYPE sse_open_streams gauge" in response.get_data(as_text=True)


# -- two gunicorn workers, one sum ---------------------------------------------------


@pytest.fixture
def two_workers(gunicorn: Callable[..., Gunicorn], redis_url: str, tmp_path: Path) -> Gunicorn:
    """Two gevent workers in prometheus_client's multiprocess mode, set up as the docs say."""
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(textwrap.dedent(block("docs/metrics.md", "def child_exit")))
    directory = tmp_path / "metrics"
    directory.mkdir()
    server = gunicorn(
        redis_url, options=("-w", "2", "-c", str(config)),
        env={"PROMETHEUS_MULTIPROC_DIR": str(directory)}, SSE_METRICS=True, SSE_KEEPALIVE=0.5,
    )
    # each worker writes its counters to a file of its own once it has loaded the app
    wait_for(lambda: len(list(directory.glob("counter_*.db"))) == 2, what="both workers")
    return server


def scrape(server: Gunicorn) -> Figures:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200
        return figures_of(text_string_to_metric_families(response.read().decode()))
    finally:
        connection.close()


def value(figures: Figures, name: str, labels: tuple[tuple[str, str], ...]) -> float:
    """A sample's value; without labels, the sum over its labels (both paths, every reason)."""
    if labels or (name, labels) in figures:
        return figures.get((name, labels), 0.0)
    return sum(value for (other, _), value in figures.items() if other == name)


def settle(server: Gunicorn, expected: Figures) -> None:
    """Wait for the server's figures to be ``expected``; fail showing the difference.

    A close, or the count of a stream's last chunk, lands just after the client sees it.
    """
    seen: list[Figures] = [{}]

    def reached() -> bool:
        figures = scrape(server)
        seen[0] = {(name, labels): value(figures, name, labels) for name, labels in expected}
        return seen[0] == expected

    try:
        wait_for(reached, what="the figures")
    except AssertionError:
        assert seen[0] == expected
        raise


def spread(server: Gunicorn, redis_url: str, channel: str, count: int) -> list[StreamClient]:
    """At least ``count`` streams of ``channel``, and more until both workers hold some.

    Each worker's hub subscribes a channel once, so Redis counts the workers.
    """
    streams: list[StreamClient] = []
    with redis.Redis.from_url(redis_url) as admin:
        while len(streams) < count or admin.pubsub_numsub(channel)[0][1] < 2:
            assert len(streams) < 100, "every stream went to the same worker"
            streams.append(open_stream(server, f"channel={channel}"))
    return streams


@pytest.mark.integration
def test_the_figures_of_two_workers_add_up(two_workers: Gunicorn, redis_url: str) -> None:
    server = two_workers
    published = 0

    def publish(count: int) -> None:
        nonlocal published
        for _ in range(count):
            body = {"data": str(published), "channel": "news"}
            assert server.request("POST", "/publish", body)[0] == 200
            published += 1

    news = spread(server, redis_url, "news", 8)  # one channel: the direct path
    several = [open_stream(server, "channel=news&channel=other") for _ in range(2)]  # queued
    everyone = news + several
    publish(4)
    for stream in everyone:
        assert len(stream.events(4)) == 4
    gone, kept = news[:3], news[3:]
    last_ids = [stream.parser.last_event_id for stream in gone]
    for stream in gone:
        stream.close()
    # until the server notices (a keepalive later), a write to a closed connection still succeeds
    settle(server, {key("sse_streams_closed_total", reason="client gone"): 3})
    publish(3)
    for stream in kept + several:
        assert len(stream.events(3)) == 3
    back = [open_stream(server, "channel=news", last_event_id=last_id) for last_id in last_ids]
    for stream in back:
        assert len(stream.events(3)) == 3  # from history
    live = kept + several + back
    publish(2)
    for stream in live:
        assert len(stream.events(2)) == 2
    for stream in kept[:2]:
        stream.close()
    still_open = len(live) - 2
    delivered = 4 * len(everyone) + 3 * (len(everyone) - 3) + 3 * 3 + 2 * len(live)
    settle(server, {
        key("sse_streams_opened_total"): len(everyone) + 3,
        key("sse_resumes_total"): 3,
        key("sse_streams_closed_total", reason="client gone"): 5,
        key("sse_streams_closed_total", reason="slow"): 0,
        key("sse_open_streams"): still_open,
        key("sse_events_published_total"): published,
        key("sse_resume_replayed_events_total"): 9,
        key("sse_reset_events_total"): 0,
        key("sse_hub_link_losses_total"): 0,
        key("sse_hub_replayed_events_total"): 0,
        key("sse_events_delivered_total"): delivered,  # both paths
    })
    figures = scrape(server)
    direct = figures[key("sse_events_delivered_total", path="direct")]
    queued = figures[key("sse_events_delivered_total", path="queued")]
    assert direct > 0  # idle single-channel streams under gevent: straight to their sockets
    assert queued >= 2 * published + 9  # several channels, and the backlogs of the resumes
    assert published <= figures[key("sse_fanout_seconds_count")] <= 2 * published  # per worker
    for stream in live[2:]:
        stream.close()


@pytest.mark.integration
def test_a_worker_that_dies_stops_counting_its_open_streams(
    two_workers: Gunicorn, redis_url: str
) -> None:
    server = two_workers
    streams = spread(server, redis_url, "news", 4)
    settle(server, {key("sse_open_streams"): len(streams)})
    os.kill(server.worker_pid, signal.SIGKILL)  # gunicorn's child_exit hook marks it dead
    Publisher(redis_url).publish("after", channel="news")
    alive = []
    for stream in streams:
        try:
            stream.next_event()
            alive.append(stream)
        except (EOFError, OSError, http.client.HTTPException):  # the dead worker's
            pass
    assert 0 < len(alive) < len(streams)
    settle(server, {
        key("sse_open_streams"): len(alive),
        key("sse_streams_opened_total"): len(streams),  # a counter keeps what the dead counted
    })
    for stream in streams:
        stream.close()

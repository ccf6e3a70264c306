"""The Flask ecosystem: the CLI, signals, subscriber counts and the testing helpers."""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flask_sse import Publisher, send_event, signals, sse
from flask_sse.testing import captured_events, read_events

from .conftest import ROOT, Gunicorn, MakeApp, OpenClientStream, RedisServer
from .sse_client import StreamClient, wait_for

Start = Callable[..., Gunicorn]


@pytest.fixture
def make_app(make_app: MakeApp) -> MakeApp:
    """The shared factory with keepalives every 0.1 s: CLI listeners and ``read_events`` wake often."""
    return functools.partial(make_app, SSE_KEEPALIVE=0.1)


# -- the CLI ---------------------------------------------------------------------


def test_cli_publish_then_listen_replays_from_history(make_app: MakeApp) -> None:
    runner = make_app().test_cli_runner()
    published = runner.invoke(args=["sse", "publish", "news", '{"price": 3}', "--json", "--type", "update"])
    assert published.exit_code == 0, published.output
    assert published.stdout == "Published on 'news': 0 process(es) listening.\n"
    assert "the embedded broker inside this command's own process" in published.stderr
    runner.invoke(args=["sse", "publish", "news", "two\nlines"])
    heard = runner.invoke(args=["sse", "listen", "news", "--last-event-id", "0-0", "--count", "2", "--format", "json"])
    assert heard.exit_code == 0, heard.output
    first, second = (json.loads(line) for line in heard.stdout.splitlines())
    assert (first["data"], first["type"]) == ('{"price": 3}', "update")
    assert second["data"] == "two\nlines" and "type" not in second
    assert first["id"] < second["id"]
    assert first["channel"] == second["channel"] == "news"
    wire = runner.invoke(args=["sse", "listen", "news", "--last-event-id", first["id"], "--count", "1"])
    assert wire.stdout.startswith(f"id:{first['id']}\n\n")  # where it resumes from
    assert "data:two\ndata:lines\nid:" in wire.stdout


def test_the_readme_listen_line_with_one_position_for_every_channel(make_app: MakeApp) -> None:
    runner = make_app().test_cli_runner()
    runner.invoke(args=["sse", "publish", "news", "on news"])
    runner.invoke(args=["sse", "publish", "alerts", "on alerts"])
    readme_line = "flask sse listen news alerts --last-event-id 1763683200000-0 --format json"
    heard = runner.invoke(args=[*readme_line.split()[1:], "--count", "4"])
    assert heard.exit_code == 0, heard.output
    events = [json.loads(line) for line in heard.stdout.splitlines()]
    # that position is no entry of these new histories, so each channel says it may have a gap
    assert [e["data"] for e in events if e.get("type") == "reset"] == [
        '{"channel": "news"}', '{"channel": "alerts"}'
    ]
    assert [e["data"] for e in events if "type" not in e] == ["on news", "on alerts"]
    assert [e["channel"] for e in events] == ["news", "alerts", "news", "alerts"]
    assert readme_line in (ROOT / "docs" / "cli.md").read_text()


@pytest.mark.parametrize(
    ("args", "doing"), [(["publish", "news", "x"], "publish"), (["stats"], "read the counts")]
)
def test_cli_says_in_one_line_that_redis_is_unreachable(
    make_app: MakeApp, args: list[str], doing: str
) -> None:
    unreachable = "redis://127.0.0.1:1/0"
    result = make_app(unreachable).test_cli_runner().invoke(args=["sse", *args])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: Cannot {doing}: Redis at {unreachable} is unreachable")
    assert "Check SSE_REDIS_URL" in result.output and len(result.output.splitlines()) == 1


def test_cli_publish_takes_an_id_and_retry_and_the_group_has_help(make_app: MakeApp) -> None:
    app = make_app(SSE_HISTORY=0)
    runner = app.test_cli_runner()
    with captured_events(app) as events:
        published = runner.invoke(args=["sse", "publish", "news", "x", "--id", "7", "--retry", "250"])
    assert published.exit_code == 0, published.output
    assert [(e.channel, e.message.id, e.message.retry) for e in events] == [("news", "7", 250)]
    assert "Publish, listen and see counts" in runner.invoke(args=["sse", "--help"]).output


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["publish", "news", "{not json", "--json"], "not JSON"),
        (["publish", "a\nb", "x"], "must not contain control characters"),
        (["publish", "news", "x", "--type", "a\nb"], "type must not contain CR, LF or NUL"),
        (["listen", ""], "must not be empty"),
        (["listen", "news", "--last-event-id", "nope"], "is not an id this stream sent"),
        (["listen", "news", "--count", "0"], "0 is not in the range x>=1"),
        (["publish", "news", "x", "--retry", "-1"], "-1 is not in the range x>=0"),
    ],
)
def test_cli_refuses_bad_input_with_a_message(make_app: MakeApp, args: list[str], error: str) -> None:
    result = make_app().test_cli_runner().invoke(args=["sse", *args])
    assert result.exit_code == 2
    assert error in result.output


@pytest.mark.integration
def test_cli_listen_and_stats_against_real_redis(
    gunicorn: Start, make_app: MakeApp, redis_url: str, redis_server: RedisServer
) -> None:
    app = make_app(redis_url)
    runner = app.test_cli_runner()
    outcome: dict[str, Any] = {}
    listening = threading.Thread(
        target=lambda: outcome.update(result=runner.invoke(args=["sse", "listen", "live", "--count", "2"]))
    )
    listening.start()
    publisher = Publisher(redis_url)
    deadline = time.monotonic() + 10
    while listening.is_alive() and time.monotonic() < deadline:  # until the listener has two
        publisher.publish("ping", channel="live")
        listening.join(0.05)
    assert not listening.is_alive()
    assert outcome["result"].output.count("data:ping\n") >= 2

    # Without history the ids say nothing of the channel: the JSON still names it.
    runner = make_app(redis_url, SSE_HISTORY=0).test_cli_runner()
    args = ["sse", "listen", "a", "b", "--count", "4", "--format", "json"]
    listening = threading.Thread(target=lambda: outcome.update(result=runner.invoke(args=args)))
    listening.start()
    while listening.is_alive() and time.monotonic() < deadline + 10:
        publisher.publish("b", channel="b")
        publisher.publish("a", channel="a")
        listening.join(0.05)
    assert not listening.is_alive()
    events = [json.loads(line) for line in outcome["result"].stdout.splitlines()]
    assert len(events) == 4 and {event["channel"] for event in events} == {"a", "b"}
    assert all(event["channel"] == event["data"] for event in events)

    server = gunicorn(redis_url)
    streams = [StreamClient(server.port, "/stream?channel=room") for _ in range(3)]
    with app.app_context():
        wait_for(lambda: sse.subscriber_count("room") == 3, what="the worker's report")
    stats = runner.invoke(args=["sse", "stats"])
    assert stats.exit_code == 0
    table = {line.split()[0]: line.split()[1:] for line in stats.output.splitlines()[1:]}
    assert table["room"] == ["3", "0"]
    assert table["live"][1] == str(redis_server.client().xlen("sse:history:{live}"))
    for stream in streams:
        stream.close()


# -- subscriber counts --------------------------------------------------------------


@pytest.mark.integration
def test_subscriber_counts_add_up_across_servers_and_forget_killed_workers(
    gunicorn: Start, make_app: MakeApp, redis_url: str
) -> None:
    first, second = gunicorn(redis_url), gunicorn(redis_url)
    app = make_app(redis_url)
    opened = [StreamClient(first.port, "/stream?channel=crowd") for _ in range(3)]
    opened += [StreamClient(second.port, "/stream?channel=crowd") for _ in range(2)]

    def count() -> int:
        with app.app_context():
            return sse.subscriber_count("crowd")

    wait_for(lambda: count() == 5, what="5 streams counted over two servers")
    for stream in opened[:3]:
        stream.close()
    wait_for(lambda: count() == 2, timeout=20, what="closed streams to be forgotten")
    os.kill(second.worker_pid, signal.SIGKILL)  # no chance to clean up: only the expiry can
    wait_for(lambda: count() == 0, timeout=25, what="the killed worker's counts to expire")
    for stream in opened[3:]:
        stream.close()


# -- signals ------------------------------------------------------------------------


@pytest.fixture
def received() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    log: list[tuple[str, dict[str, Any]]] = []
    receivers = {
        name: (lambda sender, name=name, **kwargs: log.append((name, kwargs)))
        for name in ("stream_opened", "stream_closed", "channel_occupied", "channel_vacated")
    }
    for name, receiver in receivers.items():
        getattr(signals, name).connect(receiver)
    yield log
    for name, receiver in receivers.items():
        getattr(signals, name).disconnect(receiver)


def test_signals_for_streams_and_channels(make_app: MakeApp, received: list[tuple[str, dict[str, Any]]]) -> None:
    client = make_app().test_client()
    first = client.get("/stream?channel=a&channel=b", buffered=False)
    second = client.get("/stream?channel=b", buffered=False)
    assert received == [
        ("stream_opened", {"channels": ("a", "b")}),
        ("channel_occupied", {"channel": "a"}),
        ("channel_occupied", {"channel": "b"}),
        ("stream_opened", {"channels": ("b",)}),
    ]
    received.clear()
    first.close()
    second.close()
    assert received == [
        ("stream_closed", {"channels": ("a", "b"), "reason": "client gone"}),
        ("channel_vacated", {"channel": "a"}),
        ("stream_closed", {"channels": ("b",), "reason": "client gone"}),
        ("channel_vacated", {"channel": "b"}),
    ]


@pytest.mark.parametrize(("settings", "reason"), [({"SSE_QUEUE_SIZE": 2}, "slow"), ({"SSE_MAX_AGE": 0.2}, "max age")])
def test_the_closing_reason(
    make_app: MakeApp,
    memory_url: str,
    client_stream: OpenClientStream,
    received: list[tuple[str, dict[str, Any]]],
    settings: dict[str, Any],
    reason: str,
) -> None:
    stream = client_stream(client=make_app(**settings).test_client())
    stream.read_chunk()
    if reason == "slow":
        for number in range(5):
            Publisher(memory_url).publish(number)
    stream.read_to_end()
    stream.close()
    assert ("stream_closed", {"channels": ("sse",), "reason": reason}) in received


# -- the testing helpers ------------------------------------------------------------


def test_captured_events_record_instead_of_publishing(make_app: MakeApp) -> None:
    app = make_app()
    listening = app.test_client().get("/stream", buffered=False)
    with captured_events(app) as events, app.app_context():
        send_event("update", {"price": 3}, channel="news")
        sse.publish("hi", type="greeting")
        with pytest.raises(ValueError, match="type must not contain"):
            send_event("a\nb", "x")
    assert [(event.channel, event.message.type, event.message.data) for event in events] == [
        ("news", "update", {"price": 3}),
        ("sse", "greeting", "hi"),
    ]
    with app.app_context():
        assert sse.publish("after the block") == 1  # published for real again
    listening.close()


def test_read_events_returns_what_came_and_never_hangs(make_app: MakeApp) -> None:
    app = make_app()
    client = app.test_client()
    with app.app_context():
        sse.publish("one")
        sse.publish("two")
    started = time.monotonic()
    messages = read_events(client, "/stream?lastEventId=0-0", count=5, timeout=0.5)
    assert time.monotonic() - started < 3
    assert [message.data for message in messages] == ["one", "two"]
    with pytest.raises(AssertionError, match="answered 400"):
        read_events(client, "/stream?channel=", count=1)


def test_docs_of_the_helpers_match_their_names() -> None:
    text = Path(__file__).resolve().parent.parent.joinpath("flask_sse", "testing.py").read_text()
    assert "captured_events(app)" in text and "read_events(client" in text

"""One publish call on many channels: each stores and delivers it, in one round trip."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask

from flask_sse import Publisher, send_event, sse
from flask_sse.publisher import MAX_CHANNELS_PER_PUBLISH
from flask_sse.registry import redis_client
from flask_sse.testing import captured_events, read_events

from .conftest import MakeApp


def test_each_channel_gets_the_event_once_with_an_id_of_its_own(app: Flask) -> None:
    client = app.test_client()
    with app.app_context():
        sse.publish("before", channel="b")
        send_event("note", {"n": 1}, channel=["a", "b", "c", "a"], idempotency_key="task-1")
        send_event("note", {"n": 1}, channel=["a", "b", "c"], idempotency_key="task-1")  # retried
    histories = {
        name: read_events(client, f"/stream?channel={name}&lastEventId=0-0", count=3, timeout=0.5)
        for name in "abc"
    }
    assert [message.data for message in histories["a"]] == ['{"n": 1}']
    assert [message.data for message in histories["b"]] == ["before", '{"n": 1}']
    assert [message.data for message in histories["c"]] == ['{"n": 1}']
    ids = {histories[name][-1].id for name in "abc"}
    assert len(ids) == 3  # a position in each channel's own history


def test_a_stream_on_two_of_the_channels_gets_it_from_each(app: Flask) -> None:
    with app.app_context():
        sse.publish("both", type="t", channel=("x", "y"))
    client = app.test_client()
    messages = read_events(
        client, "/stream?channel=x&channel=y&lastEventId=0-0,0-0", count=3, timeout=0.5
    )
    assert [message.data for message in messages] == ["both", "both"]


@pytest.mark.parametrize(
    ("channels", "error"),
    [
        ([], "the list of channels is empty"),
        ([f"c{number}" for number in range(MAX_CHANNELS_PER_PUBLISH + 1)], "at most 100"),
        (["fine", ""], "must not be empty"),
        (["fine", 7], "must be a str"),
    ],
)
def test_bad_channel_lists_are_refused_before_anything_is_sent(
    app: Flask, channels: list[Any], error: str
) -> None:
    with app.app_context(), pytest.raises(ValueError, match=error):
        sse.publish("x", channel=channels)
    with app.app_context():  # nothing of it was stored
        assert sse.publish("probe", channel="fine") == 0
    messages = read_events(app.test_client(), "/stream?channel=fine&lastEventId=0-0", count=2,
                           timeout=0.3)
    assert [message.data for message in messages] == ["probe"]


def test_captured_events_record_one_event_per_channel(app: Flask) -> None:
    with app.app_context(), captured_events(app) as events:
        send_event("t", "x", channel=["u1", "u2"])
    assert [event.channel for event in events] == ["u1", "u2"]


@pytest.mark.integration
def test_one_round_trip_for_many_channels_on_a_real_redis(
    redis_url: str, make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script's calls go in one write (one pipeline); a Redis that lacks the script is
    handled."""
    sent: list[int] = []
    send: Callable[..., None] = socket.socket.sendall

    publishing = threading.get_ident()

    def counting(self: socket.socket, data: Any, *flags: int) -> None:
        if threading.get_ident() == publishing:  # not another test's leftover thread
            sent.append(1)
        send(self, data, *flags)

    publisher = Publisher(redis_url)
    publisher.publish("warm", channel="w")  # the publishes' connection exists
    redis_client(redis_url).ping()  # and the pool's, which loads the script
    with redis.Redis.from_url(redis_url) as admin:
        admin.script_flush()  # and the script is gone
    monkeypatch.setattr(socket.socket, "sendall", counting)
    channels = [f"user-{number}" for number in range(50)]
    assert publisher.publish("first", channel=channels) == 0
    assert len(sent) == 3  # NOSCRIPT: the pipeline, SCRIPT LOAD, the pipeline again
    sent.clear()
    publisher.publish("second", channel=channels)
    assert len(sent) == 1
    app = make_app(redis_url=redis_url)
    client = app.test_client()
    for name in ("user-0", "user-49"):
        messages = read_events(client, f"/stream?channel={name}&lastEventId=0-0", count=3, timeout=0.5)
        assert [message.data for message in messages] == ["first", "second"]

"""A publish is stored and delivered once, however often it is tried (unit tests, embedded broker)."""

from __future__ import annotations

import os

import pytest
import redis
from flask import Flask

from flask_sse import Publisher, send_event, sse
from flask_sse.history import REMEMBERED_WITHOUT_HISTORY, History
from flask_sse.registry import redis_client
from flask_sse.testing import captured_events, read_events

from .conftest import MakeApp, OpenClientStream


def test_a_key_published_twice_is_stored_and_delivered_once(app: Flask) -> None:
    with app.app_context():
        assert send_event("a", "first", channel="news", idempotency_key="k1") == 0
        send_event("a", "again", channel="news", idempotency_key="k1")
        send_event("a", "second", channel="news", idempotency_key="k2")
        send_event("a", "elsewhere", channel="sports", idempotency_key="k1")  # per channel
    client = app.test_client()
    news = read_events(client, "/stream?channel=news&lastEventId=0-0", count=3, timeout=0.5)
    assert [message.data for message in news] == ["first", "second"]
    sports = read_events(client, "/stream?channel=sports&lastEventId=0-0", count=2, timeout=0.5)
    assert [message.data for message in sports] == ["elsewhere"]


def test_without_history_a_repeated_key_is_published_once(
    make_app: MakeApp, client_stream: OpenClientStream
) -> None:
    app = make_app(SSE_HISTORY=0)
    stream = client_stream("/stream?channel=live", client=app.test_client())
    stream.read_chunk()  # the opening
    with app.app_context():
        sse.publish("once", channel="live", id=7, idempotency_key="k")
        sse.publish("twice?", channel="live", id=7, idempotency_key="k")
        sse.publish("end", channel="live")
    text = ""
    while "end" not in text:
        text += stream.read_chunk()
    assert text == "data:once\nid:7\n\ndata:end\n\n"


def test_keys_are_remembered_for_as_many_publishes_as_history_keeps(
    make_app: MakeApp, memory_url: str
) -> None:
    app = make_app(SSE_HISTORY=5)
    with app.app_context():
        for number in range(8):
            sse.publish(number, channel="c", idempotency_key=f"k{number}")
        sse.publish("old key, forgotten", channel="c", idempotency_key="k0")
        sse.publish("recent key, a repeat", channel="c", idempotency_key="k7")
    remembered = redis_client(memory_url).zrange("sse:published:{c}", 0, -1)
    assert remembered == [b"k4", b"k5", b"k6", b"k7", b"k0"]
    messages = read_events(app.test_client(), "/stream?channel=c&lastEventId=0-0", count=10, timeout=0.5)
    assert [message.data for message in messages][-2:] == ["7", "old key, forgotten"]


def test_without_history_the_last_thousand_keys_are_remembered(memory_url: str) -> None:
    history = History(redis_client(memory_url))
    for number in range(REMEMBERED_WITHOUT_HISTORY + 1):
        history.publish("c", '{"data": 1}', 0, 60, f"k{number}")
    client = redis_client(memory_url)
    assert client.zcard("sse:published:{c}") == REMEMBERED_WITHOUT_HISTORY
    assert 0 < client.ttl("sse:published:{c}") <= 60


class Flaky(History):
    """A history whose first publishes fail as a hanging Redis makes them fail."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client)
        self.failures: list[Exception] = []
        self.identities: list[str] = []

    def publish(
        self, channel: str, payload: str, maxlen: int, ttl: int, identity: str
    ) -> tuple[str | None, int]:
        self.identities.append(identity)
        if self.failures:
            raise self.failures.pop(0)
        return super().publish(channel, payload, maxlen, ttl, identity)


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch, memory_url: str) -> Flaky:
    from flask_sse import publisher

    fake = Flaky(redis_client(memory_url))
    monkeypatch.setattr(publisher, "history_for", lambda url, namespace="": fake)
    monkeypatch.setattr(publisher, "FIRST_PAUSE", 0.001)
    return fake


def test_the_publisher_tries_again_with_the_same_identity(flaky: Flaky, memory_url: str) -> None:
    flaky.failures[:] = [redis.TimeoutError("Timeout reading from socket"), redis.ConnectionError("reset")]
    Publisher(memory_url, attempts=3).publish("x", channel="c")
    assert len(flaky.identities) == 3 and len(set(flaky.identities)) == 1
    Publisher(memory_url).publish("y", channel="c", idempotency_key="task-9")
    assert flaky.identities[-1] == "task-9"
    Publisher(memory_url).publish("z", channel="c")
    assert len(set(flaky.identities)) == 3  # a key of its own for each call


def test_a_forked_process_makes_identities_of_its_own() -> None:
    """A call's identity is a per-process prefix and a count: a child that kept its
    parent's prefix would have its publishes taken for repeats of the parent's."""
    from flask_sse.publisher import _new_identity

    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.write(write_end, _new_identity().encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reading:
        childs = reading.read().decode()
    os.waitpid(child, 0)
    mine = [_new_identity() for _ in range(3)]
    assert len(set(mine)) == 3
    assert childs.split(".")[0] != mine[0].split(".")[0]


def test_after_its_attempts_the_publisher_raises_the_last_error(flaky: Flaky, memory_url: str) -> None:
    flaky.failures[:] = [redis.ConnectionError("refused"), redis.TimeoutError("still frozen")]
    with pytest.raises(redis.TimeoutError, match="still frozen"):
        Publisher(memory_url, attempts=2).publish("x", channel="c")
    flaky.failures[:] = [redis.ConnectionError("refused")]
    with pytest.raises(redis.ConnectionError):
        Publisher(memory_url, attempts=1).publish("x", channel="c")
    flaky.failures[:] = [ValueError("not an uncertain error")]
    with pytest.raises(ValueError):
        Publisher(memory_url, attempts=5).publish("x", channel="c")
    assert len(flaky.identities) == 4


def test_the_app_setting_reaches_send_event(flaky: Flaky, make_app: MakeApp) -> None:
    app = make_app(SSE_PUBLISH_ATTEMPTS=2)
    flaky.failures[:] = [redis.TimeoutError("1"), redis.TimeoutError("2")]
    with app.app_context(), pytest.raises(redis.TimeoutError, match="2"):
        send_event("t", "x", channel="c")


@pytest.mark.parametrize("key", ["", "k" * 201, 42])
def test_a_bad_key_is_refused_before_anything_is_sent(app: Flask, key: object) -> None:
    with app.app_context(), pytest.raises(ValueError, match="idempotency_key must be a string"):
        sse.publish("x", idempotency_key=key)  # type: ignore[arg-type]


@pytest.mark.parametrize("attempts", [0, -1, 1.5, True])
def test_bad_attempts_are_refused(memory_url: str, attempts: object) -> None:
    with pytest.raises(ValueError, match="attempts must be a whole number"):
        Publisher(memory_url, attempts=attempts)  # type: ignore[arg-type]


def test_captured_events_record_the_callers_key(app: Flask) -> None:
    with app.app_context(), captured_events(app) as events:
        send_event("t", "x", idempotency_key="task-1")
        send_event("t", "y")
    assert [event.idempotency_key for event in events] == ["task-1", None]

"""Resume from history, on the embedded broker: ids, the seam, gaps, limits."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_sse import Publisher, sse
from flask_sse.history import History, format_position
from flask_sse.registry import redis_client

from .conftest import MakeApp, OpenClientStream
from .sse_client import Event


def publish_numbers(memory_url: str, numbers: range, channel: str = "sse", **kwargs: Any) -> None:
    publisher = Publisher(memory_url, **kwargs)
    for number in numbers:
        publisher.publish(str(number), channel=channel)


def newest_id(memory_url: str, channel: str = "sse") -> str:
    """The id of the newest event in ``channel``'s history, as a stream sends it."""
    return format_position(History(redis_client(memory_url)).newest(channel))


def test_resume_gets_exactly_what_was_missed(memory_url: str, client_stream: OpenClientStream) -> None:
    first = client_stream()
    publish_numbers(memory_url, range(10))
    seen = first.events(4)
    first.close()
    publish_numbers(memory_url, range(10, 15))
    again = client_stream(headers={"Last-Event-ID": seen[-1].last_event_id})
    assert [event.data for event in again.events(11)] == [str(n) for n in range(4, 15)]
    publish_numbers(memory_url, range(15, 17))
    assert [event.data for event in again.events(13)[11:]] == ["15", "16"]
    again.close()


def test_a_client_that_saw_no_event_resumes_from_where_it_connected(
    memory_url: str, client_stream: OpenClientStream
) -> None:
    publish_numbers(memory_url, range(3))
    first = client_stream()
    first.read_chunk()
    opening_id = first.parser.last_event_id
    assert opening_id != "0-0"
    first.close()
    publish_numbers(memory_url, range(3, 5))
    again = client_stream(f"/stream?lastEventId={opening_id}")
    assert [event.data for event in again.events(2)] == ["3", "4"]
    again.close()


def test_the_header_wins_over_the_query_parameter(memory_url: str, client_stream: OpenClientStream) -> None:
    publish_numbers(memory_url, range(3))
    stream = client_stream("/stream?lastEventId=0-0", headers={"Last-Event-ID": newest_id(memory_url)})
    stream.read_chunk()
    publish_numbers(memory_url, range(3, 4))
    assert [event.data for event in stream.events(1)] == ["3"]
    stream.close()


def test_several_channels_resume_each_from_its_own_position(
    memory_url: str, client_stream: OpenClientStream
) -> None:
    first = client_stream("/stream?channel=a&channel=b&channel=c")
    publisher = Publisher(memory_url)
    for number in range(6):
        publisher.publish(str(number), channel="abc"[number % 3])
    seen = first.events(4)
    first.close()
    assert len(seen[-1].last_event_id.split(",")) == 3
    for number in range(6, 9):
        publisher.publish(str(number), channel="abc"[number % 3])
    again = client_stream("/stream?channel=a&channel=b&channel=c", headers={"Last-Event-ID": seen[-1].last_event_id})
    assert [event.data for event in again.events(5)] == ["4", "5", "6", "7", "8"]
    again.close()


def test_an_empty_part_starts_that_channel_from_now_and_resumes_the_others(
    memory_url: str, client_stream: OpenClientStream
) -> None:
    """The form a client sends when it adds channel ``b`` to a stream of ``a``."""
    first = client_stream("/stream?channel=a")
    publish_numbers(memory_url, range(2), channel="a")
    seen = first.events(2)
    first.close()
    publish_numbers(memory_url, range(2, 4), channel="a")  # missed: must be replayed
    publish_numbers(memory_url, range(100, 103), channel="b")  # before b was asked for: not sent
    again = client_stream("/stream?channel=a&channel=b", headers={"Last-Event-ID": f"{seen[-1].last_event_id},"})
    publish_numbers(memory_url, range(103, 105), channel="b")
    publish_numbers(memory_url, range(4, 5), channel="a")
    assert [event.data for event in again.events(5)] == ["2", "3", "103", "104", "4"]
    assert all(part for part in again.events(5)[-1].last_event_id.split(","))  # every id whole again
    again.close()


def test_a_trimmed_history_is_signalled_with_a_reset_event(
    make_app: MakeApp, memory_url: str, client_stream: OpenClientStream
) -> None:
    client = make_app(SSE_HISTORY=5).test_client()
    first = client_stream(client=client)
    first.read_chunk()
    opening_id = first.parser.last_event_id
    first.close()
    publish_numbers(memory_url, range(300), history=5)
    again = client_stream(headers={"Last-Event-ID": opening_id}, client=client)
    reset, *kept = again.events(6)
    assert (reset.type, reset.data) == ("reset", '{"channel": "sse"}')
    assert 5 <= int(kept[-1].data) < 300
    numbers = [int(event.data) for event in kept]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert numbers[0] > 0  # the oldest were trimmed
    again.close()


@pytest.mark.parametrize(
    ("last_event_id", "error"),
    [
        ("garbage", "is not an id this stream sent"),
        ("1-0,2-0", "has 2 positions but the stream has 1 channels"),
        ("1-x", "is not an id this stream sent"),
        ("1-0" * 100, "longer than any id this stream sends"),
        ("-1-0", "is not an id this stream sent"),
    ],
)
def test_a_malformed_last_event_id_is_a_400(client: FlaskClient, last_event_id: str, error: str) -> None:
    response = client.get("/stream", headers={"Last-Event-ID": last_event_id})
    assert response.status_code == 400
    assert error in response.get_json()["error"]


def test_ids_given_by_callers_give_way_to_positions(
    app: Flask, memory_url: str, client_stream: OpenClientStream
) -> None:
    stream = client_stream()
    with app.app_context():
        sse.publish("x", id=42)
    (event,) = stream.events(1)
    assert event.last_event_id != "42"
    assert event.last_event_id == newest_id(memory_url)
    stream.close()


def test_without_history_ids_pass_through_and_nothing_is_stored(
    make_app: MakeApp, memory_url: str, client_stream: OpenClientStream
) -> None:
    app = make_app(SSE_HISTORY=0)
    stream = client_stream(headers={"Last-Event-ID": "anything the old library sent"}, client=app.test_client())
    assert stream.status == 200
    stream.read_chunk()
    assert stream.parser.last_event_id == ""  # no opening id
    with app.app_context():
        sse.publish("x", id=42)
    assert stream.events(1) == [Event("x", "message", "42")]
    assert redis_client(memory_url).keys("sse:history:*") == []
    stream.close()


def test_history_expires(memory_url: str) -> None:
    publish_numbers(memory_url, range(2), history_ttl=7)
    assert 0 < redis_client(memory_url).ttl("sse:history:{sse}") <= 7


def test_max_age_ends_the_stream_cleanly(make_app: MakeApp, client_stream: OpenClientStream) -> None:
    stream = client_stream(client=make_app(SSE_MAX_AGE=0.3).test_client())
    stream.read_to_end()
    assert stream.parser.events == []
    assert stream.parser.comments  # keepalives until then
    stream.close()


@pytest.mark.parametrize("with_history", [True, False], ids=["history", "no-history"])
def test_an_id_ahead_of_history_gets_reset_then_every_live_event(
    memory_url: str, client_stream: OpenClientStream, with_history: bool
) -> None:
    """History lost (or a made-up id): never silence, but a reset and what comes next."""
    if with_history:
        publish_numbers(memory_url, range(3))
    newest = newest_id(memory_url)
    stream = client_stream(headers={"Last-Event-ID": "99999999999999-0"})
    (reset,) = stream.events(1)
    assert reset.type == "reset"
    assert reset.last_event_id == newest  # the browser's id is put right
    publish_numbers(memory_url, range(3, 5))
    assert [event.data for event in stream.events(3)[1:]] == ["3", "4"]
    stream.close()


def test_one_channel_ahead_of_history_leaves_the_others_alone(
    memory_url: str, client_stream: OpenClientStream
) -> None:
    publish_numbers(memory_url, range(2), channel="a")
    stream = client_stream("/stream?channel=a&channel=b", headers={"Last-Event-ID": "0-0,99999999999999-0"})
    events = stream.events(3)
    assert [(event.type, event.data) for event in events[:2]] == [("message", "0"), ("message", "1")]
    assert events[2].type == "reset" and events[2].last_event_id.endswith(",0-0")
    publish_numbers(memory_url, range(1), channel="b")
    assert stream.events(4)[3].data == "0"
    stream.close()

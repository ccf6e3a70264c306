"""The stream view and both publish APIs, through Flask's test client on ``memory://``."""

from __future__ import annotations

import json
import re

import pytest
from flask import Flask, abort, request
from flask.testing import FlaskClient

from flask_sse import Publisher, ServerSentEventsBlueprint, send_event, sse
from flask_sse.registry import hub_for, redis_client

from .conftest import MakeApp, OpenClientStream
from .sse_client import Event


def test_headers_go_out_with_the_retry_hint_first(client_stream: OpenClientStream) -> None:
    stream = client_stream("/stream")
    assert stream.response.headers["Content-Type"] == "text/event-stream"
    assert stream.response.headers["Cache-Control"] == "no-cache"
    assert stream.response.headers["X-Accel-Buffering"] == "no"
    assert stream.read_chunk() == "retry:3000\nid:0-0\n\n"


def kinds(events: list[Event]) -> list[tuple[str, str]]:
    return [(event.data, event.type) for event in events]


def test_both_apis_reach_a_stream_on_two_channels(app: Flask, client_stream: OpenClientStream) -> None:
    stream = client_stream("/stream?channel=a&channel=b")
    with app.app_context():
        assert send_event("update", {"price": 3}, channel="a") == 1
        assert sse.publish("two\nlines", type="note", id=4, channel="b") == 1
        assert sse.publish("elsewhere", channel="c") == 0
        sse.publish("last", channel="a")
    events = stream.events(3)
    assert kinds(events) == [('{"price": 3}', "update"), ("two\nlines", "note"), ("last", "message")]
    ids = [event.last_event_id.split(",") for event in events]
    assert all(len(both) == 2 for both in ids)
    assert ids[0][1] == "0-0"  # nothing on b yet
    assert ids[1][0] == ids[0][0]  # nothing more on a
    assert ids[2][1] == ids[1][1] != "4"  # b's history position, not the id given
    assert ids[2][0] != ids[0][0]


def test_default_channel_and_publisher_without_an_app(
    app: Flask, memory_url: str, client_stream: OpenClientStream
) -> None:
    stream = client_stream("/stream")
    assert Publisher(memory_url).publish({"from": "a task"}) == 1
    assert kinds(stream.events(1)) == [('{"from": "a task"}', "message")]


def test_a_silent_stream_gets_keepalive_comments(client_stream: OpenClientStream) -> None:
    stream = client_stream("/stream")
    stream.read_chunk()
    assert stream.read_chunk() == ":\n\n"
    assert stream.parser.comments == [""]
    assert stream.parser.events == []


def test_closing_a_stream_releases_its_channels(app: Flask, memory_url: str, client: FlaskClient) -> None:
    first = client.get("/stream?channel=x&channel=y", buffered=False)
    second = client.get("/stream?channel=y", buffered=False)
    hub = hub_for(memory_url)
    assert sorted(hub.channels()) == ["x", "y"]
    first.close()
    assert hub.channels() == ["y"]
    second.close()
    assert hub.channels() == []
    server = redis_client(memory_url)
    assert server.pubsub_numsub("x", "y") == [(b"x", 0), (b"y", 0)]


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("channel=", "a channel name must not be empty"),
        ("channel=" + "x" * 201, "at most 200 characters, got 201"),
        ("channel=a%0Ab", "must not contain control characters"),
        ("channel=a%0Db", "must not contain control characters"),
        ("channel=a%00b", "must not contain control characters"),
        ("channel=a%7Fb", "must not contain control characters"),
        ("channel=a%C2%85b", "must not contain control characters"),
        ("&".join(f"channel=c{n}" for n in range(17)), "Too many channels: 17 asked for, at most 16"),
    ],
)
def test_bad_channel_lists_get_a_clear_400(client: FlaskClient, query: str, error: str) -> None:
    response = client.get(f"/stream?{query}")
    assert response.status_code == 400
    assert error in response.get_json()["error"]


@pytest.mark.parametrize(
    "query",
    ["channel=" + "x" * 200, "channel=%E6%96%B0%E9%97%BB&channel=caf%C3%A9", "channel=a&channel=a"],
)
def test_long_unicode_and_repeated_channels_are_accepted(
    client_stream: OpenClientStream, query: str
) -> None:
    assert client_stream(f"/stream?{query}").read_chunk().startswith("retry:3000\nid:0-0")


def test_unicode_channel_delivery(app: Flask, client_stream: OpenClientStream) -> None:
    stream = client_stream("/stream?channel=%E6%96%B0%E9%97%BB")
    with app.app_context():
        send_event("新", "闻 ✓", channel="新闻")
    assert kinds(stream.events(1)) == [("闻 ✓", "新")]


def test_redis_down_at_connect_is_a_503(app: Flask, memory_url: str, client: FlaskClient) -> None:
    redis_client(memory_url).connection_pool.connection_kwargs["server"].connected = False
    response = client.get("/stream")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert "unavailable" in response.get_json()["error"]


def test_redis_down_at_connect_is_retried_by_an_event_source(
    make_app: MakeApp, memory_url: str
) -> None:
    """``EventSource`` never retries a 503: it gets a stream that says ``retry:`` and ends."""
    client = make_app(SSE_RETRY=2000).test_client()
    redis_client(memory_url).connection_pool.connection_kwargs["server"].connected = False
    response = client.get("/stream", headers={"Accept": "text/event-stream"})
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    retry, comment, end = response.get_data(as_text=True).split("\n", 2)
    assert 1000 <= int(retry.removeprefix("retry:")) <= 3000  # SSE_RETRY, jittered
    assert comment.startswith(": The event broker is unavailable") and end == "\n"


def test_publishing_needs_an_app_with_the_blueprint() -> None:
    with pytest.raises(RuntimeError, match="'send_event' can only be used inside an application"):
        send_event("t", "x")
    with pytest.raises(RuntimeError, match="Publisher"):
        sse.publish("x")
    with Flask(__name__).app_context():
        with pytest.raises(RuntimeError, match=r"app.register_blueprint\(sse"):
            sse.publish("x")


def test_publishing_refuses_what_would_break_the_stream(app: Flask) -> None:
    with app.app_context():
        with pytest.raises(ValueError, match="type must not contain"):
            send_event("a\nb", "x")
        with pytest.raises(ValueError, match="Cannot publish: a channel name must not contain"):
            sse.publish("x", channel="a\x00")
        with pytest.raises(ValueError, match="retry must be"):
            sse.publish("x", retry=-1)


def test_garbage_on_a_channel_never_stops_the_hub(
    app: Flask, memory_url: str, client_stream: OpenClientStream
) -> None:
    stream = client_stream("/stream")
    raw = redis_client(memory_url)
    for garbage in [b"not json", b'{"no": "data"}', b"[1,2,3]", b"\xff"]:
        raw.publish("sse", garbage)
    raw.publish("sse", b'["legacy", "array"]')
    raw.publish("sse", b'{"data": "ok", "type": "evil\\ndata: injected"}')
    assert stream.events(2) == [Event("array", "legacy", "0-0"), Event("ok", "evildata: injected", "0-0")]


def test_a_client_that_falls_behind_is_disconnected(
    make_app: MakeApp, memory_url: str, client_stream: OpenClientStream
) -> None:
    app = make_app(SSE_QUEUE_SIZE=3, SSE_KEEPALIVE=15)  # no keepalive before the cut-off
    stream = client_stream(client=app.test_client())
    stream.read_chunk()
    publisher = Publisher(memory_url)
    for number in range(10):
        publisher.publish(number)
    assert stream.read_to_end() == []
    stream.close()
    assert hub_for(memory_url).channels() == []


def test_before_request_guards_a_users_own_blueprint(make_app: MakeApp, memory_url: str) -> None:
    guarded = ServerSentEventsBlueprint("guarded", __name__)

    @guarded.before_request
    def only_public() -> None:
        if "staff" in request.args.getlist("channel"):
            abort(403)

    client = make_app(blueprint=guarded, url_prefix="/events").test_client()
    assert client.get("/events?channel=news&channel=staff").status_code == 403
    assert hub_for(memory_url).channels() == []
    response = client.get("/events?channel=news", buffered=False)
    assert response.status_code == 200
    response.close()


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (float("nan"), "data is NaN"),
        ({"price": float("inf")}, "data['price'] is NaN or infinite"),
        ([1.0, {"deep": [float("-inf")]}], "data[1]['deep'][0]"),
    ],
)
def test_nan_and_infinity_are_refused_at_publish_time(app: Flask, data: object, where: str) -> None:
    with app.app_context():
        with pytest.raises(ValueError, match=re.escape(where)):
            sse.publish(data, channel="numbers")
    with pytest.raises(ValueError, match="JSON cannot carry"):
        Publisher(app.config["SSE_REDIS_URL"]).publish(data)


def test_finite_floats_still_publish(app: Flask, client_stream: OpenClientStream) -> None:
    stream = client_stream("/stream?channel=numbers")
    with app.app_context():
        sse.publish({"price": 3.25, "nested": [1e308]}, channel="numbers")
    assert [json.loads(event.data) for event in stream.events(1)] == [
        {"price": 3.25, "nested": [1e308]}
    ]


def test_data_json_cannot_encode_says_which_type_and_how_to_fix(app: Flask) -> None:
    class Price:
        pass

    with app.app_context():
        with pytest.raises(TypeError, match="Price is not JSON serializable") as raised:
            sse.publish({"price": Price()}, channel="numbers")
    assert "str(value)" in str(raised.value) and "app.json" in str(raised.value)


def test_the_503_names_the_setting_to_check(app: Flask, memory_url: str, client: FlaskClient) -> None:
    redis_client(memory_url).connection_pool.connection_kwargs["server"].connected = False
    error = client.get("/stream").get_json()["error"]
    assert "Check SSE_REDIS_URL" in error and "memory://" in error

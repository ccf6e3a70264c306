"""Message: the wire form as tables of exact bytes, and the Redis payload."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from flask_sse import Message

from .sse_client import Event, parse


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        # the established form of the sse.publish() library, to the byte
        (Message("foo", type="example", id=5, retry=500), "event:example\ndata:foo\nid:5\nretry:500\n\n"),
        (Message("foo"), "data:foo\n\n"),
        (Message({"price": 3}), 'data:{"price": 3}\n\n'),
        (Message([1, "a"], type="t"), 'event:t\ndata:[1, "a"]\n\n'),
        # what that library got wrong
        (Message("x", id=0), "data:x\nid:0\n\n"),
        (Message("x", retry=0), "data:x\nretry:0\n\n"),
        (Message(""), "data:\n\n"),
        (Message("x", id=""), "data:x\nid:\n\n"),
        (Message("a\nb"), "data:a\ndata:b\n\n"),
        (Message("a\r\nb"), "data:a\ndata:b\n\n"),
        (Message("a\rb"), "data:a\ndata:b\n\n"),
        (Message("a\n"), "data:a\ndata:\n\n"),
        (Message("a\n\nb"), "data:a\ndata:\ndata:b\n\n"),
        (Message("a\u2028b\u0085c\x0bd\x0ce"), "data:a\u2028b\u0085c\x0bd\x0ce\n\n"),
        (Message("nul\x00inside"), "data:nul\x00inside\n\n"),
        # the browser strips one leading space, so one is added
        (Message(" lead"), "data:  lead\n\n"),
        (Message("a\n b"), "data:a\ndata:  b\n\n"),
        (Message("x", type=" t", id=" 1"), "event:  t\ndata:x\nid:  1\n\n"),
        (Message(None), "data:null\n\n"),
        (Message("x", type=""), "data:x\n\n"),
        (Message("ünïcode ✓", type="tÿpe", id="ïd"), "event:tÿpe\ndata:ünïcode ✓\nid:ïd\n\n"),
    ],
)
def test_wire_form(message: Message, wire: str) -> None:
    assert str(message) == wire
    assert message.encode() == wire.encode("utf-8")


@pytest.mark.parametrize(
    ("message", "event"),
    [
        (Message("a\r\nb\rc\n"), Event("a\nb\nc\n")),
        (Message(" two  spaces "), Event(" two  spaces ")),
        (Message("x", type="news", id=7), Event("x", "news", "7")),
        (Message(""), Event("")),
    ],
)
def test_a_browser_reads_back_what_went_in(message: Message, event: Event) -> None:
    assert parse(str(message)).events == [event]


def test_lone_surrogates_become_replacement_characters() -> None:
    assert Message("a\ud800b").encode() == "data:a\ufffdb\n\n".encode()


@pytest.mark.parametrize("field", ["type", "id"])
@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\nb", "a\x00b", "\n"])
def test_field_breakers_are_refused_at_publish_time(field: str, bad: str) -> None:
    fields: dict[str, Any] = {field: bad}
    with pytest.raises(ValueError, match=f"{field} must not contain CR, LF or NUL"):
        Message("x", **fields)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"retry": -1}, ValueError),
        ({"retry": "500"}, ValueError),
        ({"retry": 1.5}, ValueError),
        ({"retry": True}, ValueError),
        ({"type": 5}, TypeError),
        ({"id": 1.5}, TypeError),
        ({"id": True}, TypeError),
    ],
)
def test_bad_field_types_are_refused(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        Message("x", **kwargs)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (Message("foo"), "Message('foo')"),
        (Message("foo", type="example", id=5, retry=500), "Message('foo', type='example', id=5, retry=500)"),
        (Message({"a": 1}, id=0), "Message({'a': 1}, id=0)"),
    ],
)
def test_repr(message: Message, expected: str) -> None:
    assert repr(message) == expected


def test_equality_and_to_dict() -> None:
    assert Message("a", type="t", id=1) == Message("a", type="t", id=1)
    assert Message("a", id=1) != Message("a", id=2)
    assert Message("a") != "a"
    assert Message("foo", type="example", id=5, retry=500).to_dict() == {
        "data": "foo", "type": "example", "id": 5, "retry": 500,
    }
    assert Message({"x": [1]}).to_dict() == {"data": {"x": [1]}}
    assert Message("x", id=0, retry=0).to_dict() == {"data": "x", "id": 0, "retry": 0}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ('{"data": "hi"}', Message("hi")),
        ('{"data": {"a": 1}, "type": "t", "id": 9, "retry": 10}', Message({"a": 1}, type="t", id=9, retry=10)),
        ('["update", {"a": 1}]', Message({"a": 1}, type="update")),
        # anyone can PUBLISH: what could break the stream is removed, not trusted
        ('{"data": "x", "type": "a\\nevent:evil", "id": "1\\r\\n2\\u0000"}', Message("x", type="aevent:evil", id="12")),
        ('{"data": "x", "retry": -5}', Message("x")),
        ('{"data": "x", "retry": "9"}', Message("x")),
        ('{"data": "x", "type": 5, "id": 1.5}', Message("x", type="5", id="1.5")),
        ('{"data": "x", "type": ["no"], "id": {"no": 1}}', Message("x")),
        ('{"data": "x", "type": true, "id": false}', Message("x")),
        ('[5, "x"]', Message("x", type="5")),
    ],
)
def test_payload_from_redis(payload: str, expected: Message) -> None:
    assert Message.from_payload(payload.encode()) == expected


@pytest.mark.parametrize(
    "payload",
    [b"not json", b'{"type": "no data"}', b'"a string"', b"[1, 2, 3]", b"42", b"\xff\xfe", b"[" * 100_000],
)
def test_unusable_payloads_are_logged_and_skipped(payload: bytes, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="flask_sse"):
        assert Message.from_payload(payload) is None
    assert "Skipped a Redis message" in caplog.text


def test_payload_round_trip() -> None:
    message = Message({"n": [1, 2]}, type="t", id="abc", retry=0)
    assert Message.from_payload(json.dumps(message.to_dict())) == message

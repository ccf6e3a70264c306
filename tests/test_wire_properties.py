"""Property tests of the wire form: whatever goes in, a browser reads one event back.

Every case is parsed with the WHATWG algorithm (``tests/sse_client.py``) and
must give exactly one event with the data, type and id that went in, after
the documented normalisation (CR and CRLF in data become LF, lone surrogates
become U+FFFD), and never a field or an event more.
"""

from __future__ import annotations

import json
import re
from typing import Any

import flask
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_sse import Message, sse
from flask_sse.message import plain_wire_form
from flask_sse.publisher import _text_payload

from .conftest import MakeApp, RedisServer
from .sse_client import parse

EXAMPLES = settings(max_examples=2000, deadline=None)

#: Any code point, lone surrogates included; biased towards the troublemakers.
nasty = st.sampled_from(["\r", "\n", "\r\n", "\x00", " ", ":", "\u2028", "\u0085", "\ufeff", "\ud800", "é", "✓"])
any_text = st.lists(st.one_of(st.characters(exclude_categories=[]), nasty), max_size=40).map("".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=12,
)
FIELD_LINE = re.compile(r"(event|data|id|retry):.*|")


def wire_text(value: str) -> str:
    """What a value becomes on the wire: lone surrogates replaced."""
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def read_back(message: Message) -> Any:
    text = message.encode().decode("utf-8")
    assert all(FIELD_LINE.fullmatch(line) for line in text.split("\n")), text
    return parse(text)


@EXAMPLES
@given(data=st.one_of(any_text, json_values), type=any_text, id=st.one_of(any_text, st.integers()),
       retry=st.one_of(st.none(), st.integers(min_value=0)))
def test_one_event_out_with_what_went_in(data: Any, type: str, id: str | int, retry: int | None) -> None:
    breaks_a_field = any(char in f"{type}{id}" for char in "\r\n\x00")
    if breaks_a_field:
        with pytest.raises(ValueError, match="must not contain CR, LF or NUL"):
            Message(data, type=type, id=id, retry=retry)
        return
    parser = read_back(Message(data, type=type, id=id, retry=retry))
    (event,) = parser.events
    text = data if isinstance(data, str) else json.dumps(data)
    assert event.data == wire_text(text.replace("\r\n", "\n").replace("\r", "\n"))
    assert event.type == (wire_text(type) or "message")
    assert event.last_event_id == wire_text(str(id))
    assert parser.retry == retry
    assert parser.comments == []


@EXAMPLES
@given(payload=st.one_of(
    json_values.map(json.dumps),
    st.dictionaries(st.sampled_from(["data", "type", "id", "retry", "other"]), json_values).map(json.dumps),
    st.tuples(json_values, json_values).map(lambda pair: json.dumps(list(pair))),
    st.binary(max_size=64),
    any_text.map(lambda text: text.encode("utf-8", "surrogatepass")),
))
def test_payloads_from_other_publishers_are_sanitised_or_skipped(payload: str | bytes) -> None:
    message = Message.from_payload(payload)
    if message is None:
        return
    parser = read_back(message)
    assert len(parser.events) == 1
    assert parser.comments == []


@EXAMPLES
@given(payload=st.one_of(
    st.dictionaries(st.sampled_from(["data", "type", "id", "retry", "other"]), json_values).map(json.dumps),
    st.fixed_dictionaries(
        {"data": st.one_of(any_text, json_values)},
        optional={"type": any_text, "id": st.one_of(any_text, st.integers())},
    ).map(json.dumps),
    st.fixed_dictionaries({"data": json_values}, optional={"type": any_text, "id": any_text}).map(
        lambda fields: json.dumps(fields, ensure_ascii=False).encode("utf-8", "surrogatepass")
    ),
    st.binary(max_size=64),
))
def test_the_short_way_makes_the_same_bytes_or_declines(payload: str | bytes) -> None:
    """The hub's fast decoding of common payloads is exactly the general one."""
    raw = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
    short = plain_wire_form(raw)
    if short is None:
        return
    message = Message.from_payload(raw)
    assert message is not None
    assert short == (message.encode(), message.id)


@EXAMPLES
@given(data=any_text, type=st.one_of(st.none(), any_text),
       id=st.one_of(st.none(), any_text, st.integers()),
       retry=st.one_of(st.none(), st.integers(min_value=0)))
def test_text_data_is_written_as_flasks_json_provider_writes_it(
    data: str, type: str | None, id: str | int | None, retry: int | None
) -> None:
    """The publisher writes a ``str``'s payload itself: the same bytes as the provider."""
    if any(char in f"{type}{id}" for char in "\r\n\x00"):
        return
    message = Message(data, type=type, id=id, retry=retry)
    with flask.Flask(__name__).app_context():
        assert _text_payload(message) == flask.json.dumps(message.to_dict())


@pytest.mark.parametrize(
    ("payload", "taken"),
    [
        # what this package publishes: history puts the id first
        (b'{"id":"1700000000000-3","data": "12 1700000000.5"}', True),
        (b'{"id":"1700000000000-3","data": {"n": [1, 2]}, "type": "update"}', True),
        (b'{"data": "x"}', True),
        (b'{"data": "x", "type": ""}', True),
        (b'{"data": "caf\\u00e9 \\u2028"}', True),
        # the general way: what needs more than copying
        (b'{"data": "a\\nb", "id": "1-0"}', False),
        (b'{"data": " lead"}', False),
        (b'{"data": "x", "retry": 5}', False),
        (b'{"data": "x", "id": 5}', False),
        (b'{"data": "x", "type": "a\\u0000"}', False),
        (b'{"data": "\\ud800"}', False),
        (b'["update", "x"]', False),
        (b' {"data": "x"}', False),
        (b'{"data": "x"} ', False),
    ],
)
def test_which_payloads_take_the_short_way(payload: bytes, taken: bool) -> None:
    message = Message.from_payload(payload)
    assert message is not None
    assert (plain_wire_form(payload) is not None) == taken


@pytest.mark.parametrize("history", [1000, 0])
def test_what_this_package_publishes_takes_the_short_way(
    make_app: MakeApp, redis_server: RedisServer, history: int
) -> None:
    """The payloads ``sse.publish`` makes, as Redis carries them, are all the hub's fast case."""
    app = make_app(redis_url=redis_server.url, SSE_HISTORY=history)
    with redis_server.client() as listener, listener.pubsub() as pubsub:
        pubsub.psubscribe("*")
        assert pubsub.get_message(timeout=5) is not None  # the confirmation
        with app.app_context():
            sse.publish("text", channel="wire")
            sse.publish({"price": 3, "items": ["a", "b"]}, type="quote", channel="wire")
            sse.publish(12.5, channel="wire", id=None if history else "7")
        payloads: list[bytes] = []
        while len(payloads) < 3:
            message = pubsub.get_message(timeout=5)
            assert message is not None, f"only {len(payloads)} of 3 publishes came"
            payloads.append(message["data"])
    for payload in payloads:
        message = Message.from_payload(payload)
        assert message is not None
        assert plain_wire_form(payload) == (message.encode(), message.id), payload


def test_a_huge_payload_is_one_event() -> None:
    data = "x" * 5_000_000 + "\r\n" + "y" * 1000
    message = Message.from_payload(json.dumps({"data": data, "type": "big\n", "id": "\x00" * 1000}))
    assert message is not None
    (event,) = read_back(message).events
    assert (len(event.data), event.type, event.last_event_id) == (5_001_001, "big", "")


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        ("\ufeffdata:a\n\n", [("a", "message", "")]),
        ("data: a\r\rdata:b\r\n\r\n", [("a", "message", ""), ("b", "message", "")]),
        (":comment\nevent:x\ndata\n\n", [("", "x", "")]),
        ("id:1\x002\ndata:a\n\n", [("a", "message", "")]),
        ("retry:12x\nid:7\ndata:a\ndata:b\n\n", [("a\nb", "message", "7")]),
        ("data:a\n", []),
    ],
)
def test_the_reference_parser(stream: str, expected: list[tuple[str, str, str]]) -> None:
    parser = parse(stream)
    assert [(event.data, event.type, event.last_event_id) for event in parser.events] == expected

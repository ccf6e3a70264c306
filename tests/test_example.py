"""The example app: the page, the guarded staff channel, and publishing from the form."""

from __future__ import annotations

import html
import re

import pytest
from flask import Flask

from example.app import create_app

from .conftest import OpenClientStream


@pytest.fixture
def example(memory_url: str) -> Flask:
    return create_app({"TESTING": True, "SSE_REDIS_URL": memory_url, "SSE_KEEPALIVE": 0.2})


def stream_url(page: str) -> str:
    """The stream the page's client opens: its prefix and channels."""
    prefix = re.search(r'data-prefix="([^"]+)"', page)
    channels = re.search(r'data-channels="([^"]+)"', page)
    assert prefix is not None and channels is not None
    query = "&".join(f"channel={name}" for name in html.unescape(channels[1]).split())
    return f"{html.unescape(prefix[1])}?{query}"


def private_channel(url: str) -> str:
    match = re.search(r"channel=(private-\w+)", url)
    assert match is not None
    return match[1]


def test_page_streams_news_and_hides_staff_until_signed_in(example: Flask) -> None:
    client = example.test_client()
    url = stream_url(client.get("/").get_data(as_text=True))
    assert url.startswith("/stream?channel=news&channel=private-") and "token=" not in url
    assert "staff" not in url
    assert client.get("/stream?channel=news&channel=staff").status_code == 403
    assert client.post("/publish", json={"channel": "staff", "text": "x"}).status_code == 403
    client.post("/login")
    assert "channel=staff" in stream_url(client.get("/").get_data(as_text=True))
    stream = client.get("/stream?channel=news&channel=staff", buffered=False)
    assert stream.status_code == 200
    stream.close()


def test_the_form_publishes_to_open_streams(example: Flask, client_stream: OpenClientStream) -> None:
    client = example.test_client()
    stream = client_stream("/stream?channel=news", client=client)
    assert stream.read_chunk().startswith("retry:3000\n")
    assert client.post("/publish", data={"channel": "news", "text": "hello"}).status_code == 303
    chunk = stream.read_chunk()
    assert chunk.startswith("event:news\ndata:{") and '"text": "hello"' in chunk
    stream.close()


def test_each_visitor_has_a_private_channel_only_their_page_opens(
    example: Flask, client_stream: OpenClientStream
) -> None:
    ann, bob = example.test_client(), example.test_client()
    ann_url = stream_url(ann.get("/").get_data(as_text=True))
    bob_url = stream_url(bob.get("/").get_data(as_text=True))
    ann_channel = private_channel(ann_url)
    assert ann_channel not in bob_url
    stolen = bob_url.replace(private_channel(bob_url), ann_channel)
    assert bob.get(stolen).status_code == 403
    stream = client_stream(ann_url, client=ann)
    stream.read_chunk()
    assert bob.post("/publish", json={"channel": "me", "text": "to bob"}).status_code == 204
    assert ann.post("/publish", json={"channel": "me", "text": "to ann"}).status_code == 204
    chunk = stream.read_chunk()
    assert chunk.startswith("event:me\n") and "to ann" in chunk and "to bob" not in chunk
    stream.close()


@pytest.mark.parametrize(
    ("fields", "status"),
    [({"channel": "other", "text": "x"}, 400), ({"channel": "news", "text": " "}, 400)],
)
def test_the_form_refuses_bad_input(example: Flask, fields: dict[str, str], status: int) -> None:
    assert example.test_client().post("/publish", json=fields).status_code == status

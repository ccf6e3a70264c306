"""The example app: the page, the guarded staff channel, and publishing from the form."""

from __future__ import annotations

import pytest
from flask import Flask

from example.app import create_app


@pytest.fixture
def example(memory_url: str) -> Flask:
    return create_app({"TESTING": True, "SSE_REDIS_URL": memory_url, "SSE_KEEPALIVE": 0.2})


def test_page_streams_news_and_hides_staff_until_signed_in(example: Flask) -> None:
    client = example.test_client()
    page = client.get("/").get_data(as_text=True)
    assert 'data-stream="/stream?channel=news"' in page
    assert client.get("/stream?channel=news&channel=staff").status_code == 403
    assert client.post("/publish", json={"channel": "staff", "text": "x"}).status_code == 403
    client.post("/login")
    assert "channel=staff" in client.get("/").get_data(as_text=True)
    stream = client.get("/stream?channel=news&channel=staff", buffered=False)
    assert stream.status_code == 200
    stream.close()


def test_the_form_publishes_to_open_streams(example: Flask) -> None:
    client = example.test_client()
    stream = client.get("/stream?channel=news", buffered=False)
    chunks = iter(stream.response)
    assert next(chunks).startswith(b"retry:3000\n")
    assert client.post("/publish", data={"channel": "news", "text": "hello"}).status_code == 303
    chunk = next(chunks).decode()
    assert chunk.startswith("event:news\ndata:{") and '"text": "hello"' in chunk
    stream.close()


@pytest.mark.parametrize(
    ("fields", "status"),
    [({"channel": "other", "text": "x"}, 400), ({"channel": "news", "text": " "}, 400)],
)
def test_the_form_refuses_bad_input(example: Flask, fields: dict[str, str], status: int) -> None:
    assert example.test_client().post("/publish", json=fields).status_code == status

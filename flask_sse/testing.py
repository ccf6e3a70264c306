"""Helpers for testing an app that uses flask_sse, with Flask's test client.

Capture what your code publishes, without Redis::

    from flask_sse.testing import captured_events

    def test_order_update(app, client):
        with captured_events(app) as events:
            client.post("/orders/7/ship")
        assert [(e.channel, e.message.type) for e in events] == [("orders", "shipped")]

Read events from the stream, without hanging the test (use ``memory://``, and a
small ``SSE_KEEPALIVE`` such as 0.1 so a timeout is noticed quickly)::

    from flask_sse.testing import read_events

    messages = read_events(client, "/stream?channel=orders", count=2, timeout=5)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from .message import Message, read_wire
from .publisher import Publisher
from .state import app_state


@dataclass(frozen=True)
class PublishedEvent:
    """One event the app published: where to, and what."""

    channel: str
    message: Message
    #: as the caller gave it (``None``: each publish got a key of its own)
    idempotency_key: str | None = None


class _RecordingPublisher(Publisher):
    """Checks every event as the real publisher does, then keeps it."""

    def __init__(self, real: Publisher) -> None:
        super().__init__(
            real.redis_url, real.default_channel, real.history, real.history_ttl, real.namespace,
            real.attempts,
        )
        self.events: list[PublishedEvent] = []

    def _send(self, channels: list[str], message: Message, idempotency_key: str | None) -> int:
        """One recorded event per channel, as each channel's history would hold it."""
        self.events.extend(
            PublishedEvent(channel, message, idempotency_key) for channel in channels
        )
        return 0


@contextmanager
def captured_events(app: Flask) -> Iterator[list[PublishedEvent]]:
    """Within the block, ``send_event``/``sse.publish`` record instead of publishing.

    Bad input still raises as it would for real (a CR in a type, a bad channel).
    """
    state = app_state("captured_events(app)", app)
    recorder = _RecordingPublisher(state.publisher)
    app.extensions["sse"] = replace(state, publisher=recorder)
    try:
        yield recorder.events
    finally:
        app.extensions["sse"] = state


def read_events(
    client: FlaskClient, path: str, count: int, timeout: float = 5.0, **kwargs: Any
) -> list[Message]:
    """Open the stream at ``path`` and return its first ``count`` events.

    Returns early with fewer once ``timeout`` seconds have passed (checked each
    time the stream writes, so at least every ``SSE_KEEPALIVE``), and always
    closes the stream. ``kwargs`` go to ``client.get`` (``headers=...``).
    """
    response = client.get(path, buffered=False, **kwargs)
    if response.status_code != 200:
        body = response.get_data(as_text=True)
        response.close()
        raise AssertionError(f"GET {path} answered {response.status_code}: {body}")
    deadline = time.monotonic() + timeout
    text = ""
    messages: list[Message] = []
    try:
        for chunk in response.response:
            text += chunk.decode() if isinstance(chunk, bytes) else chunk
            messages = read_wire(text)
            if len(messages) >= count or time.monotonic() >= deadline:
                break
    finally:
        response.close()
    return messages[:count]

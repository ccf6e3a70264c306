"""Publishing: the same Redis payload from a view, a task or a script.

``Publisher`` needs no Flask app, so Celery and RQ workers and plain scripts
publish exactly what ``sse.publish()`` and ``send_event()`` do; both of those
are a ``Publisher`` bound to the app's configuration.
"""

from __future__ import annotations

from typing import Any

from flask import json

from .broker import redis_client
from .config import channel_problem, check_redis_url
from .message import EventId, Message


class Publisher:
    """Publishes events to Redis; one connection pool per URL per process.

    ``data`` that is not ``str`` is serialised with ``flask.json``: the app's
    JSON provider inside an app context, the standard library with Flask's
    defaults (dates, UUIDs, dataclasses) outside one.
    """

    def __init__(
        self, redis_url: str = "redis://localhost:6379/0", default_channel: str = "sse"
    ) -> None:
        check_redis_url(redis_url)
        problem = channel_problem(default_channel)
        if problem:
            raise ValueError(f"default_channel is not usable: {problem}.")
        self.redis_url = redis_url
        self.default_channel = default_channel

    def publish(
        self,
        data: Any,
        type: str | None = None,
        id: EventId | None = None,
        retry: int | None = None,
        channel: str | None = None,
    ) -> int:
        """Publish one event; return how many processes were listening.

        Raises ``ValueError`` for a field that could break the stream and
        ``redis.ConnectionError`` when Redis cannot be reached: an event is
        never dropped silently.
        """
        channel = self.default_channel if channel is None else channel
        problem = channel_problem(channel)
        if problem:
            raise ValueError(f"Cannot publish: {problem}.")
        message = Message(data, type=type, id=id, retry=retry)
        payload = json.dumps(message.to_dict())
        return int(redis_client(self.redis_url).publish(channel, payload))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.redis_url!r})"

"""Publishing: the same Redis payload from a view, a task or a script.

``Publisher`` needs no Flask app, so Celery and RQ workers and plain scripts
publish exactly what ``sse.publish()`` and ``send_event()`` do; both of those
are a ``Publisher`` bound to the app's configuration.
"""

from __future__ import annotations

from typing import Any

from flask import json

from .config import DEFAULTS, channel_problem, check_redis_url
from .message import EventId, Message, non_finite_path
from .registry import history_for, is_cluster


class Publisher:
    """Publishes events to Redis; one connection pool per URL per process.

    ``data`` that is not ``str`` is serialised with ``flask.json``: the app's
    JSON provider inside an app context, the standard library with Flask's
    defaults (dates, UUIDs, dataclasses) outside one.

    With ``history`` (the number of events kept per channel, as
    ``SSE_HISTORY``) each event is appended to its channel's history and
    published in one atomic step, and its id is its history position: an
    ``id`` given here is then not sent (see docs/resume.md). With
    ``history=0`` the event is only published, with the ``id`` given.

    ``namespace`` must be the app's ``SSE_NAMESPACE`` (see ``naming.py``).
    """

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379/0",
        default_channel: str = "sse",
        history: int = DEFAULTS["SSE_HISTORY"],
        history_ttl: int = DEFAULTS["SSE_HISTORY_TTL"],
        namespace: str = "",
    ) -> None:
        check_redis_url(redis_url, setting="Publisher")
        problem = channel_problem(default_channel)
        if problem:
            raise ValueError(f"default_channel is not usable: {problem}.")
        if history < 0 or history_ttl < 1:
            raise ValueError("history must be 0 or more and history_ttl 1 second or more")
        self.redis_url = redis_url
        self.default_channel = default_channel
        self.history = history
        self.history_ttl = history_ttl
        self.namespace = namespace

    def publish(
        self,
        data: Any,
        type: str | None = None,
        id: EventId | None = None,
        retry: int | None = None,
        channel: str | None = None,
    ) -> int:
        """Publish one event; return how many processes were listening.

        Raises ``ValueError`` for a field that could break the stream (or
        data holding NaN or infinity, which JSON cannot carry) and
        ``redis.ConnectionError`` when Redis cannot be reached: an event is
        never dropped silently.
        """
        channel = self.default_channel if channel is None else channel
        problem = channel_problem(channel, cluster=is_cluster(self.redis_url))
        if problem:
            raise ValueError(f"Cannot publish: {problem}.")
        where = non_finite_path(data)
        if where:
            raise ValueError(
                f"Cannot publish: {where} is NaN or infinite, which JSON cannot carry (the "
                "browser's JSON.parse would reject the event). Send None or a string instead."
            )
        return self._send(channel, Message(data, type=type, id=id, retry=retry))

    def _send(self, channel: str, message: Message) -> int:
        history = history_for(self.redis_url, self.namespace)
        if not self.history:
            return history.publish_live(channel, _payload(message))
        message.id = None  # the history position becomes the id
        _, receivers = history.publish(
            channel, _payload(message), self.history, self.history_ttl
        )
        return receivers

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.redis_url!r})"


def _payload(message: Message) -> str:
    """The message as the JSON object publishers write, or a TypeError that says how to fix it."""
    try:
        return json.dumps(message.to_dict())
    except TypeError as error:
        raise TypeError(
            f"Cannot publish: the data holds something JSON cannot encode ({error}). "
            "Convert it first (str(value), or a dict of its fields), or teach the app's "
            "JSON provider about the type (a subclass of flask.json.provider."
            "DefaultJSONProvider, set as app.json)."
        ) from None

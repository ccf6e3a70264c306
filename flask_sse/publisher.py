"""Publishing: the same Redis payload from a view, a task or a script.

``Publisher`` needs no Flask app, so Celery and RQ workers and plain scripts
publish exactly what ``sse.publish()`` and ``send_event()`` do; both of those
are a ``Publisher`` bound to the app's configuration.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import time
from collections.abc import Iterable
from json.encoder import encode_basestring_ascii
from typing import Any

import redis
from flask import json

from . import metrics
from .config import DEFAULTS, channel_problem, channels_problem, check_redis_url
from .message import EventId, Message, non_finite_path
from .registry import history_for, is_cluster

logger = logging.getLogger("flask_sse")

#: The errors after which a publish may or may not have happened: the command
#: may have reached Redis before the connection broke or the answer timed out.
UNCERTAIN = (redis.ConnectionError, redis.TimeoutError)
#: Longest ``idempotency_key``.
MAX_KEY_LENGTH = 200
#: Most channels one publish call may name (as Pusher's trigger).
MAX_CHANNELS_PER_PUBLISH = 100
#: Seconds before the first retry; each next one waits twice as long, up to
#: ``LONGEST_PAUSE``.
FIRST_PAUSE = 0.1
LONGEST_PAUSE = 2.0


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

    A publish that fails with ``redis.ConnectionError`` or
    ``redis.TimeoutError`` may or may not have happened (Redis may run the
    command after the answer timed out), so it is tried again, up to
    ``attempts`` times in all, as ``SSE_PUBLISH_ATTEMPTS``. Retrying is safe:
    every publish carries an identity, and Redis stores and delivers an
    identity once (see ``history.py``).
    """

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379/0",
        default_channel: str = "sse",
        history: int = DEFAULTS["SSE_HISTORY"],
        history_ttl: int = DEFAULTS["SSE_HISTORY_TTL"],
        namespace: str = "",
        attempts: int = DEFAULTS["SSE_PUBLISH_ATTEMPTS"],
    ) -> None:
        check_redis_url(redis_url, setting="Publisher")
        problem = channel_problem(default_channel)
        if problem:
            raise ValueError(f"default_channel is not usable: {problem}.")
        if history < 0 or history_ttl < 1:
            raise ValueError("history must be 0 or more and history_ttl 1 second or more")
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"attempts must be a whole number, 1 or more (got {attempts!r})")
        self.redis_url = redis_url
        self.default_channel = default_channel
        self.history = history
        self.history_ttl = history_ttl
        self.namespace = namespace
        self.attempts = attempts

    def publish(
        self,
        data: Any,
        type: str | None = None,
        id: EventId | None = None,
        retry: int | None = None,
        channel: str | Iterable[str] | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Publish one event; return how many processes were listening.

        ``channel`` is one name, or a list of up to
        ``MAX_CHANNELS_PER_PUBLISH`` (a notification for several users):
        the event is appended to each channel's history and published there
        (each with its own id), in one round trip per Redis server, and the
        listeners are summed. A stream on two of them gets it from each.

        ``idempotency_key`` names this publish, so that publishing it again
        (a task retried by Celery or RQ, a script run twice) does nothing:
        give something that stays the same across the retries, such as the
        task's id plus what the event is about. Without one, each call gets
        a key of its own, which covers this call's own retries. A repeat
        returns 0. Keys are remembered per channel for as many publishes as
        its history keeps (``REMEMBERED_WITHOUT_HISTORY`` with no history),
        for as long as the history lives.

        Raises ``ValueError`` for a field that could break the stream (or
        data holding NaN or infinity, which JSON cannot carry). After
        ``attempts`` tries, raises the last ``redis.ConnectionError`` or
        ``redis.TimeoutError``: the event may or may not have been published,
        so publish it again later with the same ``idempotency_key``. An
        event is never dropped silently.
        """
        channels = self._channels(channel)
        where = non_finite_path(data)
        if where:
            raise ValueError(
                f"Cannot publish: {where} is NaN or infinite, which JSON cannot carry (the "
                "browser's JSON.parse would reject the event). Send None or a string instead."
            )
        if idempotency_key is not None and not (
            isinstance(idempotency_key, str) and 0 < len(idempotency_key) <= MAX_KEY_LENGTH
        ):
            raise ValueError(
                f"Cannot publish: idempotency_key must be a string of 1 to {MAX_KEY_LENGTH} "
                f"characters (got {idempotency_key!r:.60})."
            )
        message = Message(data, type=type, id=id, retry=retry)
        try:
            receivers = self._send(channels, message, idempotency_key)
        except redis.RedisError as error:
            metrics.publish_failed(error)
            raise
        metrics.published()
        return receivers

    def _channels(self, channel: str | Iterable[str] | None) -> list[str]:
        """The channels to publish on, checked; a repeated name counts once."""
        if channel is None:
            names = [self.default_channel]
        elif isinstance(channel, str):
            names = [channel]
        else:
            names = list(dict.fromkeys(channel))
        if not names:
            raise ValueError("Cannot publish: the list of channels is empty; name at least one.")
        if len(names) > MAX_CHANNELS_PER_PUBLISH:
            raise ValueError(
                f"Cannot publish on {len(names)} channels in one call: at most "
                f"{MAX_CHANNELS_PER_PUBLISH}. Split them over several calls."
            )
        problem = channels_problem(names, cluster=is_cluster(self.redis_url))
        if problem:
            raise ValueError(f"Cannot publish: {problem}.")
        return names

    def _send(self, channels: list[str], message: Message, idempotency_key: str | None) -> int:
        """Publish once, trying again after the errors that leave it uncertain."""
        identity = idempotency_key or _new_identity()
        if self.history:
            message.id = None  # the history position becomes the id
        payload = _payload(message)
        history = history_for(self.redis_url, self.namespace)
        pause = FIRST_PAUSE
        attempt = 1
        while True:
            try:
                if len(channels) == 1:
                    _, receivers = history.publish(
                        channels[0], payload, self.history, self.history_ttl, identity
                    )
                    return receivers
                published = history.publish_many(
                    channels, payload, self.history, self.history_ttl, identity
                )
                return sum(receivers for _, receivers in published)
            except UNCERTAIN as error:
                if attempt >= self.attempts:
                    raise
                logger.warning(
                    "Publishing on %s failed (%s: %s); trying again in %.1f s (attempt %d of %d)",
                    ", ".join(map(repr, channels)), error.__class__.__name__, error, pause,
                    attempt + 1, self.attempts,
                )
            time.sleep(pause)
            pause = min(pause * 2, LONGEST_PAUSE)
            attempt += 1

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.redis_url!r})"


#: A call's own identity: this process's random prefix and a count (one random
#: draw per process, not per call); a forked child draws a prefix of its own.
_identity_prefix = secrets.token_urlsafe(12)
_identity_count = itertools.count()


def _new_identity() -> str:
    return f"{_identity_prefix}.{next(_identity_count)}"


def _draw_identity_prefix() -> None:
    global _identity_prefix
    _identity_prefix = secrets.token_urlsafe(12)


os.register_at_fork(after_in_child=_draw_identity_prefix)


def _payload(message: Message) -> str:
    """The message as the JSON object publishers write, or a TypeError that says how to fix it.

    Data that is a string needs no JSON provider: its payload is written
    here, as Flask's default provider writes it (keys sorted, ASCII), in a
    fraction of the time. Any other data goes through the app's provider.
    """
    if isinstance(message.data, str):
        return _text_payload(message)
    try:
        return json.dumps(message.to_dict())
    except TypeError as error:
        raise TypeError(
            f"Cannot publish: the data holds something JSON cannot encode ({error}). "
            "Convert it first (str(value), or a dict of its fields), or teach the app's "
            "JSON provider about the type (a subclass of flask.json.provider."
            "DefaultJSONProvider, set as app.json)."
        ) from None


def _text_payload(message: Message) -> str:
    """The payload of an event whose data is a ``str`` (its other fields are checked
    ``str`` or ``int``), byte for byte what ``flask.json.dumps(message.to_dict())`` writes
    with Flask's default provider."""
    payload = '{"data": ' + encode_basestring_ascii(message.data)
    for name, value in (("id", message.id), ("retry", message.retry), ("type", message.type)):
        if value is not None:
            text = encode_basestring_ascii(value) if isinstance(value, str) else int.__repr__(value)
            payload += f', "{name}": {text}'
    return payload + "}"

"""One stream request: its checks, its refusals, and the streaming response.

In order: the request's own problems (a ``400`` or ``403`` that says what is
wrong), then the process's limits and Redis (an answer ``EventSource``
retries, see ``refusal.py``), then the stream, whose end releases the
subscription and sends the signals.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any
from urllib.parse import parse_qsl

from flask import current_app, jsonify, request

from . import access, refusal, signals
from .config import SSEConfig, channels_problem
from .event_ids import parse_last_event_id
from .history import Position
from .hub import Hub, HubUnavailable
from .registry import hub_for, is_cluster
from .servers import server_problem
from .state import app_state
from .stream import open_stream
from .subscription import Subscription
from .transport import EventStreamResponse, Transport

logger = logging.getLogger("flask_sse")

#: Longest query string a stream request may have (16 channels of 200
#: characters and a token for them fit well within it).
MAX_QUERY_STRING = 32768


def stream_view(authorize: access.Authorizer | None) -> Any:
    """The answer to a stream request, for a blueprint whose callback is ``authorize``."""
    state = app_state("the stream view")
    config = state.config
    try:
        channels, resume = _read_request(config, authorize)
    except _Refused as refused:
        return jsonify(error=str(refused)), refused.status
    hub = hub_for(config.redis_url, config.namespace)
    if config.max_connections and hub.streams >= config.max_connections:
        return refusal.unavailable(
            request,
            f"This server holds its limit of {config.max_connections} streams "
            "(SSE_MAX_CONNECTIONS).",
            config.retry,
        )
    if state.admission is not None and not state.admission.admit(resume is not None):
        return refusal.unavailable(
            request,
            f"This server is starting {config.admission_rate:g} streams a second "
            "(SSE_ADMISSION_RATE); come back in a moment.",
            config.retry,
        )
    problem = server_problem(request.environ)
    if problem is not None:
        refuse, message = problem
        if refuse:  # final, also for a browser: retrying cannot help
            return jsonify(error=message), 503
        _warn_once(message)
    transport = Transport.from_environ(request.environ)
    try:
        subscription, occupied, body = open_stream(hub, config, channels, resume, transport)
    except HubUnavailable as error:
        return refusal.unavailable(
            request,
            f"The event broker is unavailable: {error}. Check SSE_REDIS_URL and that its "
            "Redis server is running (or use 'memory://' for development).",
            config.retry,
        )
    refusal.trouble.ended()
    response = EventStreamResponse(
        body, transport, config.direct_write,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    transport.release = partial(_closed, app, hub, subscription)
    response.call_on_close(transport.response_closed)
    signals.stream_opened.send(app, channels=channels)
    for channel in occupied:
        signals.channel_occupied.send(app, channel=channel)
    return response


def _closed(app: Any, hub: Hub, subscription: Subscription) -> None:
    """The stream has ended: release the subscription, tell the receivers.

    By now the request's context is gone, so the signals are sent with the
    app's context pushed: receivers may use ``current_app``,
    ``sse.subscriber_count()`` or ``send_event()`` as in a view.
    """
    vacated = hub.unsubscribe(subscription)
    with app.app_context():
        signals.stream_closed.send(
            app, channels=subscription.channels, reason=subscription.end_reason
        )
        for channel in vacated:
            signals.channel_vacated.send(app, channel=channel)


class _Refused(Exception):
    """A stream request answered with ``status`` and this message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _read_request(
    config: SSEConfig, authorize: access.Authorizer | None
) -> tuple[tuple[str, ...], dict[str, Position] | None]:
    """The channels and resume positions a stream request asks for, checked."""
    args = request.args
    if len(request.query_string) > MAX_QUERY_STRING:
        raise _Refused(400, f"The query string is longer than {MAX_QUERY_STRING} bytes.")
    try:  # Werkzeug would quietly turn bad bytes into U+FFFD
        parse_qsl(request.query_string.decode("latin-1"), errors="strict")
    except UnicodeDecodeError:
        raise _Refused(400, "The query string is not valid UTF-8 once decoded.") from None
    for name in ("token", "lastEventId"):
        if len(args.getlist(name)) > 1:
            raise _Refused(400, f"Give {name!r} once, not {len(args.getlist(name))} times.")
    channels = tuple(dict.fromkeys(args.getlist("channel"))) or (config.default_channel,)
    problem = _channels_problem(channels, config.max_channels, is_cluster(config.redis_url))
    if problem:
        raise _Refused(400, problem)
    private = tuple(name for name in channels if name.startswith(config.private_prefix))
    try:
        access.decide(current_app.config.get("SECRET_KEY"), args.get("token"), private, authorize)
    except access.AccessDenied as denied:
        raise _Refused(403, str(denied)) from None
    last_event_id = request.headers.get("Last-Event-ID") or args.get("lastEventId")
    if not last_event_id or not config.history:
        return channels, None
    try:
        return channels, parse_last_event_id(last_event_id, channels)
    except ValueError as error:
        raise _Refused(400, str(error)) from None


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """Log a problem with the server once per process, loudly."""
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def _channels_problem(channels: tuple[str, ...], max_channels: int, cluster: bool) -> str | None:
    if len(channels) > max_channels:
        return (
            f"Too many channels: {len(channels)} asked for, at most {max_channels} "
            "per connection (SSE_MAX_CHANNELS)."
        )
    problem = channels_problem(channels, cluster=cluster)
    return f"Bad channel: {problem}." if problem else None

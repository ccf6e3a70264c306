"""The blueprint: the stream view, ``sse.publish()`` and ``send_event()``.

Registering the blueprint is the initialisation: the ``SSE_*`` settings are
read and validated then, and the app's state is kept in
``app.extensions["sse"]`` (shared by every SSE blueprint of the app).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from flask import Blueprint, Response, current_app, has_app_context, jsonify, request
from flask.blueprints import BlueprintSetupState

from .broker import history_for, hub_for
from .config import SSEConfig, channel_problem, load_config
from .hub import HubUnavailable
from .message import EventId
from .publisher import Publisher
from .stream import event_stream, hang_up, parse_last_event_id

#: Seconds a client is asked to wait after a 503.
RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True)
class SSEState:
    """What one app needs to stream and publish: ``app.extensions["sse"]``."""

    config: SSEConfig
    publisher: Publisher


class ServerSentEventsBlueprint(Blueprint):
    """A blueprint with the stream view at its root and a ``publish`` method.

    Use the ready-made ``sse``, or make your own to give it its own
    ``before_request`` access checks::

        events = ServerSentEventsBlueprint("events", __name__)

        @events.before_request
        def only_members():
            if "admin" in request.args.getlist("channel") and not current_user.is_admin:
                abort(403)

        app.register_blueprint(events, url_prefix="/events")
    """

    def __init__(self, name: str, import_name: str, **kwargs: Any) -> None:
        super().__init__(name, import_name, **kwargs)
        self.add_url_rule("", endpoint="stream", view_func=self.stream)
        self.record(_init_app)

    def publish(
        self,
        data: Any,
        type: str | None = None,
        id: EventId | None = None,
        retry: int | None = None,
        channel: str | None = None,
    ) -> int:
        """Publish an event on ``channel`` (``SSE_DEFAULT_CHANNEL`` if none).

        Returns how many worker processes were subscribed to the channel.
        """
        publisher = _app_state("sse.publish").publisher
        return publisher.publish(data, type=type, id=id, retry=retry, channel=channel)

    def stream(self) -> Any:
        """``GET ?channel=a&channel=b``: the event stream of those channels."""
        config = _app_state("the stream view").config
        channels = tuple(dict.fromkeys(request.args.getlist("channel"))) or (
            config.default_channel,
        )
        problem = _channels_problem(channels, config.max_channels)
        if problem:
            return jsonify(error=problem), 400
        resume = None
        last_event_id = request.headers.get("Last-Event-ID") or request.args.get("lastEventId")
        if last_event_id and config.history:
            try:
                resume = parse_last_event_id(last_event_id, channels)
            except ValueError as error:
                return jsonify(error=str(error)), 400
        hub = hub_for(config.redis_url)
        try:
            subscription = hub.subscribe(channels, config.queue_size)
        except HubUnavailable as error:
            return (
                jsonify(error=f"The event broker is unavailable: {error}."),
                503,
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        client = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
        if client is not None:
            subscription.on_overflow = partial(hang_up, client)
        body = event_stream(
            subscription,
            config,
            history_for(config.redis_url) if config.history else None,
            resume or hub.positions(channels),
            resume is not None,
            client,
            chunked=_is_chunked(request.environ),
        )
        response = Response(
            body,
            content_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        response.call_on_close(partial(hub.unsubscribe, subscription))
        return response


def send_event(
    event: str | None,
    data: Any,
    channel: str | None = None,
    id: EventId | None = None,
    retry: int | None = None,
) -> int:
    """Publish ``data`` as an event of type ``event`` (the original helper)."""
    publisher = _app_state("send_event").publisher
    return publisher.publish(data, type=event, id=id, retry=retry, channel=channel)


def _init_app(setup: BlueprintSetupState) -> None:
    app = setup.app
    config = load_config(app)
    state = app.extensions.get("sse")
    if state is None:
        publisher = Publisher(
            config.redis_url, config.default_channel, config.history, config.history_ttl
        )
        app.extensions["sse"] = SSEState(config, publisher)
    elif state.config != config:
        raise RuntimeError(
            "The SSE_* settings changed after a server-sent events blueprint was "
            "registered on this app. Set app.config before the first "
            "app.register_blueprint(...) call."
        )


def _app_state(caller: str) -> SSEState:
    if not has_app_context():
        raise RuntimeError(
            f"{caller!r} can only be used inside an application context (in a view, "
            "or under 'with app.app_context():'). Outside Flask, use "
            "flask_sse.Publisher(redis_url).publish(...)."
        )
    state: SSEState | None = current_app.extensions.get("sse")
    if state is None:
        raise RuntimeError(
            f"{caller!r} can only be used once a server-sent events blueprint is "
            "registered on the app: app.register_blueprint(sse, url_prefix='/stream')."
        )
    return state


def _is_chunked(environ: dict[str, Any]) -> bool:
    """Whether gunicorn frames this streamed response as HTTP/1.1 chunks."""
    return "gunicorn.socket" in environ and environ.get("SERVER_PROTOCOL") == "HTTP/1.1"


def _channels_problem(channels: tuple[str, ...], max_channels: int) -> str | None:
    if len(channels) > max_channels:
        return (
            f"Too many channels: {len(channels)} asked for, at most {max_channels} "
            "per connection (SSE_MAX_CHANNELS)."
        )
    for channel in channels:
        problem = channel_problem(channel)
        if problem:
            return f"Bad channel: {problem}."
    return None


#: The ready-made blueprint: ``app.register_blueprint(sse, url_prefix="/stream")``.
sse = ServerSentEventsBlueprint("sse", __name__)

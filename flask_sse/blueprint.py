"""The blueprint: the stream view, ``sse.publish()`` and ``send_event()``.

Registering the blueprint is the initialisation: the ``SSE_*`` settings are
read and validated then, and the app's state is kept in
``app.extensions["sse"]`` (shared by every SSE blueprint of the app).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import partial
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from flask import Blueprint, current_app, jsonify, request, url_for
from flask.blueprints import BlueprintSetupState
from flask.sansio.scaffold import setupmethod

from . import access, cli, presence, refusal, signals
from .admission import Admission
from .client import client_script, client_version
from .config import SSEConfig, channel_problem, load_config
from .history import Position
from .hub import Hub, HubUnavailable
from .message import EventId
from .metrics import enable as enable_metrics
from .publisher import Publisher
from .registry import history_for, hub_for, is_cluster, redis_client
from .state import SSEState, app_state
from .stream import open_stream, parse_last_event_id
from .subscription import Subscription
from .transport import EventStreamResponse, Transport, server_problem

logger = logging.getLogger("flask_sse")

_Authorizer = TypeVar("_Authorizer", bound=access.Authorizer)

#: Longest query string a stream request may have (16 channels of 200
#: characters and a token for them fit well within it).
MAX_QUERY_STRING = 32768


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

    Private channels (``SSE_PRIVATE_PREFIX``) are opened by its
    :meth:`authorize` callback or by a token from :meth:`token_for`.
    """

    def __init__(self, name: str, import_name: str, **kwargs: Any) -> None:
        super().__init__(name, import_name, **kwargs)
        self.authorizer: access.Authorizer | None = None
        self.add_url_rule("", endpoint="stream", view_func=self.stream)
        self.add_url_rule("/client.js", endpoint="client", view_func=client_script)
        self.record(_init_app)
        for command in (cli.publish_command, cli.listen_command, cli.stats_command):
            self.cli.add_command(command)
        self.cli.help = (
            f"Publish, listen and see counts of the '{name}' server-sent events blueprint."
        )

    def publish(
        self,
        data: Any,
        type: str | None = None,
        id: EventId | None = None,
        retry: int | None = None,
        channel: str | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Publish an event on ``channel`` (``SSE_DEFAULT_CHANNEL`` if none).

        Returns how many worker processes were subscribed to the channel.
        ``idempotency_key`` and the errors: see :meth:`Publisher.publish`.
        """
        publisher = app_state("sse.publish").publisher
        return publisher.publish(
            data, type=type, id=id, retry=retry, channel=channel, idempotency_key=idempotency_key
        )

    @setupmethod
    def authorize(self, callback: _Authorizer) -> _Authorizer:
        """Register the function that decides who may open private channels.

        ``callback(channels)`` gets the request's private channels (a tuple
        of the names that start with ``SSE_PRIVATE_PREFIX``) and returns
        whether this request may open them all. It runs in the stream
        request's context, so ``session`` and ``flask_login.current_user``
        are there, at every connect and every reconnect: access follows the
        user's session, a page stays open for as long as the user is signed
        in, and nothing secret goes into the URL. A refusal is a ``403``,
        after which ``EventSource`` stops for good. A request it refuses may
        still bring a token (a cross-origin page has no session cookie)::

            @sse.authorize
            def own_channel_only(channels):
                return current_user.is_authenticated and all(
                    channel == f"private-user-{current_user.id}" for channel in channels
                )

        Public channels never reach it: guard them with ``before_request``.
        One callback per blueprint, registered before the blueprint is.
        """
        if self.authorizer is not None:
            raise RuntimeError(
                f"The blueprint {self.name!r} already has an authorize callback "
                f"({getattr(self.authorizer, '__name__', self.authorizer)}): "
                "decide every private channel in one function."
            )
        self.authorizer = callback
        return callback

    def token_for(self, channels: str | Iterable[str], expires_in: float = 3600) -> str:
        """A signed token that opens ``channels`` (private ones) for ``expires_in`` seconds.

        Pass it as the stream's ``token`` parameter, or use :meth:`stream_url`.
        Signed with ``SECRET_KEY``; valid on every SSE blueprint of the app.
        """
        app_state("sse.token_for")
        names = [channels] if isinstance(channels, str) else list(channels)
        for name in names:
            problem = channel_problem(name)
            if problem:
                raise ValueError(f"Cannot make a token: {problem}.")
        return access.mint(current_app.config.get("SECRET_KEY"), names, expires_in)

    def stream_url(
        self,
        *channels: str,
        expires_in: float = 3600,
        with_token: bool | None = None,
        **values: Any,
    ) -> str:
        """The stream's URL for ``channels``, with a token for the private ones.

        ``with_token=None`` adds the token only when this blueprint has no
        :meth:`authorize` callback (with one, the session decides); ``True``
        always adds it (a page on another origin), ``False`` never.
        """
        config = app_state("sse.stream_url").config
        private = [name for name in channels if name.startswith(config.private_prefix)]
        if with_token is None:
            with_token = self.authorizer is None
        if private and with_token:
            values["token"] = self.token_for(private, expires_in)
        return url_for(f"{self.name}.stream", channel=list(channels) or None, **values)

    def client_url(self, **values: Any) -> str:
        """The URL of this blueprint's JavaScript client, with the package's version.

        ``import { connect } from "{{ sse.client_url() }}"`` in a page's module
        script; the version lets browsers cache it until the next upgrade.
        """
        return url_for(f"{self.name}.client", v=client_version(), **values)

    def stream(self) -> Any:
        """``GET ?channel=a&channel=b``: the event stream of those channels."""
        state = app_state("the stream view")
        config = state.config
        try:
            channels, resume = _read_request(config, self.authorizer)
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
        response.call_on_close(partial(_closed, app, hub, subscription))
        signals.stream_opened.send(app, channels=channels)
        for channel in occupied:
            signals.channel_occupied.send(app, channel=channel)
        return response

    def subscriber_count(self, channel: str) -> int:
        """Open streams of ``channel`` across every worker and machine.

        Other workers report their counts within about a second of a change,
        so their part trails by that much (see ``flask_sse/presence.py``);
        this process's own part is live, so a ``channel_vacated`` receiver
        sees its own last stream gone.
        """
        config = app_state("sse.subscriber_count").config
        hub = hub_for(config.redis_url, config.namespace)
        names = history_for(config.redis_url, config.namespace).names
        client = redis_client(config.redis_url)
        others = presence.count(client, channel, names, exclude=hub.presence_key)
        return others + hub.local_subscribers(channel)


def send_event(
    event: str | None,
    data: Any,
    channel: str | None = None,
    id: EventId | None = None,
    retry: int | None = None,
    idempotency_key: str | None = None,
) -> int:
    """Publish ``data`` as an event of type ``event`` (the original helper).

    ``idempotency_key`` and the errors: see :meth:`Publisher.publish`.
    """
    publisher = app_state("send_event").publisher
    return publisher.publish(
        data, type=event, id=id, retry=retry, channel=channel, idempotency_key=idempotency_key
    )


def _init_app(setup: BlueprintSetupState) -> None:
    app = setup.app
    config = load_config(app)
    if config.metrics:
        enable_metrics()
    state = app.extensions.get("sse")
    if state is None:
        publisher = Publisher(
            config.redis_url, config.default_channel, config.history, config.history_ttl,
            config.namespace, config.publish_attempts,
        )
        admission = Admission(config.admission_rate) if config.admission_rate else None
        app.extensions["sse"] = SSEState(config, publisher, admission)
    elif state.config != config:
        raise RuntimeError(
            "The SSE_* settings changed after a server-sent events blueprint was "
            "registered on this app. Set app.config before the first "
            "app.register_blueprint(...) call."
        )


def _closed(app: Any, hub: Hub, subscription: Subscription) -> None:
    """The response is closed: release the subscription, tell the receivers.

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
    for channel in channels:
        problem = channel_problem(channel, cluster=cluster)
        if problem:
            return f"Bad channel: {problem}."
    return None


#: The ready-made blueprint: ``app.register_blueprint(sse, url_prefix="/stream")``.
sse = ServerSentEventsBlueprint("sse", __name__)

"""The blueprint: its routes, ``sse.publish()``, ``send_event()``, tokens and URLs.

The stream request itself (its checks, refusals and the response) is
``view.py``.

Registering the blueprint is the initialisation: the ``SSE_*`` settings are
read and validated then, and the app's state is kept in
``app.extensions["sse"]`` (shared by every SSE blueprint of the app).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from flask import Blueprint, current_app, url_for
from flask.blueprints import BlueprintSetupState
from flask.sansio.scaffold import setupmethod

from . import access, cli
from .admission import Admission
from .client import client_script, client_version
from .config import channel_problem, load_config
from .message import EventId
from .metrics import enable as enable_metrics
from .publisher import Publisher
from .registry import hub_for
from .state import SSEState, app_state
from .view import stream_view

_Authorizer = TypeVar("_Authorizer", bound=access.Authorizer)

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
        channel: str | Iterable[str] | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Publish an event on ``channel`` (``SSE_DEFAULT_CHANNEL`` if none).

        ``channel`` may be a list of up to 100 channels: the event goes to
        each, in one round trip to Redis. Returns how many worker processes
        were subscribed to the channel (summed over the channels).
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
        return stream_view(self.authorizer)

    def subscriber_count(self, channel: str) -> int:
        """Open streams of ``channel`` across every worker and machine.

        Other workers report their counts within about a second of a change,
        so their part trails by that much (see ``flask_sse/presence.py``);
        this process's own part is live, so a ``channel_vacated`` receiver
        sees its own last stream gone.
        """
        config = app_state("sse.subscriber_count").config
        return hub_for(config.redis_url, config.namespace).subscriber_count(channel)


def send_event(
    event: str | None,
    data: Any,
    channel: str | Iterable[str] | None = None,
    id: EventId | None = None,
    retry: int | None = None,
    idempotency_key: str | None = None,
) -> int:
    """Publish ``data`` as an event of type ``event`` (the original helper).

    ``channel``: one name, or a list of them (as :meth:`Publisher.publish`).
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


#: The ready-made blueprint: ``app.register_blueprint(sse, url_prefix="/stream")``.
sse = ServerSentEventsBlueprint("sse", __name__)

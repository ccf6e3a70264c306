"""The app the integration tests serve with ``gunicorn -k gevent``.

Configured from the environment by the ``gunicorn`` fixture: the ready-made
``sse`` at ``/stream``, a guarded blueprint of the user's own at
``/private`` (whose private channels follow the session: ``/login/<user>``
opens ``private-<user>``, ``/logout`` closes it), and views that publish
through both APIs, and ``/metrics``.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import zlib
from collections.abc import Iterator

from flask import Flask, Response, abort, request, session
from flask_cors import CORS

from flask_sse import ServerSentEventsBlueprint, links, send_event, sse
from flask_sse.metrics import metrics_view
from flask_sse.registry import hub_for
from flask_sse.transport import PARKING

private = ServerSentEventsBlueprint("private", __name__)


@private.before_request
def refuse_secret_channel() -> None:
    """Access control the way users write it: a hook on the blueprint."""
    if "secret" in request.args.getlist("channel") and request.headers.get("X-Token") != "open":
        abort(403, "The 'secret' channel needs a token.")


@private.authorize
def own_channel_only(channels: tuple[str, ...]) -> bool:
    """A signed-in user may open their own private channel, at every (re)connect."""
    user = session.get("user")
    return user is not None and all(channel == f"private-{user}" for channel in channels)


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "a secret for the tests only"
    app.config.update(json.loads(os.environ["SSE_TEST_SETTINGS"]))
    cors_origin = app.config.pop("TEST_CORS_ORIGIN", None)
    if cors_origin:
        CORS(app, origins=[cors_origin], supports_credentials=True)
    app.config.setdefault("TEST_TOKEN_SECONDS", 3600)
    hold_fds = app.config.pop("TEST_HOLD_FDS", 0)
    if hold_fds:  # so that the sockets of the streams get descriptors of 1024 and above
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        app.config["held"] = [os.open(os.devnull, os.O_RDONLY) for _ in range(hold_fds)]
    ping_interval = app.config.pop("TEST_PING_INTERVAL", None)
    if ping_interval:  # how soon this worker's links notice a network gone silent
        links.PING_INTERVAL = ping_interval
        links.READ_TIMEOUT = 3 * ping_interval
    if app.config.pop("TEST_GZIP", False):
        app.after_request(gzip_streams)
    app.register_blueprint(sse, url_prefix="/stream")
    app.register_blueprint(private, url_prefix="/private")

    @app.post("/publish")
    def publish() -> dict[str, int]:
        """``sse.publish()``, the method of the package-index library."""
        body = request.get_json()
        receivers = sse.publish(
            body["data"], type=body.get("type"), id=body.get("id"), channel=body["channel"]
        )
        return {"receivers": receivers}

    @app.post("/send_event")
    def send() -> dict[str, int]:
        """``send_event()``, the helper of the original library."""
        body = request.get_json()
        return {"receivers": send_event(body["event"], body["data"], channel=body["channel"])}

    @app.get("/subscribers/<channel>")
    def subscribers(channel: str) -> dict[str, int]:
        return {"count": hub_for(app.config["SSE_REDIS_URL"]).local_subscribers(channel)}

    @app.get("/streams")
    def streams() -> dict[str, int]:
        """The streams this worker holds open now, on every channel."""
        return {"count": hub_for(app.config["SSE_REDIS_URL"]).streams}

    @app.get("/parked")
    def parked() -> dict[str, int]:
        """The streams this worker has parked (``flask_sse.worker.GeventWorker``)."""
        return {"count": len(request.environ.get(PARKING) or ())}

    @app.get("/nodelay/<int:port>")
    def nodelay(port: int) -> dict[str, int]:
        """``TCP_NODELAY`` of this worker's connection to a client's ``port`` (404: none)."""
        for fd in map(int, os.listdir("/proc/self/fd")):
            try:
                connection = socket.socket(fileno=os.dup(fd))
            except OSError:
                continue  # not a socket, or closed meanwhile
            with connection:
                try:
                    peer = connection.getpeername()
                except OSError:
                    continue
                if connection.family == socket.AF_INET and peer[1] == port:
                    return {"nodelay": connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)}
        abort(404)

    @app.get("/token")
    def token() -> dict[str, str] | tuple[dict[str, str], int]:
        """A short-lived token for the signed-in user's own channels (``tokenUrl``)."""
        user = session.get("user")
        channels = request.args.getlist("channel")
        if user is None or any(channel != f"private-{user}" for channel in channels):
            return {"error": "sign in first, and ask for your own channel"}, 403
        return {"token": sse.token_for(channels, expires_in=app.config["TEST_TOKEN_SECONDS"])}

    @app.get("/count/<channel>")
    def count(channel: str) -> dict[str, int]:
        """``sse.subscriber_count()``: open streams across every worker of this app."""
        return {"count": sse.subscriber_count(channel)}

    @app.get("/stream_url")
    def stream_url() -> dict[str, str]:
        """``sse.stream_url()``: the URL (with a token for private channels)."""
        expires_in = float(request.args.get("expires_in", 3600))
        external = "external" in request.args  # an absolute URL, as a page on another origin needs
        channels = request.args.getlist("channel")
        return {"url": sse.stream_url(*channels, expires_in=expires_in, _external=external)}

    @app.post("/login/<user>")
    def login(user: str) -> dict[str, str]:
        session["user"] = user
        return {"user": user}

    @app.post("/logout")
    def logout() -> dict[str, str]:
        session.clear()
        return {}

    @app.get("/pid")
    def pid() -> dict[str, int]:
        return {"pid": os.getpid()}

    app.add_url_rule("/metrics", view_func=metrics_view)  # the figures of every worker

    return app


def gzip_streams(response: Response) -> Response:
    """An ``after_request`` hook that compresses event streams, as users write them."""
    if response.mimetype != "text/event-stream":
        return response
    compressor = zlib.compressobj(wbits=31)  # gzip
    body = response.response

    def compressed() -> Iterator[bytes]:
        for chunk in body:
            data = chunk.encode() if isinstance(chunk, str) else chunk
            yield compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)

    response.response = compressed()
    response.headers["Content-Encoding"] = "gzip"
    return response


app = create_app()

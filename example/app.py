"""A demo of flask_sse: a public ``news`` channel and a staff-only ``staff`` one.

Run it with ``flask --app example.app run`` (the embedded ``memory://`` broker
needs no Redis server) or with gunicorn as in the ``Procfile``. "Signing in"
is a button with no password: it only shows where real access control goes.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from flask import Flask, jsonify, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue

from flask_sse import ServerSentEventsBlueprint, send_event

#: Every channel the page knows; each event's type is its channel's name.
#: "me" is the visitor's own private channel: only their page can open it.
CHANNELS = ("news", "staff", "me")
#: Channels only a staff session may open or publish to.
STAFF_CHANNELS = frozenset({"staff"})
#: Longest text accepted from the form.
MAX_TEXT = 500

#: The app's own stream blueprint rather than the shared ``flask_sse.sse``, so
#: the access check below belongs to this app only and is added exactly once,
#: however many apps ``create_app()`` builds. Named "sse": its view is
#: ``sse.stream``.
events = ServerSentEventsBlueprint("sse", __name__)


def is_staff() -> bool:
    """Whether this visitor pressed "Sign in as staff" (demo only)."""
    return bool(session.get("staff"))


def own_channel() -> str:
    """This visitor's private channel: its name starts with SSE_PRIVATE_PREFIX."""
    if "visitor" not in session:
        session["visitor"] = secrets.token_hex(8)
    return f"private-{session['visitor']}"


def error(status: int, message: str) -> ResponseReturnValue:
    """A JSON error, in the same form as the stream view's own 400s."""
    return jsonify(error=message), status


@events.authorize
def own_channel_only(channels: tuple[str, ...]) -> bool:
    """Private channels follow the session: each visitor opens only their own.

    Asked at every connect and reconnect, so the page needs no token in its
    URL and stays open for as long as the session lasts.
    """
    visitor = session.get("visitor")
    return visitor is not None and all(name == f"private-{visitor}" for name in channels)


@events.before_request
def check_channels() -> ResponseReturnValue | None:
    """Refuse a stream that asks for a staff channel without a staff session."""
    if STAFF_CHANNELS.intersection(request.args.getlist("channel")) and not is_staff():
        return error(403, "The 'staff' channel is for staff only: sign in as staff first.")
    return None


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app; ``config`` overrides the settings (handy in tests)."""
    app = Flask(__name__)
    # memory:// lives inside one process: with several workers (the Procfile
    # runs four) set REDIS_URL so that every worker sees every event.
    app.config["SSE_REDIS_URL"] = os.environ.get("REDIS_URL", "memory://")
    # Set SECRET_KEY in production: it signs the session that says who is staff.
    app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "dev-only-not-secret")
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config.from_prefixed_env()  # e.g. FLASK_SSE_KEEPALIVE=5
    app.config.update(config or {})
    app.register_blueprint(events, url_prefix="/stream")

    @app.get("/")
    def index() -> str:
        staff = is_staff()
        return render_template(
            "index.html",
            staff=staff,
            channels=CHANNELS,
            # no token: own_channel_only() decides by the session, at every reconnect
            stream_channels=["news", own_channel(), *(["staff"] if staff else [])],
            client_url=events.client_url(),
            memory_broker=app.config["SSE_REDIS_URL"].startswith("memory://"),
        )

    @app.post("/publish")
    def publish() -> ResponseReturnValue:
        """Publish from the form, or from ``fetch`` with JSON (answered 204)."""
        fields = request.get_json(silent=True) if request.is_json else request.form
        if not isinstance(fields, Mapping):
            return error(400, "Send a form or a JSON object with 'channel' and 'text'.")
        channel = fields.get("channel")
        text = str(fields.get("text") or "").strip()
        if channel not in CHANNELS:
            return error(400, f"Unknown channel {channel!r}: use one of {', '.join(CHANNELS)}.")
        if channel in STAFF_CHANNELS and not is_staff():
            return error(403, "Only staff may publish to 'staff': sign in as staff first.")
        if not text or len(text) > MAX_TEXT:
            return error(400, f"The text must be 1 to {MAX_TEXT} characters long.")
        at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        target = own_channel() if channel == "me" else channel
        send_event(channel, {"text": text, "at": at}, channel=target)
        if request.is_json:
            return "", 204
        return redirect(url_for("index"), 303)

    @app.get("/stats")
    def stats() -> dict[str, int]:
        """Open streams on the public channel, across every worker."""
        return {"news": events.subscriber_count("news")}

    @app.post("/login")
    def login() -> ResponseReturnValue:
        """Demo only: anyone may press the button; a real app checks who it is."""
        session["staff"] = True
        return redirect(url_for("index"), 303)

    @app.post("/logout")
    def logout() -> ResponseReturnValue:
        session.pop("staff", None)
        return redirect(url_for("index"), 303)

    return app


app = create_app()

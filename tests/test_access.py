"""Private channels, limits and hostile requests, on the embedded broker."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask, session
from flask.testing import FlaskClient
from itsdangerous import URLSafeSerializer

from flask_sse import ServerSentEventsBlueprint, sse
from flask_sse.access import SALT

from .conftest import MakeApp

SECRET = "test secret"


@pytest.fixture
def private_app(app: Flask) -> Flask:
    """The shared ``app`` fixture with a key to sign tokens (read per request)."""
    app.config["SECRET_KEY"] = SECRET
    return app


def status_and_error(client: FlaskClient, url: str, **kwargs: object) -> tuple[int, str]:
    response = client.get(url, buffered=False, **kwargs)
    error = response.get_json()["error"] if response.is_json else ""
    response.close()
    return response.status_code, error


def token(channels: list[str], expires: float, secret: str = SECRET) -> str:
    return URLSafeSerializer(secret, salt=SALT).dumps({"c": channels, "e": int(expires)})


def test_a_token_opens_the_private_channels_it_names(private_app: Flask) -> None:
    with private_app.test_request_context():
        url = sse.stream_url("news", "private-ann")
        assert parse_qs(urlsplit(url).query)["channel"] == ["news", "private-ann"]
        assert sse.stream_url("news") == "/stream?channel=news"
    client = private_app.test_client()
    assert status_and_error(client, url) == (200, "")


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("channel=private-ann", "Channel 'private-ann' is private: the app allows it with an @sse.authorize"),
        (f"channel=private-ann&token={token(['private-ann'], time.time() - 1)}", "The token has expired"),
        (f"channel=private-ann&token={token(['private-bob'], time.time() + 60)}", "does not open channel 'private-ann'"),
        (f"channel=private-ann&token={token(['private-ann'], time.time() + 60, 'other key')}", "altered or signed with another key"),
        (f"channel=private-ann&token={token(['private-ann'], time.time() + 60)[:-2]}xx", "altered or signed with another key"),
        ("channel=private-ann&token=", "is private"),
        ("channel=private-ann&token=garbage", "not valid"),
    ],
)
def test_no_stream_without_a_valid_token(private_app: Flask, query: str, error: str) -> None:
    status, message = status_and_error(private_app.test_client(), f"/stream?{query}")
    assert status == 403
    assert error in message


def test_tokens_serve_every_sse_blueprint_of_the_app(private_app: Flask) -> None:
    events = ServerSentEventsBlueprint("events", __name__)
    private_app.register_blueprint(events, url_prefix="/events")
    with private_app.test_request_context():
        url = events.stream_url("private-x", expires_in=60)
        assert url.startswith("/events?channel=private-x&token=")
        shared = sse.token_for("private-x")
    client = private_app.test_client()
    assert status_and_error(client, url)[0] == 200
    assert status_and_error(client, f"/events?channel=private-x&token={shared}")[0] == 200


def session_app(private_app: Flask) -> tuple[ServerSentEventsBlueprint, list[tuple[str, ...]]]:
    """A blueprint whose private channels follow the session, and the calls its callback got."""
    events = ServerSentEventsBlueprint("events", __name__)
    asked: list[tuple[str, ...]] = []

    @events.authorize
    def own_channel_only(channels: tuple[str, ...]) -> bool:
        asked.append(channels)
        return "user" in session and all(name == f"private-{session['user']}" for name in channels)

    @private_app.post("/login/<user>")
    def login(user: str) -> str:
        session["user"] = user
        return ""

    @private_app.post("/logout")
    def logout() -> str:
        session.clear()
        return ""

    private_app.register_blueprint(events, url_prefix="/events")
    return events, asked


def test_the_authorize_callback_opens_private_channels_by_session(private_app: Flask) -> None:
    events, asked = session_app(private_app)
    client = private_app.test_client()
    status, error = status_and_error(client, "/events?channel=private-ann")
    assert status == 403
    assert "the app's authorize callback own_channel_only() answered False" in error
    client.post("/login/ann")
    for _ in range(3):  # asked again at every connect, as a reconnect is one
        assert status_and_error(client, "/events?channel=news&channel=private-ann") == (200, "")
    assert status_and_error(client, "/events?channel=private-bob")[0] == 403
    assert status_and_error(client, "/events?channel=news") == (200, "")  # public: not asked
    client.post("/logout")
    assert status_and_error(client, "/events?channel=private-ann")[0] == 403
    assert asked == [("private-ann",)] * 4 + [("private-bob",), ("private-ann",)]


def test_a_token_still_opens_what_the_session_does_not(private_app: Flask) -> None:
    events, _ = session_app(private_app)
    with private_app.test_request_context():
        assert events.stream_url("news", "private-ann") == "/events?channel=news&channel=private-ann"
        url = events.stream_url("private-ann", with_token=True, expires_in=60)
        assert "&token=" in url
        assert "token=" not in sse.stream_url("private-ann", with_token=False)
    client = private_app.test_client()  # a cross-origin page: no session cookie
    assert status_and_error(client, url) == (200, "")
    expired = f"/events?channel=private-ann&token={token(['private-ann'], time.time() - 1)}"
    assert "The token has expired" in status_and_error(client, expired)[1]


def test_one_authorize_callback_per_blueprint_before_it_is_registered(private_app: Flask) -> None:
    events, _ = session_app(private_app)
    with pytest.raises(AssertionError, match="can no longer be called"):
        events.authorize(lambda channels: True)
    fresh = ServerSentEventsBlueprint("fresh", __name__)
    fresh.authorize(lambda channels: True)
    with pytest.raises(RuntimeError, match="already has an authorize callback"):
        fresh.authorize(lambda channels: True)


def test_without_a_secret_key_tokens_cannot_be_made(app: Flask) -> None:
    with app.app_context(), pytest.raises(RuntimeError, match=r"need app.config\['SECRET_KEY'\]"):
        sse.token_for("private-a")
    status, error = status_and_error(app.test_client(), f"/stream?channel=private-a&token={token(['private-a'], time.time() + 60)}")
    assert (status, error) == (403, "Private channels are not set up on this server.")


def test_token_for_checks_its_arguments(private_app: Flask) -> None:
    with private_app.app_context():
        with pytest.raises(ValueError, match="must not be empty"):
            sse.token_for([""])
        with pytest.raises(ValueError, match="at least one channel"):
            sse.token_for([])
        with pytest.raises(ValueError, match="expires_in must be a positive"):
            sse.token_for("private-a", expires_in=0)


def test_the_connection_limit_answers_503(make_app: MakeApp) -> None:
    client = make_app(SSE_MAX_CONNECTIONS=2).test_client()
    open_streams = [client.get("/stream", buffered=False) for _ in range(2)]
    refused = client.get("/stream")
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "5"
    assert "limit of 2 streams (SSE_MAX_CONNECTIONS)" in refused.get_json()["error"]
    open_streams[0].close()
    assert status_and_error(client, "/stream")[0] == 200
    open_streams[1].close()


@pytest.mark.parametrize(
    ("url", "headers", "error"),
    [
        ("/stream?channel=" + "a" * 40_000, {}, "query string is longer than 32768 bytes"),
        ("/stream?token=a&token=b", {}, "Give 'token' once, not 2 times"),
        ("/stream?lastEventId=1-0&lastEventId=2-0", {}, "Give 'lastEventId' once"),
        ("/stream", {"Last-Event-ID": "9" * 100_000}, "longer than any id this stream sends"),
        ("/stream?channel=%FF%FE", {}, "not valid UTF-8"),
        ("/stream?channel=%ED%A0%80", {}, "not valid UTF-8"),
        ("/stream?channel=a%0D%0Aevent:x", {}, "control characters"),
        ("/stream?" + "&".join(["channel=x"] * 3000), {}, None),
    ],
)
def test_hostile_requests_get_a_clear_400(
    private_app: Flask, url: str, headers: dict[str, str], error: str | None
) -> None:
    status, message = status_and_error(private_app.test_client(), url, headers=headers)
    if error is None:  # 3,000 copies of one channel: one channel, a normal stream
        assert status == 200
        return
    assert status == 400
    assert error in message


@pytest.mark.parametrize(("key", "value"), [("SSE_PRIVATE_PREFIX", ""), ("SSE_MAX_CONNECTIONS", -1)])
def test_bad_limits_fail_at_registration(make_app: MakeApp, key: str, value: object) -> None:
    settings: dict[str, Any] = {key: value}
    with pytest.raises(ValueError, match=key):
        make_app(**settings)

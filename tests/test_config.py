"""Configuration: defaults, the Redis URL's sources, and clear errors at registration."""

from __future__ import annotations

import importlib.util
import logging
import sys
import unicodedata
from typing import Any

import pytest
from flask import Flask

from flask_sse import Publisher, ServerSentEventsBlueprint, sse

from .conftest import MakeApp


def registered(**config: Any) -> Flask:
    """An app with exactly ``config``: these tests check defaults and what registration refuses."""
    app = Flask(__name__)
    app.config.update(config)
    app.register_blueprint(sse, url_prefix="/stream")
    return app


def test_defaults_are_written_into_the_app_config() -> None:
    app = registered()
    assert app.config["SSE_KEEPALIVE"] == 15
    assert app.config["SSE_RETRY"] == 3000
    assert app.config["SSE_HISTORY"] == 1000
    assert app.config["SSE_HISTORY_TTL"] == 86400
    assert app.config["SSE_QUEUE_SIZE"] == 1000
    assert app.config["SSE_MAX_CHANNELS"] == 16
    assert app.config["SSE_DEFAULT_CHANNEL"] == "sse"
    assert app.config["SSE_REDIS_URL"] == "redis://localhost:6379/0"
    assert app.extensions["sse"].config.keepalive == 15.0


@pytest.mark.parametrize(
    ("config", "url"),
    [
        ({"SSE_REDIS_URL": "redis://a:1/2", "REDIS_URL": "redis://b"}, "redis://a:1/2"),
        ({"REDIS_URL": "redis://b:7/1"}, "redis://b:7/1"),
        ({"SSE_REDIS_HOST": "h", "SSE_REDIS_PORT": 7000, "SSE_REDIS_DB": 3}, "redis://h:7000/3"),
        ({"SSE_REDIS_HOST": "h"}, "redis://h:6379/0"),
        ({"SSE_REDIS_URL": "memory://"}, "memory://"),
    ],
)
def test_redis_url_sources(config: dict[str, Any], url: str) -> None:
    assert registered(**config).extensions["sse"].config.redis_url == url


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("SSE_KEEPALIVE", 0, "SSE_KEEPALIVE must be a number of seconds of at least 0.1, got 0"),
        ("SSE_KEEPALIVE", "15", "SSE_KEEPALIVE must be a number"),
        ("SSE_RETRY", -1, "SSE_RETRY must be an int of at least 0, got -1"),
        ("SSE_RETRY", 1.5, "SSE_RETRY must be an int"),
        ("SSE_HISTORY", -1, "SSE_HISTORY must be an int of at least 0"),
        ("SSE_HISTORY_TTL", 0, "SSE_HISTORY_TTL must be an int of at least 1"),
        ("SSE_QUEUE_SIZE", 0, "SSE_QUEUE_SIZE must be an int of at least 1"),
        ("SSE_MAX_CHANNELS", True, "SSE_MAX_CHANNELS must be an int"),
        ("SSE_DEFAULT_CHANNEL", "", "SSE_DEFAULT_CHANNEL is not usable: a channel name must not be empty"),
        ("SSE_DEFAULT_CHANNEL", "a\nb", "must not contain control characters"),
        ("SSE_REDIS_URL", "http://x", "SSE_REDIS_URL must start with one of redis://"),
    ],
)
def test_bad_values_fail_at_registration(key: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as raised:
        registered(**{key: value})
    assert "app.config[" in str(raised.value) or "not usable" in str(raised.value)


def test_settings_changed_between_two_registrations_are_refused(make_app: MakeApp) -> None:
    app = make_app(SSE_KEEPALIVE=5)
    app.config["SSE_KEEPALIVE"] = 6
    with pytest.raises(RuntimeError, match="Set app.config before the first"):
        app.register_blueprint(ServerSentEventsBlueprint("other", __name__), url_prefix="/other")


def test_two_blueprints_share_the_app_state(make_app: MakeApp) -> None:
    app = make_app("memory://")
    state = app.extensions["sse"]
    app.register_blueprint(ServerSentEventsBlueprint("other", __name__), url_prefix="/other")
    assert app.extensions["sse"] is state
    assert {rule.rule for rule in app.url_map.iter_rules()} >= {"/stream", "/other"}


def test_publisher_refuses_a_bad_url_or_channel() -> None:
    with pytest.raises(ValueError, match=r"The redis_url of Publisher\(\) must start with") as bad:
        Publisher("http://x")
    assert "app.config" not in str(bad.value)
    assert "Publisher('redis://localhost:6379/0')" in str(bad.value)
    with pytest.raises(ValueError, match="must not be empty"):
        Publisher("memory://", default_channel="")


@pytest.mark.parametrize(
    ("channel", "on_cluster"),
    [("news", None), ("user{42}", None), ("a{b}c}", None), ("a}b", "needs a hash tag"), ("{}x}", "needs a hash tag")],
)
def test_a_cluster_needs_a_hash_tag_before_any_closing_brace(channel: str, on_cluster: str | None) -> None:
    from flask_sse.config import channel_problem

    assert channel_problem(channel) is None
    problem = channel_problem(channel, cluster=True)
    assert (problem is None) if on_cluster is None else (on_cluster in str(problem))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"SSE_REDIS_PORT": "abc"}, "SSE_REDIS_PORT must be a non-negative int, got 'abc'"),
        ({"SSE_REDIS_HOST": "h", "SSE_REDIS_DB": -1}, "SSE_REDIS_DB must be a non-negative int"),
        ({"SSE_REDIS_URL": "redis://localhost:abc/0"}, "is not a usable URL"),
    ],
)
def test_redis_settings_that_would_fail_at_the_first_stream_fail_at_registration(
    config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        registered(**config)


def test_memory_without_fakeredis_fails_at_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def without_fakeredis(name: str, package: str | None = None) -> Any:
        return None if name == "fakeredis" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_fakeredis)
    with pytest.raises(ValueError, match="needs fakeredis, the embedded broker"):
        registered(SSE_REDIS_URL="memory://")


def test_a_misspelt_key_is_reported_with_a_guess(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="flask_sse"):
        registered(SSE_REDIS_URL="memory://", SSE_KEEPALIVES=5, SSE_REDIS_PORT=6379)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1
    assert messages[0].startswith("SSE_KEEPALIVES is not a flask-sse setting and is ignored.")
    assert "Did you mean SSE_KEEPALIVE?" in messages[0]


def test_a_channel_name_is_refused_for_exactly_the_control_characters_and_surrogates() -> None:
    """Unicode's categories Cc and Cs, over every code point: the check need not look them up."""
    from flask_sse.config import channel_problem

    refused = {
        code for code in range(sys.maxunicode + 1) if channel_problem(f"a{chr(code)}b") is not None
    }
    wanted = {
        code for code in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code)) in ("Cc", "Cs")
    }
    assert refused == wanted

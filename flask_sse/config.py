"""The ``SSE_*`` configuration keys: defaults, and validation at registration.

Every key is read once, when the blueprint is registered, so a typo fails at
start-up with a message that says what to set, not at the first request.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flask.sansio.app import App
from redis.connection import parse_url

from .naming import NAMESPACE, hash_tag

#: Defaults, written into ``app.config`` with ``setdefault``.
DEFAULTS: dict[str, Any] = {
    #: Seconds of silence after which a ``:`` comment keeps the stream (and
    #: any proxy on the way) alive; a gone client is noticed this often too.
    "SSE_KEEPALIVE": 15,
    #: Milliseconds the browser waits before it reconnects (``retry:``).
    "SSE_RETRY": 3000,
    #: Events kept per channel so a reconnecting client can resume (0: none).
    "SSE_HISTORY": 1000,
    #: Seconds an idle channel's history lives.
    "SSE_HISTORY_TTL": 86400,
    #: Events buffered for one slow client before it is disconnected.
    "SSE_QUEUE_SIZE": 1000,
    #: Channels one connection may ask for.
    "SSE_MAX_CHANNELS": 16,
    #: Channel used when a request or a publish names none.
    "SSE_DEFAULT_CHANNEL": "sse",
    #: Seconds after which a stream ends cleanly and the browser reconnects
    #: and resumes (behind load balancers, for rolling deploys); 0: never.
    "SSE_MAX_AGE": 0,
    #: Channels whose names start with this are private: streamed only when
    #: the blueprint's ``authorize`` callback allows them or a token from
    #: ``sse.token_for()`` names them.
    "SSE_PRIVATE_PREFIX": "private-",
    #: Open streams one process serves before refusing more (0: no limit).
    "SSE_MAX_CONNECTIONS": 0,
    #: Under ``gunicorn -k gevent``, write events straight to an idle
    #: stream's socket when nothing transforms the body (see ``transport.py``).
    "SSE_DIRECT_WRITE": True,
    #: Send each event in its own packet at once (``TCP_NODELAY``, as gunicorn
    #: sets it). ``False`` lets the kernel merge an event with the ones after it
    #: while the client has not acknowledged it (Nagle's algorithm): fewer
    #: packets and less CPU under heavy fan-out, later events in a burst.
    "SSE_TCP_NODELAY": True,
    #: Sets this app's events, history and counts apart from other apps on the
    #: same Redis server (apps on different DB numbers are set apart anyway).
    "SSE_NAMESPACE": "",
    #: End every stream cleanly on SIGTERM (gunicorn's graceful stop), so the
    #: worker exits at once and browsers resume elsewhere.
    "SSE_END_STREAMS_ON_SIGTERM": True,
    #: Seconds over which the streams of a worker that got SIGTERM are ended
    #: (at most half of gunicorn's graceful timeout), so that their browsers
    #: do not all reconnect at the same moment; 0: all at once.
    "SSE_DRAIN_SECONDS": 10,
    #: New streams one process starts per second before it asks the rest to
    #: come back a little later (resumes first); 0: no limit.
    "SSE_ADMISSION_RATE": 0,
    #: Tries of a publish that fails with ``redis.ConnectionError`` or
    #: ``redis.TimeoutError`` before the error is raised (safe: a publish is
    #: stored and delivered once however often it is tried).
    "SSE_PUBLISH_ATTEMPTS": 3,
    #: Count streams and events as Prometheus metrics (``metrics.py``; needs the
    #: ``metrics`` extra). On for the whole process once an app turns it on.
    "SSE_METRICS": False,
}

#: Keys that are not in ``DEFAULTS`` but mean something (the original library's).
OTHER_KEYS = ("SSE_REDIS_URL", "SSE_REDIS_HOST", "SSE_REDIS_PORT", "SSE_REDIS_DB")

logger = logging.getLogger("flask_sse")

#: Longest channel name a client may ask for.
MAX_CHANNEL_LENGTH = 200
#: URL schemes the broker understands (``memory://`` is the embedded one).
REDIS_SCHEMES = (
    "redis://", "rediss://", "unix://", "memory://", "redis+cluster://", "rediss+cluster://"
)


@dataclass(frozen=True)
class SSEConfig:
    """The validated settings of one app."""

    redis_url: str
    keepalive: float
    retry: int
    history: int
    history_ttl: int
    queue_size: int
    max_channels: int
    default_channel: str
    max_age: float
    private_prefix: str
    max_connections: int
    direct_write: bool
    tcp_nodelay: bool
    namespace: str
    end_streams_on_sigterm: bool
    drain_seconds: float
    admission_rate: float
    publish_attempts: int
    metrics: bool


def load_config(app: App) -> SSEConfig:
    """Fill in the defaults of ``app.config`` and validate every ``SSE_*`` key."""
    _report_unknown_keys(app.config)
    for key, value in DEFAULTS.items():
        app.config.setdefault(key, value)
    config = app.config
    redis_url = _redis_url(config)
    default_channel = config["SSE_DEFAULT_CHANNEL"]
    problem = channel_problem(default_channel)
    if problem:
        raise ValueError(f"SSE_DEFAULT_CHANNEL is not usable: {problem}.")
    return SSEConfig(
        redis_url=redis_url,
        keepalive=_number(config, "SSE_KEEPALIVE", minimum=0.1),
        retry=_integer(config, "SSE_RETRY", minimum=0),
        history=_integer(config, "SSE_HISTORY", minimum=0),
        history_ttl=_integer(config, "SSE_HISTORY_TTL", minimum=1),
        queue_size=_integer(config, "SSE_QUEUE_SIZE", minimum=1),
        max_channels=_integer(config, "SSE_MAX_CHANNELS", minimum=1),
        default_channel=default_channel,
        max_age=_number(config, "SSE_MAX_AGE", minimum=0),
        private_prefix=_prefix(config, "SSE_PRIVATE_PREFIX"),
        max_connections=_integer(config, "SSE_MAX_CONNECTIONS", minimum=0),
        direct_write=_boolean(config, "SSE_DIRECT_WRITE"),
        tcp_nodelay=_boolean(config, "SSE_TCP_NODELAY"),
        namespace=_namespace(config),
        end_streams_on_sigterm=_boolean(config, "SSE_END_STREAMS_ON_SIGTERM"),
        drain_seconds=_number(config, "SSE_DRAIN_SECONDS", minimum=0),
        admission_rate=_number(config, "SSE_ADMISSION_RATE", minimum=0),
        publish_attempts=_integer(config, "SSE_PUBLISH_ATTEMPTS", minimum=1),
        metrics=_boolean(config, "SSE_METRICS"),
    )


#: Unicode's control characters (category Cc, a set Unicode never changes) and
#: surrogates (Cs): one regular expression, not a category lookup per character,
#: since every publish checks its channel names.
_CONTROL_OR_SURROGATE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def channel_problem(channel: object, *, cluster: bool = False) -> str | None:
    """What is wrong with a channel name, or ``None`` if it is usable.

    Shared by the stream view (which answers 400) and publishing (which
    raises), so nothing can be published to a channel nobody may open.
    ``cluster``: the name must also let its history live in its own Redis
    Cluster slot (see ``naming.Names.history_key``).
    """
    if not isinstance(channel, str):
        return f"a channel name must be a str, got {channel!r}"
    if not channel:
        return "a channel name must not be empty"
    if len(channel) > MAX_CHANNEL_LENGTH:
        return (
            f"a channel name must be at most {MAX_CHANNEL_LENGTH} characters, "
            f"got {len(channel)}"
        )
    if _CONTROL_OR_SURROGATE.search(channel):
        return f"a channel name must not contain control characters, got {channel!r}"
    if cluster and "}" in channel and hash_tag(channel) == channel:
        return (
            "on Redis Cluster a channel name with '}' needs a hash tag ('{...}') before it, "
            f"got {channel!r}"
        )
    return None


def channels_problem(channels: Iterable[object], *, cluster: bool = False) -> str | None:
    """What is wrong with the first unusable name of ``channels`` (see :func:`channel_problem`)."""
    for channel in channels:
        problem = channel_problem(channel, cluster=cluster)
        if problem:
            return problem
    return None


def _report_unknown_keys(config: Any) -> None:
    """A misspelt ``SSE_*`` key would be ignored silently: say so, with a guess."""
    known = [*DEFAULTS, *OTHER_KEYS]
    for key in config:
        if key.startswith("SSE_") and key not in known:
            guess = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {guess[0]}?" if guess else ""
            logger.warning(
                "%s is not a flask-sse setting and is ignored.%s The settings are: %s.",
                key, hint, ", ".join(known),
            )


def _redis_url(config: Any) -> str:
    url = config.get("SSE_REDIS_URL") or config.get("REDIS_URL")
    legacy_keys = ("SSE_REDIS_HOST", "SSE_REDIS_PORT", "SSE_REDIS_DB")
    if not url and any(key in config for key in legacy_keys):
        host = config.get("SSE_REDIS_HOST", "localhost")
        port = config.get("SSE_REDIS_PORT", 6379)
        db = config.get("SSE_REDIS_DB", 0)
        for key, value in (("SSE_REDIS_PORT", port), ("SSE_REDIS_DB", db)):
            if isinstance(value, bool) or not str(value).isdigit():
                raise ValueError(
                    f"{key} must be a non-negative int, got {value!r}: for example "
                    f"app.config[{key!r}] = {6379 if key == 'SSE_REDIS_PORT' else 0}, "
                    "or set SSE_REDIS_URL = 'redis://host:6379/0' instead."
                )
        url = f"redis://{host}:{port}/{db}"
    url = url or "redis://localhost:6379/0"
    config.setdefault("SSE_REDIS_URL", url)
    check_redis_url(url)
    return str(url)


def check_redis_url(url: object, setting: str = "SSE_REDIS_URL") -> None:
    """Refuse a URL the broker cannot use, saying what would work.

    ``setting`` names where the URL came from, for the message: the app's
    ``SSE_REDIS_URL``, or ``Publisher(redis_url)``.
    """
    if setting == "SSE_REDIS_URL":
        name, where, close = setting, "app.config['SSE_REDIS_URL'] = ", ""
    else:
        name, where, close = f"The redis_url of {setting}()", f"{setting}(", ")"
    example = (
        f"for example {where}'redis://localhost:6379/0'{close}, "
        "'redis+cluster://node:7000' for Redis Cluster, or 'memory://' for the embedded broker."
    )
    if not isinstance(url, str) or not url.startswith(REDIS_SCHEMES):
        raise ValueError(
            f"{name} must start with one of {', '.join(REDIS_SCHEMES)}, got {url!r}: {example}"
        )
    if url.startswith("memory://"):
        if importlib.util.find_spec("fakeredis") is None:
            raise ValueError(
                f"{name} {url!r} needs fakeredis, the embedded broker: install "
                "the 'memory' extra, or use a Redis server's URL."
            )
        return
    try:
        parse_url(url.replace("+cluster", "", 1))  # type: ignore[no-untyped-call]
    except ValueError as error:
        raise ValueError(f"{name} {url!r} is not a usable URL ({error}): {example}") from None


def _prefix(config: Any, key: str) -> str:
    value = config[key]
    if not isinstance(value, str) or not value or channel_problem(value):
        raise ValueError(
            f"{key} must be a non-empty str usable in channel names, got {value!r}: "
            f"for example app.config[{key!r}] = {DEFAULTS[key]!r}."
        )
    return value


def _number(config: Any, key: str, *, minimum: float) -> float:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= minimum:
        raise ValueError(
            f"{key} must be a number of seconds of at least {minimum}, got {value!r}: "
            f"for example app.config[{key!r}] = {DEFAULTS[key]!r}."
        )
    return float(value)


def _namespace(config: Any) -> str:
    value = config["SSE_NAMESPACE"]
    if not isinstance(value, str) or (value and not NAMESPACE.fullmatch(value)):
        raise ValueError(
            "SSE_NAMESPACE must be '' or up to 64 letters, digits, '_', '.' or '-', "
            f"got {value!r}: for example app.config['SSE_NAMESPACE'] = 'shop'."
        )
    return value


def _boolean(config: Any, key: str) -> bool:
    value = config[key]
    if not isinstance(value, bool):
        raise ValueError(
            f"{key} must be True or False, got {value!r}: "
            f"for example app.config[{key!r}] = {DEFAULTS[key]!r}."
        )
    return value


def _integer(config: Any, key: str, *, minimum: int) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"{key} must be an int of at least {minimum}, got {value!r}: "
            f"for example app.config[{key!r}] = {DEFAULTS[key]!r}."
        )
    return value

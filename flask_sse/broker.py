"""Where the Redis client and the hub for a URL come from.

One client (so one connection pool) and one hub per URL per process, reused
by every request, publish and stream; after a fork (gunicorn workers, with or
without ``--preload``) the child starts afresh and never touches its parent's
sockets. ``memory://`` is the embedded broker: an in-process fakeredis
server, for development and the example app, shared by the whole process.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from redis.cluster import RedisCluster

from .history import History
from .hub import READ_TIMEOUT, Hub
from .presence import Presence
from .routing import ClusterRouter, Router

_clients: dict[str, redis.Redis] = {}
_histories: dict[str, History] = {}
_hubs: dict[str, Hub] = {}


def redis_client(url: str) -> redis.Redis:
    """The process-wide client for ``url``."""
    client = _clients.get(url)
    if client is None:
        client = _clients.setdefault(url, _new_client(url))
    return client


def history_for(url: str) -> History:
    """The process-wide history of the channels behind ``url``."""
    history = _histories.get(url)
    if history is None:
        history = _histories.setdefault(url, History(redis_client(url), sharded=is_cluster(url)))
    return history


def hub_for(url: str) -> Hub:
    """The process-wide hub for ``url``; it starts on its first subscriber."""
    hub = _hubs.get(url)
    if hub is None:
        client: Any = redis_client(url)
        router = (
            ClusterRouter(client, READ_TIMEOUT)
            if is_cluster(url)
            else Router(client.connection_pool, READ_TIMEOUT)
        )
        hub = _hubs.setdefault(url, Hub(router, history_for(url), Presence(client)))
    return hub


def is_cluster(url: str) -> bool:
    """``redis+cluster://`` (or ``rediss+cluster://``): Redis Cluster, sharded pub/sub."""
    return url.startswith(("redis+cluster://", "rediss+cluster://"))


def _new_client(url: str) -> redis.Redis:
    if url.startswith("memory://"):
        return _memory_client(url)
    if is_cluster(url):
        cluster: Any = RedisCluster.from_url(url.replace("+cluster", "", 1))
        return cluster  # type: ignore[no-any-return]
    return redis.Redis.from_url(url)


def _memory_client(url: str) -> redis.Redis:
    try:
        import fakeredis
    except ImportError:
        raise RuntimeError(
            f"SSE_REDIS_URL {url!r} needs fakeredis, the embedded broker: "
            "pip install 'flask-sse[memory]', or point SSE_REDIS_URL at a Redis server."
        ) from None
    client: Any = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return client  # type: ignore[no-any-return]


def _forget_parent_state() -> None:
    """In a forked child: drop the parent's clients and hubs without closing them."""
    _clients.clear()
    _histories.clear()
    _hubs.clear()


os.register_at_fork(after_in_child=_forget_parent_state)

"""The per-process registry: one Redis client per URL, one history and hub per URL and namespace.

Reused by every request, publish and stream of the process, and closed by
:func:`close_all` (tests, an app factory's teardown). After a fork
(gunicorn workers, with or without ``--preload``) the child starts afresh
and never touches its parent's sockets or threads. ``memory://`` is the
embedded broker: an in-process fakeredis server, for development and the
example app, one per URL.

It also holds the one process-wide hook: ending every stream on SIGTERM
(:func:`end_streams_on_sigterm`).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.connection import parse_url

from .commands import CONNECTION_WAIT
from .history import History
from .hub import Hub
from .links import READ_TIMEOUT
from .naming import Names
from .presence import Presence
from .routing import ClusterRouter, Router
from .servers import sibling_workers

logger = logging.getLogger("flask_sse")

#: Seconds a command (a publish, a history read) waits for Redis to answer.
REDIS_TIMEOUT = 5.0
#: Connections the commands of one process share (its pub/sub links aside).
COMMAND_CONNECTIONS = 1

# guards the three dicts and _sigterm_installed: see _registry_lock()
_lock: threading.Lock | None = None
_making_lock = threading.Lock()
_clients: dict[str, redis.Redis] = {}
_histories: dict[tuple[str, str], History] = {}
_hubs: dict[tuple[str, str], Hub] = {}
_sigterm_installed = False


def redis_client(url: str) -> redis.Redis:
    """The process-wide client for ``url``."""
    client = _clients.get(url)  # made already: no lock needed to read it
    if client is not None:
        return client
    with _registry_lock():
        client = _clients.get(url)
        if client is None:
            client = _clients[url] = _new_client(url)
        return client


def _names_for(url: str, namespace: str = "") -> Names:
    """How channels of apps on ``url`` with ``namespace`` are named on Redis."""
    db = 0
    if url.startswith(("redis://", "rediss://", "unix://")):
        db = int(parse_url(url).get("db", 0))  # type: ignore[no-untyped-call]
    return Names(namespace, db, sharded=is_cluster(url))


def history_for(url: str, namespace: str = "") -> History:
    """The process-wide history of the channels behind ``url`` (and ``namespace``)."""
    history = _histories.get((url, namespace))  # made already: no lock needed to read it
    if history is not None:
        return history
    client = redis_client(url)
    with _registry_lock():
        history = _histories.get((url, namespace))
        if history is None:
            names = _names_for(url, namespace)
            history = _histories[(url, namespace)] = History(client, names)
        return history


def hub_for(url: str, namespace: str = "") -> Hub:
    """The process-wide hub for ``url`` and ``namespace``; its threads start with a stream."""
    history = history_for(url, namespace)
    client: Any = redis_client(url)
    with _registry_lock():
        hub = _hubs.get((url, namespace))
        if hub is None:
            router = (
                ClusterRouter(client, READ_TIMEOUT)
                if is_cluster(url)
                else Router(client.connection_pool, READ_TIMEOUT)
            )
            presence = Presence(client, history.names)
            hub = _hubs[(url, namespace)] = Hub(router, history, presence, history.names)
        return hub


def close_all() -> None:
    """Close every hub (ending its streams, stopping its threads), every history's
    publishing connection and every client."""
    with _registry_lock():
        hubs = list(_hubs.values())
        histories = list(_histories.values())
        clients = list(_clients.values())
        _hubs.clear()
        _histories.clear()
        _clients.clear()
    for hub in hubs:
        hub.close()
    for history in histories:
        history.close()
    for client in clients:
        client.close()


def end_streams_on_sigterm(drain_seconds: float = 0.0) -> None:
    """On SIGTERM, end every stream of the process, then let the server's handler run.

    ``gunicorn`` stops a worker gracefully with SIGTERM (also the old workers
    of a ``HUP``), then waits up to its graceful timeout for requests to
    finish: open streams never would. Ending them cleanly (a complete
    response, no half event) lets the worker exit in time, and browsers
    reconnect elsewhere and resume. The ends are spread over
    ``drain_seconds`` (``SSE_DRAIN_SECONDS``), but over at most half of
    gunicorn's graceful timeout, so that the worker still exits cleanly.

    Called when a process opens its first stream (after the server has set
    up its own handlers), unless ``SSE_END_STREAMS_ON_SIGTERM`` is False.
    Only where a Python handler is installed (the server's own), and only
    from the main thread; once per process (the first app's drain wins).
    """
    global _sigterm_installed
    with _registry_lock():
        if _sigterm_installed:
            return
        _sigterm_installed = True
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return
    window = drain_window(drain_seconds, previous)

    def end_streams(signum: int, frame: Any) -> None:
        for hub in list(_hubs.values()):  # no lock: this may interrupt a holder
            hub.shutdown(window)
        previous(signum, frame)

    try:
        signal.signal(signal.SIGTERM, end_streams)
    except ValueError:  # not the main thread (the threaded dev server): leave signals alone
        pass


def drain_window(drain_seconds: float, handler: Any) -> float:
    """``drain_seconds``, but at most half the graceful timeout of the gunicorn worker
    whose SIGTERM ``handler`` this is (its bound ``handle_exit``), if it is one."""
    worker_config = getattr(getattr(handler, "__self__", None), "cfg", None)
    graceful = getattr(worker_config, "graceful_timeout", None)
    if isinstance(graceful, (int, float)) and not isinstance(graceful, bool):
        return max(0.0, min(drain_seconds, graceful / 2))
    return drain_seconds


def is_cluster(url: str) -> bool:
    """``redis+cluster://`` (or ``rediss+cluster://``): Redis Cluster, sharded pub/sub."""
    return url.startswith(("redis+cluster://", "rediss+cluster://"))


def _new_client(url: str) -> redis.Redis:
    """A client for every command of the process (history reads, counts, publishes).

    Its commands share ``COMMAND_CONNECTIONS`` connections: a command waits
    its turn for one (up to ``CONNECTION_WAIT`` seconds) rather than opening
    more, so a worker holds the same connections after a thousand browsers
    resumed at once as before. The pub/sub links have their own, and so do
    publishes where they can (one, made with this pool's settings:
    ``commands.py``).

    Each command gives up after ``REDIS_TIMEOUT``: redis-py alone waits
    forever, and a Redis that hangs (stopped, a stalled network) would hang
    every view that publishes. The URL's ``?socket_timeout=``,
    ``?socket_connect_timeout=`` and ``?max_connections=`` take precedence.
    """
    if url.startswith("memory://"):
        return _memory_client(url)
    timeouts = {"socket_timeout": REDIS_TIMEOUT, "socket_connect_timeout": REDIS_TIMEOUT}
    if is_cluster(url):
        cluster: Any = RedisCluster.from_url(url.replace("+cluster", "", 1), **timeouts)
        return cluster  # type: ignore[no-any-return]
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=COMMAND_CONNECTIONS, timeout=CONNECTION_WAIT, **timeouts
    )
    return redis.Redis.from_pool(pool)


def _memory_client(url: str) -> redis.Redis:
    try:
        import fakeredis
    except ImportError:
        raise RuntimeError(
            f"SSE_REDIS_URL {url!r} needs fakeredis, the embedded broker: "
            "pip install 'flask-sse-hub[memory]', or point SSE_REDIS_URL at a Redis server."
        ) from None
    others = sibling_workers()
    if others:
        logger.error(
            "SSE_REDIS_URL is %r, the embedded broker of ONE process, but this server runs "
            "%d more worker processes: each has a broker of its own, so an event published "
            "in one worker reaches only the streams of that worker. Set SSE_REDIS_URL (or "
            "REDIS_URL) to a Redis server, or run a single worker (-w 1).",
            url, others,
        )
    client: Any = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return client  # type: ignore[no-any-return]


def _forget_parent_state() -> None:
    """In a forked child: drop the parent's clients and hubs without closing them."""
    global _lock, _making_lock, _sigterm_installed
    _lock, _making_lock = None, threading.Lock()
    _clients.clear()
    _histories.clear()
    _hubs.clear()
    _sigterm_installed = False


def _registry_lock() -> threading.Lock:
    """The registry's lock, made at its first use in this process.

    Not at import: gunicorn's master may import this module (``--preload``,
    ``-k flask_sse.worker.GeventWorker``) before the worker lets gevent
    patch ``threading``, and a thread lock made then blocks the whole worker
    while another greenlet holds it. ``_making_lock`` is a thread lock too,
    but held for no switch to another greenlet.
    """
    global _lock
    lock = _lock
    if lock is None:
        with _making_lock:
            if _lock is None:
                _lock = threading.Lock()
            lock = _lock
    return lock


os.register_at_fork(after_in_child=_forget_parent_state)

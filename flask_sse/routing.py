"""Which Redis server carries a channel's pub/sub, for the hub.

One Redis: every channel on the same server, classic ``SUBSCRIBE``. Redis
Cluster: sharded pub/sub (Redis 7+), so a channel lives on the master that
owns its slot, ``SSUBSCRIBE`` there, and only that shard copies its
messages. redis-py's cluster client knows the slot map; its pub/sub is not
used because the hub owns its connections (one per shard it needs, raw, so
it sees every disconnect and can replay from history).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.connection import ConnectionPool
from redis.retry import Retry

logger = logging.getLogger("flask_sse")

#: After a shard drops a channel: how long to wait for the topology to name
#: its new owner, and how often to ask.
OWNER_WAIT = 10.0
OWNER_POLL = 0.1


class Router:
    """One Redis server for every channel."""

    #: whether channels are shard channels (SSUBSCRIBE, SPUBLISH)
    sharded = False
    subscribe_command = "SUBSCRIBE"
    unsubscribe_command = "UNSUBSCRIBE"

    def __init__(self, pool: ConnectionPool, read_timeout: float) -> None:
        self._pool = pool
        self._read_timeout = read_timeout

    def node_for(self, channel: str) -> str:
        return "server"

    def connect(self, node: str) -> Any:
        """A new, connected pub/sub connection to ``node`` (raises if unreachable)."""
        return _connected(self._pool, self._read_timeout)

    def refresh(self) -> None:
        """Learn the topology again after a failure (nothing to learn here)."""

    def drop_idle(self, node: str) -> None:
        """Close the idle command connections to ``node``: the next commands open new ones."""
        self._pool.disconnect(inuse_connections=False)


class ClusterRouter(Router):
    """Redis Cluster: each channel on the master that owns its slot.

    ``client`` is a ``redis.cluster.RedisCluster`` (untyped in redis-py).
    """

    sharded = True
    subscribe_command = "SSUBSCRIBE"
    unsubscribe_command = "SUNSUBSCRIBE"

    def __init__(self, client: Any, read_timeout: float) -> None:
        self._client = client
        self._read_timeout = read_timeout

    def node_for(self, channel: str) -> str:
        node = self._client.get_node_from_key(channel)
        if node is None:
            raise redis.ConnectionError(f"no Redis Cluster node owns the slot of {channel!r}")
        return str(node.name)

    def connect(self, node: str) -> Any:
        found = self._client.get_node(node_name=node)
        if found is None or found.redis_connection is None:
            raise redis.ConnectionError(f"{node} is no longer a node of the cluster")
        return _connected(found.redis_connection.connection_pool, self._read_timeout)

    def refresh(self) -> None:
        self._client.nodes_manager.initialize()

    def drop_idle(self, node: str) -> None:
        found = self._client.get_node(node_name=node)
        if found is not None and found.redis_connection is not None:
            found.redis_connection.connection_pool.disconnect(inuse_connections=False)


def owners(router: Router, names: list[str]) -> dict[str, str]:
    """Learn the topology again; the owner of each of ``names`` it knows."""
    router.refresh()
    found = {}
    for name in names:
        try:
            found[name] = router.node_for(name)
        except redis.RedisError:
            continue  # its slot has no master yet: asked again later
    return found


class OwnerSearch:
    """Finds the new owner of channels a shard dropped, in a thread of its own.

    A shard knows it no longer owns a slot before every node does: a
    topology read from a slower node may still name it, and a demoted master
    accepts ``SSUBSCRIBE`` but delivers nothing. So the search asks until
    another owner is named (bounded by ``OWNER_WAIT``: past it, the channel
    goes where the cluster says), then calls ``found(channel, node)``. It
    runs beside the links, so a shard's reader never waits for it.
    """

    def __init__(self, router: Router, found: Callable[[str, str], None]) -> None:
        self._router = router
        self._found = found
        self._lock = threading.Lock()  # guards _wanted and _thread
        self._wanted: dict[str, tuple[str, float]] = {}  # channel -> (old node, deadline)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def search(self, channel: str, old_node: str) -> None:
        """Find where ``channel`` went from ``old_node``; returns at once."""
        with self._lock:
            if self._stop.is_set():
                return
            self._wanted.setdefault(channel, (old_node, time.monotonic() + OWNER_WAIT))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="flask-sse-owner-search", daemon=True
                )
                self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(OWNER_POLL):
            with self._lock:
                wanted = dict(self._wanted)
            try:
                found = owners(self._router, list(wanted))
            except redis.RedisError as error:
                logger.warning("Cannot read the cluster's topology yet (%s)", error)
                found = {}
            now = time.monotonic()
            settled = {}
            for channel, (old_node, deadline) in wanted.items():
                node = found.get(channel, old_node)
                if node != old_node or now >= deadline:
                    settled[channel] = node
            with self._lock:
                for channel in settled:
                    del self._wanted[channel]
            for channel, node in settled.items():
                self._found(channel, node)
            with self._lock:
                if not self._wanted:
                    self._thread = None
                    return


def _connected(pool: ConnectionPool, read_timeout: float) -> Any:
    """A connection like the pool's own, with a read deadline and no silent retries."""
    no_retry = Retry(NoBackoff(), 0)
    kwargs = {**pool.connection_kwargs, "socket_timeout": read_timeout, "retry": no_retry}
    connection = pool.connection_class(**kwargs)
    connection.connect()
    return connection

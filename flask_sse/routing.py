"""Which Redis server carries a channel's pub/sub, for the hub.

One Redis: every channel on the same server, classic ``SUBSCRIBE``. Redis
Cluster: sharded pub/sub (Redis 7+), so a channel lives on the master that
owns its slot, ``SSUBSCRIBE`` there, and only that shard copies its
messages. redis-py's cluster client knows the slot map; its pub/sub is not
used because the hub owns its connections (one per shard it needs, raw, so
it sees every disconnect and can replay from history).
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.connection import ConnectionPool
from redis.retry import Retry


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


def _connected(pool: ConnectionPool, read_timeout: float) -> Any:
    """A connection like the pool's own, with a read deadline and no silent retries."""
    no_retry = Retry(NoBackoff(), 0)
    kwargs = {**pool.connection_kwargs, "socket_timeout": read_timeout, "retry": no_retry}
    connection = pool.connection_class(**kwargs)
    connection.connect()
    return connection

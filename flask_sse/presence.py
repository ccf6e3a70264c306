"""Open streams per channel across every worker and machine, kept in Redis.

Each hub writes its own counts to a hash of its own (``sse:presence:<id>``,
channel -> open streams) with an expiry, and lists itself in the sorted set
``sse:presence`` scored by the time of its last report. A reader sums the
hashes of the hubs that reported lately, so a killed worker's counts vanish
within ``TTL`` seconds. Hubs report about once a second while their counts
change and every ``REFRESH`` seconds otherwise: a handful of commands per
worker per second, whatever the number of streams.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis

#: Seconds after its last report that a hub's counts stop counting.
TTL = 15
#: Seconds between reports when nothing changed (keeps the counts alive).
REFRESH = 5.0
#: Seconds between reports while counts change.
SOON = 1.0
_REGISTRY = "sse:presence"


class Presence:
    """One hub's report of its counts."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._key = f"{_REGISTRY}:{uuid.uuid4().hex}"

    def report(self, counts: dict[str, int]) -> None:
        now = time.time()
        with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(self._key)
            if counts:
                pipe.hset(self._key, mapping=counts)  # type: ignore[arg-type]
                pipe.expire(self._key, TTL)
            pipe.execute()
        self._client.zadd(_REGISTRY, {self._key: now})
        self._client.zremrangebyscore(_REGISTRY, 0, now - TTL)


def totals(client: redis.Redis) -> dict[str, int]:
    """Open streams per channel, summed over every hub that reported lately."""
    keys: Any = client.zrangebyscore(_REGISTRY, time.time() - TTL, "+inf")
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        reports: Any = pipe.execute()
    summed: dict[str, int] = {}
    for report in reports:
        for channel, count in report.items():
            name = channel.decode("utf-8", "replace")
            summed[name] = summed.get(name, 0) + int(count)
    return summed


def count(client: redis.Redis, channel: str) -> int:
    """Open streams of ``channel`` across every worker and machine."""
    return totals(client).get(channel, 0)

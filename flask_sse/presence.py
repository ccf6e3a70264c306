"""Open streams per channel across every worker and machine, kept in Redis.

Each hub writes its own counts to a hash of its own (``sse:presence:<id>``,
channel -> open streams; with a namespace ``sse:<namespace>:presence:<id>``)
with an expiry, and lists itself in the sorted set ``sse:presence`` scored
by the time of its last report. A reader sums the hashes of the hubs that
reported lately, so a killed worker's counts vanish within ``TTL`` seconds.
Hubs report about once a second while their counts change and every
``REFRESH`` seconds otherwise: a handful of commands per worker per second,
whatever the number of streams. The reports go out from a thread of their
own (:class:`Reporter`), the only one that waits on Redis for them, so a
slow Redis never delays a keepalive.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from .naming import Names

#: Seconds after its last report that a hub's counts stop counting.
TTL = 15
#: Seconds between reports when nothing changed (keeps the counts alive).
REFRESH = 5.0
#: Seconds between reports while counts change.
SOON = 1.0

logger = logging.getLogger("flask_sse")


class Presence:
    """One hub's report of its counts."""

    def __init__(self, client: redis.Redis, names: Names | None = None) -> None:
        self._client = client
        self._registry = (names or Names()).presence_registry
        #: the hash this hub's counts are written to
        self.key = f"{self._registry}:{uuid.uuid4().hex}"

    def others(self, channel: str) -> int:
        """Open streams of ``channel`` in every other hub's last report."""
        return _summed(self._client, self._registry, exclude=self.key).get(channel, 0)

    def report(self, counts: dict[str, int]) -> None:
        now = time.time()
        with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(self.key)
            if counts:
                pipe.hset(self.key, mapping=counts)  # type: ignore[arg-type]
                pipe.expire(self.key, TTL)
            pipe.execute()
        self._client.zadd(self._registry, {self.key: now})
        self._client.zremrangebyscore(self._registry, 0, now - TTL)


class Reporter:
    """The cadence of one hub's reports: a thread that writes ``counts()`` to Redis.

    :meth:`changed` asks for a report ``SOON``: changes within that time
    share one report. Without changes the counts are written again every
    ``REFRESH`` to keep them alive. ``counts`` is called from this thread.
    """

    def __init__(self, presence: Presence, counts: Callable[[], dict[str, int]]) -> None:
        self._presence = presence
        self._counts = counts
        self._condition = threading.Condition()  # guards _changed, _stopped and _thread
        self._changed = False
        self._stopped = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._condition:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(
                    target=self._run, name="flask-sse-presence", daemon=True
                )
                self._thread.start()

    def changed(self) -> None:
        with self._condition:
            self._changed = True
            self._condition.notify()

    def close(self, timeout: float = 5.0) -> None:
        with self._condition:
            self._stopped = True
            self._condition.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        condition = self._condition
        while True:
            with condition:
                condition.wait_for(lambda: self._changed or self._stopped, timeout=REFRESH)
                if self._changed:  # let the changes of the next SOON seconds join this report
                    condition.wait_for(lambda: self._stopped, timeout=SOON)
                if self._stopped:
                    return
                self._changed = False
            try:
                self._presence.report(self._counts())
            except Exception as error:  # noqa: BLE001 - a failed report must not end the thread
                logger.info("Could not report subscriber counts (%s)", error)


def totals(client: redis.Redis, names: Names | None = None) -> dict[str, int]:
    """Open streams per channel, summed over every hub that reported lately."""
    return _summed(client, (names or Names()).presence_registry)


def _summed(client: redis.Redis, registry: str, exclude: str | None = None) -> dict[str, int]:
    """The reports in ``registry`` added up, but ``exclude``'s (a hub that counts live)."""
    keys: Any = client.zrangebyscore(registry, time.time() - TTL, "+inf")
    if exclude is not None:
        keys = [key for key in keys if key != exclude.encode()]
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


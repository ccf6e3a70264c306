"""The per-process fan-out: ONE Redis pub/sub connection for every client.

(One per shard with subscribers on Redis Cluster: see ``routing.py``.) A
channel is subscribed on Redis when its first local subscriber arrives and
unsubscribed after the last one leaves (reference counts, ``channels.py``),
so Redis holds no per-client state. Each message is decoded and encoded
once (a ``Delivery``) and the same object goes to every local subscriber.

This module is the streams' side: subscribing, unsubscribing, the counts,
and the hub's lifetime. What Redis sends (events, confirmations, lost and
moved links, and the replay from history that makes a lost link lose
nothing) is ``dispatch.py``.

Only ``threading`` primitives are used: under the threaded dev server they
are threads, and under ``gunicorn -k gevent`` (which monkey-patches
``threading``) the same code runs as greenlets.

Threads, and who may touch what
-------------------------------

- Stream threads (one per client) call :meth:`Hub.subscribe`,
  :meth:`Hub.unsubscribe` and the read-only queries.
- One reader thread per link (``links.py``) calls back the dispatcher
  (``dispatch.py``): ``link_up``, ``link_failed``, ``link_down``,
  ``message``, ``subscribed`` and ``dropped``.
- One watchdog thread per link PINGs a quiet connection (under ``_lock``,
  and only if it is free at once) and cuts one gone silent with a socket
  ``shutdown``, without the lock: that also ends a send stuck under it on a
  dead network.
- The scheduler thread (``scheduler.py``) wakes due streams and, after
  SIGTERM, ends those ``_open_streams`` lists; it never waits on Redis.
- Under threads, one thread (``hangups.py``) waits for the streams' clients
  to close their connections and ends those streams.
- The presence thread (``presence.Reporter``) calls ``_counts`` and writes
  the counts to Redis.
- On Redis Cluster, the owner search thread (``routing.OwnerSearch``) calls
  the dispatcher's ``_moved`` once it knows where a dropped channel went.

``_lock`` guards the channel table (``channels.py``: every field of every
channel), ``_subscriptions``, the dispatcher's ``closed``, and the link set
(``linkset.py``: which link carries which channel, each link's
``connection``, ``attempts`` and ``channels``; the hub hands its lock to
the dispatcher and through it to them). Every command to Redis is sent
under it. Nothing that may wait runs under it (delivering to a
subscription, reading history, a signal): fan-out works on a tuple snapshot
of a channel's subscribers, taken under the lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from redis.exceptions import RedisError

from .channels import ChannelTable
from .dispatch import Dispatcher
from .hangups import HangUps
from .history import History, Position
from .naming import Names
from .presence import Presence, Reporter
from .routing import Router
from .scheduler import Scheduler
from .subscription import CloseReason, Subscription


class HubUnavailable(Exception):
    """Redis cannot be reached, so no stream can be subscribed now."""


class Hub:
    """Fan-out of Redis pub/sub to the subscribers of this process.

    One link (connection and reader thread) per Redis server it needs: one
    for a single Redis, one per shard with subscribed channels on a cluster.
    Its threads start with the first subscriber; :meth:`close` stops them all
    and releases every connection.
    """

    def __init__(
        self,
        router: Router,
        history: History,
        presence: Presence,
        names: Names | None = None,
        *,
        subscribe_timeout: float = 5.0,
    ) -> None:
        self._router = router
        self._subscribe_timeout = subscribe_timeout
        self._lock = threading.Lock()
        self._channels = ChannelTable()
        self._dispatch = Dispatcher(router, history, names or Names(), self._lock, self._channels)
        self._subscriptions: dict[Subscription, None] = {}
        self._scheduler = Scheduler(open_streams=self._open_streams)
        self._presence = presence
        self._reporter = Reporter(presence, self._counts)
        #: watches the streams' connections for their clients' leaving (``hangups.py``)
        self.hang_ups = HangUps()

    # -- for the stream view -------------------------------------------------

    def subscribe(
        self,
        channels: Iterable[str],
        queue_size: int,
        on_overflow: Callable[[], None] | None = None,
    ) -> tuple[Subscription, tuple[str, ...]]:
        """Register a subscriber; return once Redis delivers its channels to us.

        Returns the subscription and the channels it brought to this process
        (their first subscriber here). Raises :class:`HubUnavailable` when
        Redis cannot be reached, so the caller can refuse instead of
        opening a stream that stays silent.
        ``on_overflow`` is called (from a reader thread) if the subscriber
        falls ``queue_size`` events behind.
        """
        subscription = Subscription(tuple(channels), queue_size, self._scheduler, on_overflow)
        deadline = time.monotonic() + self._subscribe_timeout
        with self._lock:
            if self._dispatch.closed:
                raise HubUnavailable("the hub is closed")
            self._scheduler.start()
            self._reporter.start()
            try:
                nodes = {name: self._node_of(name) for name in subscription.channels}
            except RedisError as error:
                raise HubUnavailable(f"Redis is unreachable ({error})") from None
            if not self._dispatch.links.wait_connected(nodes.values(), self._subscribe_timeout):
                raise HubUnavailable("Redis is unreachable; see the log for why")
            self._subscriptions[subscription] = None
            to_subscribe = self._channels.add(subscription, nodes)
            for name, node in nodes.items():
                self._dispatch.links.carry(name, node)
            self._dispatch.send_subscribe(to_subscribe)
            waits = [self._dispatch.channel(name).ready for name in subscription.channels]
        self._reporter.changed()
        for ready in waits:
            if not ready.wait(max(0.0, deadline - time.monotonic())):
                self.unsubscribe(subscription)
                raise HubUnavailable("Redis did not confirm the subscription in time")
        return subscription, tuple(to_subscribe)

    def unsubscribe(self, subscription: Subscription) -> list[str]:
        """Release a subscriber; a channel nobody here listens to is unsubscribed.

        Returns those channels (vacated in this process).
        """
        self._scheduler.cancel(subscription)
        with self._lock:
            self._subscriptions.pop(subscription, None)
            vacated = self._channels.remove(subscription)
            self._dispatch.links.unsubscribe(vacated)
            vacated_names = [name for names in vacated.values() for name in names]
            for name in vacated_names:
                if self._channels.get(name) is None:  # forgotten, not awaiting a confirmation
                    self._dispatch.links.drop(name)
        self._reporter.changed()
        return vacated_names

    def positions(self, channels: Iterable[str]) -> dict[str, Position]:
        """Each channel's newest history position as this hub has seen it."""
        with self._lock:
            return self._channels.positions(channels)

    def shutdown(self, drain_window: float = 0.0) -> None:
        """End every stream of this hub, spread over ``drain_window`` seconds.

        Browsers whose streams end together reconnect together, all to the
        other servers and all reading history at once: spreading the ends
        spreads that load. Safe in a signal handler.
        """
        self._scheduler.shutdown(drain_window)

    def close(self) -> None:
        """End every stream, stop every thread of this hub and release its connections."""
        with self._lock:
            self._dispatch.closed = True
        self._end_all()
        self._dispatch.close()
        self._scheduler.close()
        self._reporter.close()
        self.hang_ups.close()

    @property
    def streams(self) -> int:
        """How many streams this process serves from this hub."""
        with self._lock:
            return len(self._subscriptions)

    def subscriber_count(self, channel: str) -> int:
        """Open streams of ``channel``: other hubs' last reports, and this one's live count."""
        return self._presence.others(channel) + self.local_subscribers(channel)

    def local_subscribers(self, channel: str) -> int:
        """How many clients of this process are subscribed to ``channel``."""
        with self._lock:
            state = self._channels.get(channel)
            return len(state.subscribers) if state is not None else 0

    def channels(self) -> list[str]:
        """Channels with at least one subscriber in this process."""
        with self._lock:
            return list(self._channels.counts())

    # -- under _lock ---------------------------------------------------------

    def _node_of(self, name: str) -> str:
        channel = self._channels.get(name)
        return channel.node if channel is not None else self._router.node_for(name)

    # -- called from the other threads -----------------------------------------

    def _open_streams(self) -> list[Subscription]:
        """The subscriptions not ended yet, oldest first."""
        with self._lock:
            return [subscription for subscription in self._subscriptions if not subscription.ended]

    def _end_all(self) -> None:
        for subscription in self._open_streams():
            subscription.end(CloseReason.SHUTDOWN)

    def _counts(self) -> dict[str, int]:
        with self._lock:
            return self._channels.counts()

"""The per-process fan-out: ONE Redis pub/sub connection for every client.

(One per shard with subscribers on Redis Cluster: see ``routing.py``.) A
channel is subscribed on Redis when its first local subscriber arrives and
unsubscribed after the last one leaves (reference counts, ``channels.py``),
so Redis holds no per-client state. Each message is decoded and encoded
once (a ``Delivery``) and the same object goes to every local subscriber.

Nothing is lost when a link drops: the hub remembers each channel's last
history position, and after the link reconnects and resubscribes it replays
from history what was published meanwhile, then skips the live copies of
what it replayed.

Only ``threading`` primitives are used: under the threaded dev server they
are threads, and under ``gunicorn -k gevent`` (which monkey-patches
``threading``) the same code runs as greenlets.

Threads, and who may touch what
-------------------------------

- Stream threads (one per client) call :meth:`Hub.subscribe`,
  :meth:`Hub.unsubscribe` and the read-only queries.
- One reader thread per link (``links.py``) calls back ``link_up``,
  ``link_failed``, ``link_down``, ``message``, ``subscribed`` and ``dropped``.
- The scheduler thread (``scheduler.py``) wakes due streams and, after
  SIGTERM, ends those ``_open_streams`` lists; it never waits on Redis.
- The presence thread (``presence.Reporter``) calls ``_counts`` and writes
  the counts to Redis.
- On Redis Cluster, the owner search thread (``routing.OwnerSearch``) calls
  ``_moved`` once it knows where a dropped channel went.

``_lock`` guards the channel table (``channels.py``: every field of every
channel), ``_subscriptions`` and ``_closed``, and the link set
(``linkset.py``: which link carries which channel, each link's
``connection``, ``attempts`` and ``channels``; the hub hands its lock to
them). Every command to Redis is sent under it. Nothing that may wait runs
under it (delivering to a subscription, reading history, a signal):
fan-out works on a tuple snapshot of a channel's subscribers, taken under
the lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from redis.exceptions import RedisError

from . import metrics
from .channels import Channel, ChannelTable
from .delivery import Delivery, from_history
from .history import History, Position
from .links import Link
from .linkset import LinkSet
from .naming import Names
from .presence import Presence, Reporter
from .routing import OwnerSearch, Router
from .scheduler import Scheduler
from .subscription import CloseReason, Subscription

logger = logging.getLogger("flask_sse")


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
        self._history = history
        self._subscribe_timeout = subscribe_timeout
        self._lock = threading.Lock()
        self._links = LinkSet(router, names or Names(), self._lock, self)
        self._channels = ChannelTable()
        self._subscriptions: dict[Subscription, None] = {}
        self._closed = False
        self._scheduler = Scheduler(open_streams=self._open_streams)
        self._presence = presence
        self._reporter = Reporter(presence, self._counts)
        self._owner_search = OwnerSearch(router, self._moved)

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
            if self._closed:
                raise HubUnavailable("the hub is closed")
            self._scheduler.start()
            self._reporter.start()
            try:
                nodes = {name: self._node_of(name) for name in subscription.channels}
            except RedisError as error:
                raise HubUnavailable(f"Redis is unreachable ({error})") from None
            if not self._links.wait_connected(nodes.values(), self._subscribe_timeout):
                raise HubUnavailable("Redis is unreachable; see the log for why")
            self._subscriptions[subscription] = None
            to_subscribe = self._channels.add(subscription, nodes)
            for name, node in nodes.items():
                self._links.carry(name, node)
            self._send_subscribe(to_subscribe)
            waits = [self._channel(name).ready for name in subscription.channels]
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
            self._links.unsubscribe(vacated)
            vacated_names = [name for names in vacated.values() for name in names]
            for name in vacated_names:
                if self._channels.get(name) is None:  # forgotten, not awaiting a confirmation
                    self._links.drop(name)
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
            self._closed = True
        self._end_all()
        self._links.close()
        self._owner_search.close()
        self._scheduler.close()
        self._reporter.close()

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

    def _channel(self, name: str) -> Channel:
        channel = self._channels.get(name)
        assert channel is not None, f"{name!r} is not in the table"
        return channel

    def _forget(self, name: str) -> None:
        self._channels.forget(name)
        self._links.drop(name)

    def _send_subscribe(self, names: list[str]) -> None:
        self._links.subscribe(self._channels.subscribing(names))

    def _move(self, name: str, node: str) -> None:
        """Carry channel ``name`` on ``node`` from now on (the cluster moved its slot)."""
        channel = self._channel(name)
        link = self._links.move(name, channel.node, node)
        channel.node = node
        channel.pending = 0
        if link.connection is not None:
            self._send_subscribe([name])

    # -- called from the other threads -----------------------------------------

    def _moved(self, name: str, node: str) -> None:
        """The owner search found where a dropped channel lives now."""
        with self._lock:
            if self._channels.get(name) is not None and not self._closed:
                self._move(name, node)

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

    # -- called back by the links' reader threads ------------------------------

    def link_up(self, link: Link, connection: Any) -> None:
        """Resubscribe what the link carries (channels left meanwhile are forgotten)."""
        with self._lock:
            for name in list(link.channels):
                channel = self._channel(name)
                channel.pending = 0
                if not channel.subscribers:
                    self._forget(name)
            self._links.connected(link, connection)
            self._send_subscribe(list(link.channels))

    def link_failed(self, link: Link, error: Exception) -> None:
        with self._lock:
            self._links.failed(link)
        logger.warning("Cannot reach Redis %s for pub/sub (%s); retrying", link.node, error)

    def link_down(self, link: Link) -> bool:
        """After a failure: True if the link should stop (it carries no channel).

        So nothing retries or logs while no stream needs the link. On a
        cluster, the owner search moves each channel once the topology names
        a new owner for its slot (asked again after every failure).
        """
        with self._lock:
            names = list(link.channels)
            idle = self._links.remove_if_idle(link)
        if self._router.sharded:
            for name in names:
                self._owner_search.search(name, link.node)
        return idle

    def dropped(self, link: Link, name: str) -> None:
        """A shard dropped a channel we still want: its slot moved (failover, resharding)."""
        with self._lock:
            if not self._channels.wanted(name, link.node):
                return
        logger.warning("Redis %s dropped shard channel %r; finding its new owner", link.node, name)
        self._owner_search.search(name, link.node)

    def subscribed(self, link: Link, name: str) -> None:
        """Redis confirmed a SUBSCRIBE: learn the channel's position, or catch up."""
        with self._lock:
            channel = self._channels.confirmed(name, link.node)
            if channel is None:
                if self._channels.get(name) is None:
                    link.channels.discard(name)
                return
            since = channel.last
        # History is read outside the lock; only this link's reader dispatches
        # the channel meanwhile, so nothing moves its position under us.
        if since is None:
            newest = self._history.newest(name)
            with self._lock:
                channel.last = newest
        else:
            self._replay(name, channel, since)
        channel.ready.set()

    def message(self, link: Link, name: str, payload: bytes) -> None:
        delivery = Delivery.decode(name, payload)
        if delivery is None:
            return
        with self._lock:
            fanout = self._channels.admit(name, link.node, delivery)
        if not fanout:
            return
        direct = 0  # streams it was written to directly: one count per event, not per stream
        for subscription in fanout:
            if subscription.deliver(delivery):
                direct += 1
        metrics.fanned_out(delivery.created, direct)

    def _replay(self, name: str, channel: Channel, since: Position) -> None:
        """Dispatch what history holds after ``since``: published while we were away."""
        events, gap, newest = self._history.after(name, since)
        if gap:
            logger.warning("History of channel %r lacks some of what came after %s-%s",
                           name, *since)
        deliveries = from_history(name, since, events, gap, newest)
        with self._lock:
            if events:
                channel.last = channel.replayed_to = events[-1][0]
            elif gap:  # history was lost: start again from its newest
                channel.last = newest
            fanout = channel.snapshot()
        direct = 0
        for _, delivery in deliveries:
            for subscription in fanout:
                if subscription.deliver(delivery):
                    direct += 1
        if deliveries:
            resets = 1 if gap else 0  # one reset, to each stream of the channel
            metrics.hub_replayed(len(deliveries) - resets, resets * len(fanout), direct)
        if events:
            logger.info("Replayed %d events of channel %r from history", len(events), name)

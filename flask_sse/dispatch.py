"""What the hub's links hear from Redis, applied to the channels and fanned out.

The :class:`Dispatcher` is the links' listener (``links.LinkListener``):
their reader threads call it when a connection comes up or fails, when Redis
confirms a SUBSCRIBE, drops a shard channel, or sends an event. It owns the
links (``linkset.py``) and, on Redis Cluster, the search for a dropped
channel's new owner (``routing.OwnerSearch``).

Nothing is lost when a link drops: each channel remembers its last history
position, and once the link is back and Redis confirms the SUBSCRIBE again,
the dispatcher replays from history what was published meanwhile; the
channel table then skips the live copies of what was replayed.

It shares the hub's lock and channel table, under the rules of ``hub.py``:
every method here takes the lock itself, except those marked "under the
lock", which the hub calls with it held. History is read and subscribers are
delivered to outside the lock.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from . import metrics
from .channels import Channel, ChannelTable
from .delivery import Delivery, from_history
from .history import History, Position
from .links import Link
from .linkset import LinkSet
from .naming import Names
from .routing import OwnerSearch, Router

logger = logging.getLogger("flask_sse")


class Dispatcher:
    """Redis's side of the hub: link events, confirmations, live events and replays."""

    def __init__(
        self,
        router: Router,
        history: History,
        names: Names,
        lock: threading.Lock,
        channels: ChannelTable,
    ) -> None:
        self._router = router
        self._history = history
        self._lock = lock
        self._channels = channels
        #: set once by the hub's ``close`` (under the lock): no channel moves after it
        self.closed = False
        #: the hub subscribes and unsubscribes through it, under the lock
        self.links = LinkSet(router, names, lock, self)
        self._owner_search = OwnerSearch(router, self._moved)

    def close(self) -> None:
        """Stop the links and the owner search, releasing their connections."""
        self.links.close()
        self._owner_search.close()

    # -- under the lock ----------------------------------------------------------

    def channel(self, name: str) -> Channel:
        """A channel of the table (it must be there)."""
        channel = self._channels.get(name)
        assert channel is not None, f"{name!r} is not in the table"
        return channel

    def send_subscribe(self, names: list[str]) -> None:
        """SUBSCRIBE those of ``names`` that wait for it, on their links."""
        self.links.subscribe(self._channels.subscribing(names))

    def _forget(self, name: str) -> None:
        self._channels.forget(name)
        self.links.drop(name)

    def _move(self, name: str, node: str) -> None:
        """Carry channel ``name`` on ``node`` from now on (the cluster moved its slot)."""
        channel = self.channel(name)
        link = self.links.move(name, channel.node, node)
        channel.node = node
        channel.pending = 0
        if link.connection is not None:
            self.send_subscribe([name])

    # -- called back by the owner search's thread ------------------------------

    def _moved(self, name: str, node: str) -> None:
        """The owner search found where a dropped channel lives now."""
        with self._lock:
            if self._channels.get(name) is not None and not self.closed:
                self._move(name, node)

    # -- called back by the links' reader threads ------------------------------

    def link_up(self, link: Link, connection: Any) -> None:
        """Resubscribe what the link carries (channels left meanwhile are forgotten)."""
        with self._lock:
            for name in list(link.channels):
                channel = self.channel(name)
                channel.pending = 0
                if not channel.subscribers:
                    self._forget(name)
            self.links.connected(link, connection)
            self.send_subscribe(list(link.channels))

    def link_failed(self, link: Link, error: Exception) -> None:
        with self._lock:
            self.links.failed(link)
        logger.warning("Cannot reach Redis %s for pub/sub (%s); retrying", link.node, error)

    def link_down(self, link: Link) -> bool:
        """After a failure: True if the link should stop (it carries no channel).

        So nothing retries or logs while no stream needs the link. On a
        cluster, the owner search moves each channel once the topology names
        a new owner for its slot (asked again after every failure).

        The idle command connections to the link's server are closed too: a
        network that went silent took them with it, and the replay after
        the link is back, a read of history, would first wait a whole
        socket timeout on one of them. A working one costs a reconnect.
        """
        self._router.drop_idle(link.node)
        with self._lock:
            names = list(link.channels)
            idle = self.links.remove_if_idle(link)
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

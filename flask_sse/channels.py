"""The hub's table of channels: reference counts, the link of each, positions.

Plain bookkeeping with no threads, no Redis and no locks of its own: the
hub calls every method under its lock, and acts on what they return (which
SUBSCRIBE or UNSUBSCRIBE to send, which subscribers to deliver to). That
keeps the rules (first subscriber subscribes, last one unsubscribes, each
history position dispatched once) in one place that can be read and tested
on its own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from .delivery import Delivery
from .history import ORIGIN, Position
from .subscription import Subscription


class Channel:
    """One channel with local subscribers (or a SUBSCRIBE still unconfirmed)."""

    __slots__ = ("subscribers", "fanout", "node", "pending", "ready", "last", "replayed_to")

    def __init__(self, node: str) -> None:
        #: local subscribers (a dict used as an ordered set)
        self.subscribers: dict[Subscription, None] = {}
        #: tuple snapshot of the subscribers for fan-out, rebuilt after a change
        self.fanout: tuple[Subscription, ...] | None = None
        #: the Redis server (cluster node) whose link carries the channel
        self.node = node
        #: SUBSCRIBE commands sent on the link's connection and not yet confirmed
        self.pending = 0
        #: set once Redis has confirmed the subscription and history is caught up
        self.ready = threading.Event()
        #: the newest history position dispatched (None: not known yet)
        self.last: Position | None = None
        #: after a replay, live copies up to here are skipped
        self.replayed_to: Position | None = None

    def snapshot(self) -> tuple[Subscription, ...]:
        """The subscribers to deliver to now."""
        fanout = self.fanout
        if fanout is None:
            fanout = self.fanout = tuple(self.subscribers)
        return fanout


class ChannelTable:
    """Every channel of one hub, by name. Not thread-safe: the hub's lock guards it."""

    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}

    def get(self, name: str) -> Channel | None:
        return self._channels.get(name)

    def add(self, subscription: Subscription, nodes: dict[str, str]) -> list[str]:
        """Count ``subscription`` in; return the channels it is the first subscriber of.

        ``nodes`` gives the node of each channel that is not in the table yet.
        """
        first = []
        for name in subscription.channels:
            channel = self._channels.get(name)
            if channel is None:
                channel = self._channels[name] = Channel(nodes[name])
            if not channel.subscribers:
                first.append(name)
            channel.subscribers[subscription] = None
            channel.fanout = None
        return first

    def remove(self, subscription: Subscription) -> dict[str, list[str]]:
        """Count ``subscription`` out; return the channels it was the last of, by node.

        A vacated channel is forgotten at once unless a SUBSCRIBE is still
        unconfirmed (its confirmation forgets it).
        """
        vacated: dict[str, list[str]] = {}
        for name in subscription.channels:
            channel = self._channels.get(name)
            if channel is None or subscription not in channel.subscribers:
                continue
            del channel.subscribers[subscription]
            channel.fanout = None
            if not channel.subscribers:
                vacated.setdefault(channel.node, []).append(name)
                channel.last = channel.replayed_to = None
                if not channel.pending:
                    self.forget(name)
        return vacated

    def forget(self, name: str) -> Channel:
        channel = self._channels.pop(name)
        channel.ready.set()
        return channel

    def subscribing(self, names: Iterable[str]) -> dict[str, list[str]]:
        """A SUBSCRIBE goes out for ``names``: count it pending; the names by node."""
        by_node: dict[str, list[str]] = {}
        for name in names:
            channel = self._channels[name]
            channel.pending += 1
            if channel.ready.is_set():
                channel.ready = threading.Event()
            by_node.setdefault(channel.node, []).append(name)
        return by_node

    def confirmed(self, name: str, node: str) -> Channel | None:
        """Redis confirmed a SUBSCRIBE of ``name`` on ``node``.

        Returns the channel once its last pending SUBSCRIBE is confirmed and
        it still has subscribers: it must then learn its position or catch
        up. A channel nobody wants any more is forgotten.
        """
        channel = self._channels.get(name)
        if channel is None or channel.node != node:
            return None
        channel.pending -= 1
        if channel.pending > 0:
            return None
        if not channel.subscribers:
            self.forget(name)
            return None
        return channel

    def admit(self, name: str, node: str, delivery: Delivery) -> tuple[Subscription, ...]:
        """Who gets a live ``delivery``: nobody if it was replayed already or is unwanted."""
        channel = self._channels.get(name)
        if channel is None or not channel.subscribers or channel.node != node:
            return ()
        position = delivery.position
        if position is not None:
            if channel.replayed_to is not None:
                if position <= channel.replayed_to:
                    return ()  # replayed from history already
                channel.replayed_to = None
            channel.last = position
        return channel.snapshot()

    def wanted(self, name: str, node: str) -> bool:
        """Whether ``name`` has subscribers and is carried by ``node``."""
        channel = self._channels.get(name)
        return channel is not None and bool(channel.subscribers) and channel.node == node

    def positions(self, names: Iterable[str]) -> dict[str, Position]:
        positions = {}
        for name in names:
            channel = self._channels.get(name)
            last = channel.last if channel is not None else None
            positions[name] = last if last is not None else ORIGIN
        return positions

    def counts(self) -> dict[str, int]:
        return {
            name: len(channel.subscribers)
            for name, channel in self._channels.items()
            if channel.subscribers
        }

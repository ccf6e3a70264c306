"""The hub's links by Redis server, and the commands that put channels on them.

Which link carries which channel, the SUBSCRIBE and UNSUBSCRIBE commands
(in Redis's names for the channels: prefixed for a DB or a namespace, one
per command on a cluster), moving a channel to another server, and waiting
for a link's first connection attempt. The hub's lock guards all of it: the
hub calls every method with its lock held, except :meth:`LinkSet.close`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from .links import Link, LinkListener
from .naming import Names
from .routing import Router


class LinkSet:
    """One :class:`~flask_sse.links.Link` per Redis server in use, started on first use."""

    def __init__(
        self, router: Router, names: Names, lock: threading.Lock, listener: LinkListener
    ) -> None:
        self._router = router
        self._names = names
        self._lock = lock
        self._listener = listener
        self._links: dict[str, Link] = {}
        #: links forgotten while their threads were ending, for :meth:`close` to wait for
        self._forgotten: list[Link] = []
        #: notified when a link's connection attempt has finished, either way
        self._attempt_finished = threading.Condition(lock)

    def link(self, node: str) -> Link:
        """The link to ``node``, started on first use."""
        link = self._links.get(node)
        if link is None:
            link = self._links[node] = Link(
                node, self._router, self._lock, self._listener, self._names
            )
            link.start()
        return link

    def wait_connected(self, nodes: Iterable[str], timeout: float) -> bool:
        """Wait for a first attempt on each of ``nodes``; whether all of them are connected."""
        links = [self.link(node) for node in set(nodes)]
        self._attempt_finished.wait_for(
            lambda: all(link.connection is not None or link.attempts > 0 for link in links),
            timeout=timeout,
        )
        return all(link.connection is not None for link in links)

    def carry(self, name: str, node: str) -> None:
        self._links[node].channels.add(name)

    def drop(self, name: str) -> None:
        """No link carries ``name`` any more."""
        for link in self._links.values():
            link.channels.discard(name)

    def subscribe(self, by_node: dict[str, list[str]]) -> None:
        self._send(self._router.subscribe_command, by_node)

    def unsubscribe(self, by_node: dict[str, list[str]]) -> None:
        self._send(self._router.unsubscribe_command, by_node)

    def move(self, name: str, old_node: str, node: str) -> Link:
        """Carry ``name`` on ``node`` instead of ``old_node``; the new link.

        A link left with nothing to carry on another server is retired (its
        reader sees it, asks the hub and stops).
        """
        old = self._links[old_node]
        old.channels.discard(name)
        if not old.channels and old.node != node:
            old.retire()
        link = self.link(node)
        link.channels.add(name)
        return link

    def connected(self, link: Link, connection: Any) -> None:
        link.connection = connection
        link.attempts += 1
        self._attempt_finished.notify_all()

    def failed(self, link: Link) -> None:
        link.attempts += 1
        self._attempt_finished.notify_all()

    def remove_if_idle(self, link: Link) -> bool:
        """Forget ``link`` if it carries nothing; whether it does not."""
        if link.channels:
            return False
        if self._links.get(link.node) is link:
            del self._links[link.node]
        self._forgotten = [old for old in self._forgotten if not old.ended] + [link]
        return True

    def close(self) -> None:
        """Stop every link's threads and release its connection (without the lock held)."""
        with self._lock:
            links = [*self._links.values(), *self._forgotten]
        for link in links:
            link.close()
        for link in links:
            link.join()

    def _send(self, command: str, by_node: dict[str, list[str]]) -> None:
        for node, names in by_node.items():
            link = self._links.get(node)
            if link is not None:
                on_redis = [self._names.channel(name) for name in names]
                link.send_each(command, on_redis, self._router.sharded)

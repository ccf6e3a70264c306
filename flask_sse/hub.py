"""The per-process fan-out: ONE Redis pub/sub connection for every client.

(One per shard with subscribers on Redis Cluster: see ``routing.py``.) A
reader thread owns each pub/sub connection. It decodes and encodes each
message once and hands the same :class:`Delivery` to every local
subscriber's bounded queue. Channels are subscribed on Redis when their first
local subscriber arrives and unsubscribed after the last one leaves
(reference counts), so Redis holds no per-client state.

Nothing is lost when the link drops: the hub remembers each channel's last
history position, and after it reconnects and resubscribes it replays from
history what was published meanwhile, then skips the live copies of what it
replayed.

Only ``threading`` primitives are used: under the threaded dev server they
are threads, and under ``gunicorn -k gevent`` (which monkey-patches
``threading``) the same code runs as greenlets.

Who writes to the socket: any thread may send (SUBSCRIBE, UNSUBSCRIBE, PING),
always under ``_lock`` and only to the current connection; only the reader
thread reads, and only it replaces the connection. A send that fails marks
the connection dead, so no code path can silently reconnect a socket nobody
reads from.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from redis.exceptions import RedisError

from .history import ORIGIN, History, Position, parse_position
from .message import Message
from .presence import REFRESH, SOON, Presence
from .routing import Router

logger = logging.getLogger("flask_sse")

#: Seconds between PINGs on the pub/sub connection; three missed answers and
#: the link is declared dead (a cut network sends no RST).
PING_INTERVAL = 5.0
#: A pub/sub connection that has read nothing (not even a PONG) for this long is dead.
READ_TIMEOUT = PING_INTERVAL * 3
#: Seconds between looks for subscriptions whose ``due`` time has passed.
TICK = 0.25
#: Reconnection backoff: first wait and cap, in seconds (with jitter).
#: After a shard drops a channel: how long to wait for the topology to name
#: its new owner, and how often to ask.
OWNER_WAIT = 10.0
OWNER_POLL = 0.1
BACKOFF_FIRST = 0.05
BACKOFF_CAP = 2.0


class HubUnavailable(Exception):
    """Redis cannot be reached, so no stream can be subscribed now."""


class Delivery:
    """One event as every subscriber of its channel receives it: encoded once.

    ``chunk`` is the event's wire form with the id it was published with;
    ``position`` is that id when it is a history position; ``created`` is
    when the hub received it (``time.monotonic()``).
    """

    __slots__ = ("channel", "position", "chunk", "created", "_message", "_body", "_framed")

    def __init__(self, channel: str, message: Message) -> None:
        self.channel = channel
        self.position = parse_position(message.id)
        self.chunk = message.encode()
        self.created = time.monotonic()
        self._message = message
        self._body: bytes | None = None
        self._framed: bytes | None = None

    @classmethod
    def decode(cls, channel: str, payload: bytes) -> Delivery | None:
        """A payload from Redis, or ``None`` if it is unusable (logged)."""
        try:
            message = Message.from_payload(payload)
            return None if message is None else cls(channel, message)
        except Exception:  # noqa: BLE001 - one bad message must not stop the hub
            logger.exception("Skipped a message on channel %r that cannot be encoded", channel)
            return None

    @classmethod
    def reset(cls, channel: str) -> Delivery:
        """The ``reset`` event: history no longer holds all a client missed."""
        return cls(channel, Message({"channel": channel}, type="reset"))

    def body(self) -> bytes:
        """The wire form without ``id`` and without the final blank line."""
        if self._body is None:
            message = self._message
            without_id = Message(message.data, type=message.type, retry=message.retry)
            self._body = without_id.encode()[:-1]
        return self._body

    def framed(self) -> bytes:
        """``chunk`` as one HTTP/1.1 chunk, for writing straight to a socket."""
        if self._framed is None:
            self._framed = b"%X\r\n%s\r\n" % (len(self.chunk), self.chunk)
        return self._framed


class Subscription:
    """One client's end of the hub: a bounded queue of deliveries.

    The hub thread calls :meth:`deliver`; the client's own thread (its
    greenlet, under gevent) calls :meth:`wait`. A client that falls
    ``limit`` events behind is marked ``overflowed``, stops receiving, and
    ``on_overflow`` is called so its connection can be closed: memory stays
    bounded and the other clients are not held up.

    ``fast_write``, when set, is offered each delivery while the client's
    thread sleeps with nothing queued: it may write the event itself (straight
    to the socket, without waking anyone) and return True. The hub's
    maintenance thread wakes a sleeping client once ``due`` (a
    ``time.monotonic()`` time) has passed: for keepalives and time limits,
    without a timer per wait.
    """

    __slots__ = (
        "channels", "overflowed", "closing", "on_overflow", "fast_write", "due", "occupied",
        "end_reason", "_queue", "_limit", "_wakeup", "_sleeping",
    )

    def __init__(self, channels: tuple[str, ...], limit: int) -> None:
        self.channels = channels
        self.overflowed = False
        #: set when the process is shutting down: the stream should end now
        self.closing = False
        self.on_overflow: Callable[[], None] | None = None
        self.fast_write: Callable[[Delivery], bool] | None = None
        self.due = math.inf
        #: the channels this subscription brought to this process (their first subscriber)
        self.occupied: tuple[str, ...] = ()
        #: why the stream ended, for the stream_closed signal
        self.end_reason = "client gone"
        self._queue: deque[Delivery] = deque()
        self._limit = limit
        self._wakeup = threading.Event()
        self._sleeping = False

    def deliver(self, delivery: Delivery) -> None:
        if self.overflowed:
            return
        queue = self._queue
        if self._sleeping and not queue:
            fast_write = self.fast_write
            if fast_write is not None and fast_write(delivery):
                return
        if len(queue) >= self._limit:
            self.overflowed = True
            self._wakeup.set()
            if self.on_overflow is not None:
                self.on_overflow()
            return
        queue.append(delivery)
        self._wakeup.set()

    def wake(self) -> None:
        self._wakeup.set()

    def wait(self) -> list[Delivery]:
        """Everything queued, oldest first; empty when woken for another reason."""
        queue = self._queue
        if not queue:
            self._wakeup.clear()
            if not queue:  # checked again: a delivery may have come before clear()
                self._sleeping = True
                self._wakeup.wait()
                self._sleeping = False
        return [queue.popleft() for _ in range(len(queue))]


class _Channel:
    """The hub's state for one channel (guarded by the hub's lock)."""

    __slots__ = ("subscribers", "fanout", "node", "pending", "ready", "last", "replayed_to")

    def __init__(self, node: str) -> None:
        #: local subscribers (a dict used as an ordered set)
        self.subscribers: dict[Subscription, None] = {}
        #: tuple snapshot of the subscribers for the reader, rebuilt after a change
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


class _Link:
    """One pub/sub connection, to one Redis server, and the channels it carries."""

    __slots__ = ("node", "connection", "attempts", "channels")

    def __init__(self, node: str) -> None:
        self.node = node
        self.connection: Any = None
        self.attempts = 0  # connection attempts finished, successful or not
        self.channels: set[str] = set()


class Hub:
    """Fan-out of Redis pub/sub to the subscribers of this process.

    One link (connection and reader thread) per Redis server it needs: one
    for a single Redis, one per shard with subscribed channels on a cluster.
    """

    def __init__(
        self,
        router: Router,
        history: History,
        presence: Presence,
        *,
        subscribe_timeout: float = 5.0,
    ) -> None:
        self._router = router
        self._history = history
        self._presence = presence
        self._presence_changed = False
        self._subscribe_timeout = subscribe_timeout
        self._lock = threading.Lock()
        self._attempt_finished = threading.Condition(self._lock)
        self._links: dict[str, _Link] = {}
        self._started = False
        self._stopping = False
        self._jitter = random.Random()  # its own: never disturbs the app's random state
        self._channels: dict[str, _Channel] = {}
        #: every subscription, for the maintenance thread's wake-ups
        self._subscriptions: dict[Subscription, None] = {}

    # -- for the stream view -------------------------------------------------

    def subscribe(self, channels: Iterable[str], queue_size: int) -> Subscription:
        """Register a subscriber; return once Redis delivers its channels to us.

        Raises :class:`HubUnavailable` when Redis cannot be reached, so the
        caller can answer 503 instead of opening a stream that stays silent.
        """
        subscription = Subscription(tuple(channels), queue_size)
        deadline = time.monotonic() + self._subscribe_timeout
        with self._lock:
            self._start()
            try:
                nodes = {name: self._node_of(name) for name in subscription.channels}
            except RedisError as error:
                raise HubUnavailable(f"Redis is unreachable ({error})") from None
            links = [self._link(node) for node in set(nodes.values())]
            self._attempt_finished.wait_for(
                lambda: all(link.connection is not None or link.attempts > 0 for link in links),
                timeout=self._subscribe_timeout,
            )
            if any(link.connection is None for link in links):
                raise HubUnavailable("Redis is unreachable; see the log for why")
            self._subscriptions[subscription] = None
            to_subscribe = []
            for name in subscription.channels:
                channel = self._channels.get(name)
                if channel is None:
                    channel = self._channels[name] = _Channel(nodes[name])
                    self._links[channel.node].channels.add(name)
                if not channel.subscribers:
                    to_subscribe.append(name)
                channel.subscribers[subscription] = None
                channel.fanout = None
            self._send_subscribe(to_subscribe)
            subscription.occupied = tuple(to_subscribe)
            self._presence_changed = True
            waits = [self._channels[name].ready for name in subscription.channels]
        for ready in waits:
            if not ready.wait(max(0.0, deadline - time.monotonic())):
                self.unsubscribe(subscription)
                raise HubUnavailable("Redis did not confirm the subscription in time")
        return subscription

    def unsubscribe(self, subscription: Subscription) -> list[str]:
        """Release a subscriber; a channel nobody here listens to is unsubscribed.

        Returns those channels (vacated in this process).
        """
        with self._lock:
            if subscription in self._subscriptions:
                del self._subscriptions[subscription]
                self._presence_changed = True
            vacated: dict[str, list[str]] = {}  # by node
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
                        self._forget(name)
            for node, names in vacated.items():
                self._send_each(self._links[node], self._router.unsubscribe_command, names)
        return [name for names in vacated.values() for name in names]

    def positions(self, channels: Iterable[str]) -> dict[str, Position]:
        """Each channel's newest history position as this hub has seen it."""
        positions = {}
        with self._lock:
            for name in channels:
                channel = self._channels.get(name)
                last = channel.last if channel is not None else None
                positions[name] = last if last is not None else ORIGIN
        return positions

    def shutdown(self) -> None:
        """End every stream of this hub soon (within ``TICK``); safe in a signal handler."""
        self._stopping = True

    @property
    def streams(self) -> int:
        """How many streams this process serves from this hub."""
        return len(self._subscriptions)

    def local_subscribers(self, channel: str) -> int:
        """How many clients of this process are subscribed to ``channel``."""
        state = self._channels.get(channel)
        return len(state.subscribers) if state else 0

    def channels(self) -> list[str]:
        """Channels with at least one subscriber in this process."""
        with self._lock:
            return [name for name, channel in self._channels.items() if channel.subscribers]

    # -- links and channels, under _lock ---------------------------------------

    def _start(self) -> None:
        if not self._started:
            self._started = True
            threading.Thread(target=self._maintain, name="flask-sse-tick", daemon=True).start()
            _end_streams_on_sigterm(self)

    def _node_of(self, name: str) -> str:
        channel = self._channels.get(name)
        return channel.node if channel is not None else self._router.node_for(name)

    def _link(self, node: str) -> _Link:
        """The link to ``node``, started on first use."""
        link = self._links.get(node)
        if link is None:
            link = self._links[node] = _Link(node)
            reader = threading.Thread(target=self._run, args=(link,), name="flask-sse-hub")
            reader.daemon = True
            reader.start()
        return link

    def _forget(self, name: str) -> None:
        channel = self._channels.pop(name)
        channel.ready.set()
        link = self._links.get(channel.node)
        if link is not None:
            link.channels.discard(name)

    def _send_subscribe(self, names: list[str]) -> None:
        by_link: dict[str, list[str]] = {}
        for name in names:
            channel = self._channels[name]
            channel.pending += 1
            if channel.ready.is_set():
                channel.ready = threading.Event()
            by_link.setdefault(channel.node, []).append(name)
        for node, group in by_link.items():
            self._send_each(self._links[node], self._router.subscribe_command, group)

    def _send_each(self, link: _Link, command: str, names: list[str]) -> None:
        """One command for all ``names``; one each on a cluster (one slot per command)."""
        if self._router.sharded:
            for name in names:
                self._send(link, link.connection, command, name)
        elif names:
            self._send(link, link.connection, command, *names)

    def _send(self, link: _Link, connection: Any, *command: str) -> None:
        if connection is None or connection is not link.connection:
            return
        try:
            connection.send_command(*command, check_health=False)
        except Exception as error:  # noqa: BLE001 - any failure means the link is gone
            logger.warning("Redis pub/sub send to %s failed (%s); reconnecting", link.node, error)
            link.connection = None
            connection.disconnect()

    def _move(self, name: str, node: str) -> None:
        """Carry channel ``name`` on ``node`` from now on (the cluster moved its slot)."""
        channel = self._channels[name]
        old = self._links[channel.node]
        old.channels.discard(name)
        if not old.channels and old.node != node and old.connection is not None:
            connection, old.connection = old.connection, None
            connection.disconnect()  # its reader sees it and retires the idle link
        channel.node = node
        channel.pending = 0
        link = self._link(node)
        link.channels.add(name)
        if link.connection is not None:
            self._send_subscribe([name])

    # -- a link's reader thread ----------------------------------------------

    def _run(self, link: _Link) -> None:
        backoff = BACKOFF_FIRST
        while True:
            try:
                connection = self._connect(link)
            except Exception as error:  # noqa: BLE001 - retried with backoff
                with self._lock:
                    link.attempts += 1
                    self._attempt_finished.notify_all()
                logger.warning("Cannot reach Redis %s for pub/sub (%s); retrying", link.node, error)
                if self._reroute(link):
                    return
                time.sleep(backoff * self._jitter.uniform(0.5, 1.0))
                backoff = min(backoff * 2, BACKOFF_CAP)
                continue
            backoff = BACKOFF_FIRST
            try:
                self._read(link, connection)
            except Exception as error:  # noqa: BLE001 - the link is gone; reconnect
                logger.warning("Redis pub/sub link to %s lost (%s); reconnecting", link.node, error)
            finally:
                with self._lock:
                    if link.connection is connection:
                        link.connection = None
                connection.disconnect()
            if self._reroute(link):
                return

    def _reroute(self, link: _Link) -> bool:
        """After a failure: move channels whose slot has a new owner; True if the link is done."""
        if not self._router.sharded:
            return False
        with self._lock:
            names = list(link.channels)
        try:
            owners = self._owners(names)
        except Exception as error:  # noqa: BLE001 - the cluster is still settling
            logger.info("Cannot refresh the cluster's topology yet (%s)", error)
            return False
        with self._lock:
            for name, node in owners.items():
                if name in link.channels and node != link.node:
                    self._move(name, node)
            if link.channels:
                return False
            if self._links.get(link.node) is link:
                del self._links[link.node]
            return True

    def _owners(self, names: list[str]) -> dict[str, str]:
        """Learn the cluster's topology again; the owner of each of ``names`` it knows."""
        self._router.refresh()
        owners = {}
        for name in names:
            try:
                owners[name] = self._router.node_for(name)
            except RedisError:
                continue  # its slot has no master yet: the next failure retries
        return owners

    def _connect(self, link: _Link) -> Any:
        connection = self._router.connect(link.node)
        with self._lock:
            link.connection = connection
            link.attempts += 1
            for name in list(link.channels):
                channel = self._channels[name]
                channel.pending = 0
                if not channel.subscribers:
                    self._forget(name)
            self._send_subscribe(list(link.channels))
            self._attempt_finished.notify_all()
        return connection

    def _read(self, link: _Link, connection: Any) -> None:
        while link.connection is connection:
            reply = connection.read_response(disconnect_on_error=False, push_request=True)
            if not isinstance(reply, list) or len(reply) != 3:
                continue  # a PONG
            kind, name, body = reply
            if kind in (b"message", b"smessage"):
                self._dispatch(link, name.decode("utf-8", "replace"), body)
            elif kind in (b"subscribe", b"ssubscribe"):
                self._subscribed(link, name.decode("utf-8", "replace"))
            elif kind == b"sunsubscribe":
                self._unsubscribed(link, name.decode("utf-8", "replace"))

    def _unsubscribed(self, link: _Link, name: str) -> None:
        """A shard dropped a channel we still want: its slot moved (failover, resharding)."""
        with self._lock:
            channel = self._channels.get(name)
            if channel is None or not channel.subscribers or channel.node != link.node:
                return
        logger.warning("Redis %s dropped shard channel %r; finding its new owner", link.node, name)
        # The shard knows it no longer owns the slot before every node does: a
        # topology read from a slower node may still name it, and a demoted
        # master accepts SSUBSCRIBE but delivers nothing. So ask until another
        # owner is named (bounded: past it, subscribe where the cluster says).
        deadline = time.monotonic() + OWNER_WAIT
        while True:
            try:
                node = self._owners([name]).get(name, link.node)
            except RedisError as error:  # anything else drops the link, which then reroutes
                logger.warning("Cannot find the new owner of %r yet (%s)", name, error)
                node = link.node
            if node != link.node or time.monotonic() >= deadline:
                break
            time.sleep(OWNER_POLL)
        with self._lock:
            if name in self._channels:
                self._move(name, node)

    def _subscribed(self, link: _Link, name: str) -> None:
        """Redis confirmed a SUBSCRIBE: learn the channel's position, or catch up."""
        with self._lock:
            channel = self._channels.get(name)
            if channel is None or channel.node != link.node:
                return
            channel.pending -= 1
            if channel.pending > 0:
                return
            if not channel.subscribers:
                self._forget(name)
                return
            since = channel.last
        if since is None:
            channel.last = self._history.newest(name)
        else:
            self._replay(name, channel, since)
        channel.ready.set()

    def _replay(self, name: str, channel: _Channel, since: Position) -> None:
        """Dispatch what history holds after ``since``: published while we were away."""
        events, gap = self._history.after(name, since)
        if gap:
            logger.warning(
                "History of channel %r no longer holds all it missed after %s-%s", name, *since
            )
            self._fan_out(channel, Delivery.reset(name))
        for _, payload in events:
            delivery = Delivery.decode(name, payload)
            if delivery is not None:
                self._fan_out(channel, delivery)
        if events:
            channel.last = channel.replayed_to = events[-1][0]
            logger.info("Replayed %d events of channel %r from history", len(events), name)

    def _dispatch(self, link: _Link, name: str, payload: bytes) -> None:
        channel = self._channels.get(name)
        if channel is None or not channel.subscribers or channel.node != link.node:
            return
        delivery = Delivery.decode(name, payload)
        if delivery is None:
            return
        position = delivery.position
        if position is not None:
            if channel.replayed_to is not None:
                if position <= channel.replayed_to:
                    return  # replayed from history already
                channel.replayed_to = None
            channel.last = position
        self._fan_out(channel, delivery)

    def _fan_out(self, channel: _Channel, delivery: Delivery) -> None:
        fanout = channel.fanout
        if fanout is None:
            with self._lock:
                fanout = channel.fanout = tuple(channel.subscribers)
        for subscription in fanout:
            subscription.deliver(delivery)

    def _maintain(self) -> None:
        """Wake subscriptions that are due; PING each link; report the counts."""
        next_ping = time.monotonic() + PING_INTERVAL
        next_report = last_report = 0.0
        while True:
            time.sleep(TICK)
            now = time.monotonic()
            stopping = self._stopping
            for subscription in tuple(self._subscriptions):
                if stopping:
                    subscription.closing = True
                    subscription.wake()
                elif subscription.due <= now:
                    subscription.wake()
            if now >= next_ping:
                next_ping = now + PING_INTERVAL
                with self._lock:
                    for link in self._links.values():
                        self._send(link, link.connection, "PING")
            if now >= next_report or (self._presence_changed and now >= last_report + SOON):
                last_report, next_report = now, now + REFRESH
                self._report_presence()

    def _report_presence(self) -> None:
        with self._lock:
            self._presence_changed = False
            counts = {
                name: len(channel.subscribers)
                for name, channel in self._channels.items()
                if channel.subscribers
            }
        try:
            self._presence.report(counts)
        except RedisError as error:
            logger.info("Could not report subscriber counts (%s)", error)


def _end_streams_on_sigterm(hub: Hub) -> None:
    """On SIGTERM, end the hub's streams at once, then let the server's handler run.

    ``gunicorn`` stops a worker gracefully with SIGTERM (also the old workers
    of a ``HUP``), then waits up to its graceful timeout for requests to
    finish: open streams never would. Ending them cleanly (a complete
    response, no half event) lets the worker exit within a second or two, and
    browsers reconnect elsewhere and resume. Only where a Python handler is
    installed (the server's own), and only from the main thread.
    """
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return

    def end_streams(signum: int, frame: Any) -> None:
        hub.shutdown()
        previous(signum, frame)

    try:
        signal.signal(signal.SIGTERM, end_streams)
    except ValueError:  # not the main thread (the threaded dev server): leave signals alone
        pass

"""The per-process fan-out: ONE Redis pub/sub connection for every client.

A reader thread owns the pub/sub connection. It decodes and encodes each
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

from redis.backoff import NoBackoff
from redis.connection import ConnectionPool
from redis.exceptions import RedisError
from redis.retry import Retry

from .history import ORIGIN, History, Position, parse_position
from .message import Message
from .presence import REFRESH, SOON, Presence

logger = logging.getLogger("flask_sse")

#: Seconds between PINGs on the pub/sub connection; three missed answers and
#: the link is declared dead (a cut network sends no RST).
PING_INTERVAL = 5.0
#: Seconds between looks for subscriptions whose ``due`` time has passed.
TICK = 0.25
#: Reconnection backoff: first wait and cap, in seconds (with jitter).
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

    __slots__ = ("subscribers", "fanout", "pending", "ready", "last", "replayed_to")

    def __init__(self) -> None:
        #: local subscribers (a dict used as an ordered set)
        self.subscribers: dict[Subscription, None] = {}
        #: tuple snapshot of the subscribers for the reader, rebuilt after a change
        self.fanout: tuple[Subscription, ...] | None = None
        #: SUBSCRIBE commands sent on this connection and not yet confirmed
        self.pending = 0
        #: set once Redis has confirmed the subscription and history is caught up
        self.ready = threading.Event()
        #: the newest history position dispatched (None: not known yet)
        self.last: Position | None = None
        #: after a replay, live copies up to here are skipped
        self.replayed_to: Position | None = None


class Hub:
    """Fan-out of one Redis server's pub/sub to the subscribers of this process."""

    def __init__(
        self,
        pool: ConnectionPool,
        history: History,
        presence: Presence,
        *,
        subscribe_timeout: float = 5.0,
    ) -> None:
        self._pool = pool
        self._history = history
        self._presence = presence
        self._presence_changed = False
        self._subscribe_timeout = subscribe_timeout
        self._lock = threading.Lock()
        self._attempt_finished = threading.Condition(self._lock)
        self._connection: Any = None
        self._attempts = 0
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
            self._attempt_finished.wait_for(
                lambda: self._connection is not None or self._attempts > 0,
                timeout=self._subscribe_timeout,
            )
            if self._connection is None:
                raise HubUnavailable("Redis is unreachable; see the log for why")
            self._subscriptions[subscription] = None
            to_subscribe = []
            for name in subscription.channels:
                channel = self._channels.get(name)
                if channel is None:
                    channel = self._channels[name] = _Channel()
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
            vacated = []
            for name in subscription.channels:
                channel = self._channels.get(name)
                if channel is None or subscription not in channel.subscribers:
                    continue
                del channel.subscribers[subscription]
                channel.fanout = None
                if not channel.subscribers:
                    vacated.append(name)
                    channel.last = channel.replayed_to = None
                    if not channel.pending:
                        del self._channels[name]
            if vacated:
                self._send(self._connection, "UNSUBSCRIBE", *vacated)
        return vacated

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

    # -- the connection, under _lock -----------------------------------------

    def _start(self) -> None:
        if not self._started:
            self._started = True
            threading.Thread(target=self._run, name="flask-sse-hub", daemon=True).start()
            threading.Thread(target=self._maintain, name="flask-sse-tick", daemon=True).start()
            _end_streams_on_sigterm(self)

    def _send_subscribe(self, names: list[str]) -> None:
        if not names:
            return
        for name in names:
            channel = self._channels[name]
            channel.pending += 1
            if channel.ready.is_set():
                channel.ready = threading.Event()
        self._send(self._connection, "SUBSCRIBE", *names)

    def _send(self, connection: Any, *command: str) -> None:
        if connection is None or connection is not self._connection:
            return
        try:
            connection.send_command(*command, check_health=False)
        except Exception as error:  # noqa: BLE001 - any failure means the link is gone
            logger.warning("Redis pub/sub send failed (%s); reconnecting", error)
            self._connection = None
            connection.disconnect()

    # -- the reader thread ---------------------------------------------------

    def _run(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            try:
                connection = self._connect()
            except Exception as error:  # noqa: BLE001 - retried with backoff
                with self._lock:
                    self._attempts += 1
                    self._attempt_finished.notify_all()
                logger.warning("Cannot reach Redis for pub/sub (%s); retrying", error)
                time.sleep(backoff * self._jitter.uniform(0.5, 1.0))
                backoff = min(backoff * 2, BACKOFF_CAP)
                continue
            backoff = BACKOFF_FIRST
            try:
                self._read(connection)
            except Exception as error:  # noqa: BLE001 - the link is gone; reconnect
                logger.warning("Redis pub/sub connection lost (%s); reconnecting", error)
            finally:
                with self._lock:
                    if self._connection is connection:
                        self._connection = None
                connection.disconnect()

    def _connect(self) -> Any:
        pool = self._pool
        connection = pool.connection_class(
            **{
                **pool.connection_kwargs,
                "socket_timeout": PING_INTERVAL * 3,
                "retry": Retry(NoBackoff(), 0),
            }
        )
        connection.connect()
        with self._lock:
            self._connection = connection
            self._attempts += 1
            for name, channel in list(self._channels.items()):
                channel.pending = 0
                if not channel.subscribers:
                    channel.ready.set()
                    del self._channels[name]
            self._send_subscribe(list(self._channels))
            self._attempt_finished.notify_all()
        return connection

    def _read(self, connection: Any) -> None:
        while self._connection is connection:
            reply = connection.read_response(disconnect_on_error=False, push_request=True)
            if not isinstance(reply, list) or len(reply) != 3:
                continue  # a PONG
            kind, name, body = reply
            if kind == b"message":
                self._dispatch(name.decode("utf-8", "replace"), body)
            elif kind == b"subscribe":
                self._subscribed(name.decode("utf-8", "replace"))

    def _subscribed(self, name: str) -> None:
        """Redis confirmed a SUBSCRIBE: learn the channel's position, or catch up."""
        with self._lock:
            channel = self._channels.get(name)
            if channel is None:
                return
            channel.pending -= 1
            if channel.pending > 0:
                return
            if not channel.subscribers:
                del self._channels[name]
                channel.ready.set()
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
            logger.warning("History of channel %r no longer holds all it missed", name)
            self._fan_out(channel, Delivery.reset(name))
        for _, payload in events:
            delivery = Delivery.decode(name, payload)
            if delivery is not None:
                self._fan_out(channel, delivery)
        if events:
            channel.last = channel.replayed_to = events[-1][0]
            logger.info("Replayed %d events of channel %r from history", len(events), name)

    def _dispatch(self, name: str, payload: bytes) -> None:
        channel = self._channels.get(name)
        if channel is None or not channel.subscribers:
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
        """Wake subscriptions that are due; PING Redis; report the counts."""
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
                    self._send(self._connection, "PING")
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

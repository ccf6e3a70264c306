"""The per-process fan-out: ONE Redis pub/sub connection for every client.

A reader thread owns the pub/sub connection. It decodes and encodes each
message once and hands the same ``bytes`` to every local subscriber's bounded
queue. Channels are subscribed on Redis when their first local subscriber
arrives and unsubscribed after the last one leaves (reference counts), so
Redis holds no per-client state.

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
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from redis.backoff import NoBackoff
from redis.connection import ConnectionPool
from redis.retry import Retry

from .message import Message

logger = logging.getLogger("flask_sse")

#: Seconds between PINGs on the pub/sub connection; three missed answers and
#: the link is declared dead (a cut network sends no RST).
PING_INTERVAL = 5.0
#: Reconnection backoff: first wait and cap, in seconds (with jitter).
BACKOFF_FIRST = 0.05
BACKOFF_CAP = 2.0


class HubUnavailable(Exception):
    """Redis cannot be reached, so no stream can be subscribed now."""


class Subscription:
    """One client's end of the hub: a bounded queue of encoded events.

    The hub thread calls :meth:`deliver`; the client's own thread (its
    greenlet, under gevent) calls :meth:`wait`. A client that falls
    ``limit`` chunks behind is marked ``overflowed``, stops receiving, and
    ``on_overflow`` is called so its connection can be closed: memory stays
    bounded and the other clients are not held up.
    """

    __slots__ = ("channels", "overflowed", "on_overflow", "_chunks", "_limit", "_wakeup")

    def __init__(self, channels: tuple[str, ...], limit: int) -> None:
        self.channels = channels
        self.overflowed = False
        self.on_overflow: Callable[[], None] | None = None
        self._chunks: deque[bytes] = deque()
        self._limit = limit
        self._wakeup = threading.Event()

    def deliver(self, chunk: bytes) -> None:
        if self.overflowed:
            return
        if len(self._chunks) >= self._limit:
            self.overflowed = True
            self._wakeup.set()
            if self.on_overflow is not None:
                self.on_overflow()
            return
        self._chunks.append(chunk)
        self._wakeup.set()

    def wait(self, timeout: float) -> bytes:
        """All queued events joined in one chunk; ``b""`` if none came in ``timeout``."""
        chunks = self._chunks
        if not chunks:
            self._wakeup.clear()
            if not chunks:  # checked again: a delivery may have come before clear()
                self._wakeup.wait(timeout)
        count = len(chunks)
        if count == 1:
            return chunks.popleft()
        return b"".join([chunks.popleft() for _ in range(count)])


class Hub:
    """Fan-out of one Redis server's pub/sub to the subscribers of this process."""

    def __init__(self, pool: ConnectionPool, *, subscribe_timeout: float = 5.0) -> None:
        self._pool = pool
        self._subscribe_timeout = subscribe_timeout
        self._lock = threading.Lock()
        self._attempt_finished = threading.Condition(self._lock)
        self._connection: Any = None
        self._attempts = 0
        self._started = False
        #: channel -> its subscribers (a dict used as an ordered set)
        self._subscribers: dict[str, dict[Subscription, None]] = {}
        #: channel -> tuple snapshot of its subscribers, rebuilt after a change
        self._fanout: dict[str, tuple[Subscription, ...]] = {}
        #: channel -> SUBSCRIBE commands sent on this connection and not yet answered
        self._pending: dict[str, int] = {}
        #: channel -> set once Redis has confirmed the subscription
        self._ready: dict[str, threading.Event] = {}

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
            new_channels = []
            for channel in subscription.channels:
                subscribers = self._subscribers.setdefault(channel, {})
                if not subscribers:
                    new_channels.append(channel)
                subscribers[subscription] = None
                self._fanout.pop(channel, None)
            if new_channels:
                self._send_subscribe(new_channels)
            waits = [self._ready[channel] for channel in subscription.channels]
        for ready in waits:
            if not ready.wait(max(0.0, deadline - time.monotonic())):
                self.unsubscribe(subscription)
                raise HubUnavailable("Redis did not confirm the subscription in time")
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Release a subscriber; a channel nobody here listens to is unsubscribed."""
        with self._lock:
            vacated = []
            for channel in subscription.channels:
                subscribers = self._subscribers.get(channel)
                if subscribers is None or subscription not in subscribers:
                    continue
                del subscribers[subscription]
                self._fanout.pop(channel, None)
                if not subscribers:
                    del self._subscribers[channel]
                    if not self._pending.get(channel):
                        self._ready.pop(channel, None)
                    vacated.append(channel)
            if vacated:
                self._send(self._connection, "UNSUBSCRIBE", *vacated)

    @property
    def connected(self) -> bool:
        return self._connection is not None

    def local_subscribers(self, channel: str) -> int:
        """How many clients of this process are subscribed to ``channel``."""
        return len(self._subscribers.get(channel, ()))

    def channels(self) -> list[str]:
        """Channels with at least one subscriber in this process."""
        with self._lock:
            return list(self._subscribers)

    # -- the connection, under _lock -----------------------------------------

    def _start(self) -> None:
        if not self._started:
            self._started = True
            threading.Thread(target=self._run, name="flask-sse-hub", daemon=True).start()
            threading.Thread(target=self._ping, name="flask-sse-ping", daemon=True).start()

    def _send_subscribe(self, channels: list[str]) -> None:
        for channel in channels:
            self._pending[channel] = self._pending.get(channel, 0) + 1
            ready = self._ready.get(channel)
            if ready is None or ready.is_set():
                self._ready[channel] = threading.Event()
        self._send(self._connection, "SUBSCRIBE", *channels)

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
                time.sleep(backoff * random.uniform(0.5, 1.0))
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
            self._pending.clear()
            if self._subscribers:
                self._send_subscribe(list(self._subscribers))
            self._attempt_finished.notify_all()
        return connection

    def _read(self, connection: Any) -> None:
        while self._connection is connection:
            reply = connection.read_response(disconnect_on_error=False, push_request=True)
            if not isinstance(reply, list) or len(reply) != 3:
                continue  # a PONG
            kind, channel, body = reply
            if kind == b"message":
                self._dispatch(channel.decode("utf-8", "replace"), body)
            elif kind == b"subscribe":
                self._confirmed(channel.decode("utf-8", "replace"))

    def _confirmed(self, channel: str) -> None:
        with self._lock:
            left = self._pending.get(channel, 0) - 1
            if left > 0:
                self._pending[channel] = left
                return
            self._pending.pop(channel, None)
            ready = self._ready.get(channel)
            if ready is not None:
                ready.set()
                if channel not in self._subscribers:
                    del self._ready[channel]

    def _dispatch(self, channel: str, body: bytes) -> None:
        fanout = self._fanout.get(channel)
        if fanout is None:
            with self._lock:
                subscribers = self._subscribers.get(channel)
                if not subscribers:
                    return
                fanout = self._fanout[channel] = tuple(subscribers)
        try:
            message = Message.from_payload(body)
            if message is None:
                return
            chunk = message.encode()
        except Exception:  # noqa: BLE001 - one bad message must not stop the hub
            logger.exception("Skipped a message on channel %r that cannot be encoded", channel)
            return
        for subscription in fanout:
            subscription.deliver(chunk)

    def _ping(self) -> None:
        while True:
            time.sleep(PING_INTERVAL)
            with self._lock:
                self._send(self._connection, "PING")

"""The live part of one stream: what each wake-up writes, and when to wake next.

A live stream writes each event once and in order (:func:`render` skips
what the client has and keeps its positions), a keepalive after
``SSE_KEEPALIVE`` of silence, and its end: the client gone (noticed at once
when it closes its connection, ``hangups.py``), ``SSE_MAX_AGE``, or a
shutdown (with a ``retry:`` when draining). :class:`LiveStream` is driven by
the stream's body while its request serves it (``stream.py``), or by a
parked stream once the request has handed it over (``handover.py``).
"""

from __future__ import annotations

import math
import time

from . import metrics
from .config import SSEConfig
from .delivery import Delivery
from .event_ids import format_last_event_id
from .hangups import HangUps, Watch
from .history import Position
from .refusal import jittered
from .subscription import CloseReason, Subscription
from .transport import DirectWriter, Transport

#: Sent after ``SSE_KEEPALIVE`` seconds of silence: a comment, ignored by
#: ``EventSource``, that keeps proxies from closing an idle connection.
KEEPALIVE = b":\n\n"
#: Seconds a stream may hold the count of the events it wrote before adding it.
COUNT_EVERY = 1.0
#: Seconds between looks at whether the client left, where the server can only
#: be asked (waitress), not the client's socket watched (``hangups.py``).
ASK_EVERY = 1.0


def render(
    deliveries: list[Delivery], channels: tuple[str, ...], positions: dict[str, Position]
) -> tuple[bytes, int]:
    """Write each event once: skip what the client has, keep its positions current.

    Returns the chunk and how many events it holds.
    """
    several = len(channels) > 1
    parts = []
    for delivery in deliveries:
        position = delivery.position
        if position is None:  # not from history: a reset, or a raw PUBLISH
            if delivery.baseline is not None:  # history was lost: start again from its newest
                positions[delivery.channel] = delivery.baseline
                last_event_id = format_last_event_id(channels, positions).encode()
                parts.append(delivery.body() + b"id:" + last_event_id + b"\n\n")
            else:  # sent without id
                parts.append(delivery.body() + b"\n")
            continue
        if position <= positions[delivery.channel]:
            continue
        positions[delivery.channel] = position
        if several:
            last_event_id = format_last_event_id(channels, positions).encode()
            parts.append(delivery.body() + b"id:" + last_event_id + b"\n\n")
        else:
            parts.append(delivery.chunk)
    return b"".join(parts), len(parts)


class LiveStream:
    """The live part of one stream: what each wake-up writes, and when to wake next.

    Driven by the stream's body while the server's request serves it, or by
    :class:`~flask_sse.handover.ParkedStream` once the request has handed the
    stream over. Either way, one caller at a time.

    Timing: the stream asks to be woken for its next keepalive (after
    ``SSE_KEEPALIVE`` of silence), its next look at whether the client is
    still there (every ``SSE_KEEPALIVE``, however busy the channel), and its
    ``SSE_MAX_AGE``, whichever comes first. A client that closes its
    connection ends the stream at once (``hangups.py``), or within
    ``ASK_EVERY`` where the server gives no socket to watch (waitress).
    """

    __slots__ = ("subscription", "direct", "_history", "_positions", "_transport", "_keepalive",
                 "_drain_retry", "_deadline", "_last_write", "_next_check", "_uncounted",
                 "_counted_at", "_check_every", "_hang_ups", "_watch")

    def __init__(
        self, subscription: Subscription, config: SSEConfig, history: bool,
        positions: dict[str, Position], transport: Transport, yielded: int, hang_ups: HangUps,
    ) -> None:
        self.subscription = subscription
        self._history = history
        self._positions = positions
        self._transport = transport
        self._keepalive = config.keepalive
        #: the ``retry:`` to send when a drain ends the stream (``None``: no drain)
        self._drain_retry = config.retry if config.drain_seconds else None
        now = time.monotonic()
        self._deadline = now + config.max_age if config.max_age else math.inf
        self._check_every = (
            min(config.keepalive, ASK_EVERY) if transport.only_asked else config.keepalive
        )
        self._last_write, self._next_check = now, now + self._check_every
        # Events written but not yet counted: a busy stream writes chunks of one or
        # two events thousands of times a second, and each update of a metric costs
        # about what a delivery does, so the count is added at most once a second
        # (and before a keepalive, and when the stream ends).
        self._uncounted, self._counted_at = 0, now
        if not config.tcp_nodelay:
            transport.merge_small_writes()
        self.direct: DirectWriter | None = None
        if config.direct_write:
            self.direct = transport.direct_writer(subscription, history, positions, yielded)
        subscription.write_directly_with(None if self.direct is None else self.direct.write)
        self._hang_ups = hang_ups
        self._watch: Watch | None = None
        self.watch_client()

    def watch_client(self) -> None:
        """End the stream as soon as the client closes its connection.

        Called again once the stream has a socket of its own (``handover.py``).
        """
        self._stop_watching()
        client = self._transport.client
        if client is not None:
            self._watch = self._hang_ups.watch(client, self._readable)

    def _readable(self) -> None:
        """The client's connection turned readable (from the event loop or the hub's thread).

        Closed: the stream ends now. Bytes no ``EventSource`` sends: the
        watch ends, and the stream's look every ``SSE_KEEPALIVE`` remains.
        """
        self._stop_watching()
        if self._transport.client_gone():
            self.subscription.end(CloseReason.CLIENT_GONE)

    def _stop_watching(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.close()

    def next_wake(self) -> float:
        return min(self._last_write + self._keepalive, self._next_check, self._deadline)

    def turn(self, deliveries: list[Delivery]) -> tuple[bytes, bool]:
        """What to write after a wake-up that brought ``deliveries``; True: end after it."""
        subscription = self.subscription
        direct = self.direct
        if direct is not None and not direct.flush():
            return b"", True  # the client is gone (the default reason)
        if subscription.ended:
            if subscription.end_reason is CloseReason.SHUTDOWN and self._drain_retry is not None:
                return f"retry:{jittered(self._drain_retry)}\n\n".encode(), True
            return b"", True
        chunk = b""
        if deliveries:
            if self._history:
                chunk, count = render(deliveries, subscription.channels, self._positions)
            else:
                chunk = b"".join([delivery.chunk for delivery in deliveries])
                count = len(deliveries)
            if chunk:
                self._uncounted += count
                self._last_write = time.monotonic()
        now = time.monotonic()
        if self._uncounted and now - self._counted_at >= COUNT_EVERY:
            self._count(now)
        if now >= self._deadline:
            subscription.end(CloseReason.MAX_AGE)
            return chunk, True  # also on a busy stream; what is queued resumes from history
        if now >= self._next_check:
            if self._transport.client_gone():
                return chunk, True
            self._next_check = now + self._check_every
        if direct is not None:
            self._last_write = max(self._last_write, direct.last_write)
        if now - self._last_write >= self._keepalive:
            self._count(now)
            self._last_write = now
            return chunk + KEEPALIVE, False
        return chunk, False

    def finish(self) -> None:
        """The stream has ended: no more direct writes or watching, and its last events counted.

        Before its socket is closed: a watch must not outlive its socket.
        """
        self.subscription.write_directly_with(None)
        self._stop_watching()
        self._count(time.monotonic())

    def _count(self, now: float) -> None:
        if self._uncounted:
            metrics.written(self._uncounted)
        self._uncounted, self._counted_at = 0, now

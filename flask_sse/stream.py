"""One client's stream: the opening lines, resume from history, live events.

Ids: with history on, the ``id`` of every event is a history position, one
per channel (``event_ids.py``), so whatever id a browser sends back in
``Last-Event-ID`` says where to resume. The first lines already carry the
current positions, so even a browser that has received no event yet resumes
from where it connected.

The seam: the subscription is taken before history is read, so an event
published meanwhile is both in history and in the live queue; positions make
sure each is written exactly once, in order.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Generator

import redis

from . import handover, metrics, registry
from .config import SSEConfig
from .delivery import Delivery, from_history
from .event_ids import format_last_event_id
from .hangups import HangUps, Watch
from .history import History, Position
from .hub import Hub
from .refusal import jittered
from .subscription import CloseReason, Subscription
from .transport import DirectWriter, Transport

logger = logging.getLogger("flask_sse")

#: Sent after ``SSE_KEEPALIVE`` seconds of silence: a comment, ignored by
#: ``EventSource``, that keeps proxies from closing an idle connection.
KEEPALIVE = b":\n\n"
#: Seconds a stream may hold the count of the events it wrote before adding it.
COUNT_EVERY = 1.0
#: Seconds between looks at whether the client left, where the server can only
#: be asked (waitress), not the client's socket watched (``hangups.py``).
ASK_EVERY = 1.0


def open_stream(
    hub: Hub,
    config: SSEConfig,
    channels: tuple[str, ...],
    resume: dict[str, Position] | None,
    transport: Transport,
) -> tuple[Subscription, tuple[str, ...], Generator[bytes, None, None]]:
    """Subscribe ``channels`` on ``hub`` (the app's, from the registry) and make the body.

    ``resume``: the positions of a ``Last-Event-ID`` to replay after, or
    ``None`` to start from now. Returns the subscription, the channels it
    brought to this process, and the body. Raises
    :class:`~flask_sse.hub.HubUnavailable` when Redis cannot be reached.
    The caller unsubscribes when the body is done.
    """
    if config.end_streams_on_sigterm:
        registry.end_streams_on_sigterm(config.drain_seconds)
    subscription, occupied, history, positions = _subscribe(
        hub, config, channels, resume, transport.hang_up
    )
    resuming = resume is not None
    body = event_stream(
        subscription, config, history, positions, resuming, transport, hub.hang_ups
    )
    return subscription, occupied, body


def listen(
    config: SSEConfig, channels: tuple[str, ...], resume: dict[str, Position] | None
) -> tuple[Hub, Subscription, str | None, Generator[tuple[str, bytes], None, None]]:
    """Subscribe ``channels`` for a reader in this process (``flask sse listen``).

    Returns the hub, the subscription, the id a client would resume from now
    (``None`` without history), and the events as ``(channel, wire form)``:
    the same events, each once and in the same order, as a stream's body,
    without its keepalives. The caller unsubscribes when done.
    """
    hub = registry.hub_for(config.redis_url, config.namespace)
    subscription, _, history, positions = _subscribe(hub, config, channels, resume, None)
    opening = None if history is None else format_last_event_id(channels, positions)
    events = channel_events(subscription, config.keepalive, history, positions, resume is not None)
    return hub, subscription, opening, events


def _subscribe(
    hub: Hub,
    config: SSEConfig,
    channels: tuple[str, ...],
    resume: dict[str, Position] | None,
    on_overflow: Callable[[], None] | None,
) -> tuple[Subscription, tuple[str, ...], History | None, dict[str, Position]]:
    """Subscribe first, then take the positions: the seam described above."""
    subscription, occupied = hub.subscribe(channels, config.queue_size, on_overflow)
    history = registry.history_for(config.redis_url, config.namespace) if config.history else None
    positions = {**hub.positions(channels), **(resume or {})}  # from now unless resumed
    return subscription, occupied, history, positions


def event_stream(
    subscription: Subscription,
    config: SSEConfig,
    history: History | None,
    positions: dict[str, Position],
    resume: bool,
    transport: Transport,
    hang_ups: HangUps,
) -> Generator[bytes, None, None]:
    """The body of one stream.

    ``history`` is ``None`` when ``SSE_HISTORY`` is 0: ids then pass through
    as publishers gave them. ``resume`` replays what history holds after
    ``positions`` before going live (see :class:`LiveStream`). ``hang_ups``
    (the hub's) watches the client's connection once the stream is live.
    """
    channels = subscription.channels
    opening = f"retry:{config.retry}\n"
    if history is not None:
        opening += f"id:{format_last_event_id(channels, positions)}\n"
    first = (opening + "\n").encode()
    yielded = len(first)
    yield first
    if history is not None and resume:
        try:
            backlog = _backlog(history, channels, positions)
        except redis.RedisError as error:
            logger.warning("Cannot read history to resume a stream (%s); ending it", error)
            return
        chunk, count = _render(backlog, channels, positions)
        if chunk:
            yielded += len(chunk)
            yield chunk
            metrics.written(count)
        # a backlog's only deliveries without a position are its resets
        resets = sum(1 for delivery in backlog if delivery.position is None)
        metrics.resumed(count - resets, resets)
    live = LiveStream(
        subscription, config, history is not None, positions, transport, yielded, hang_ups
    )
    if handover.hand_over(live, transport, yielded):
        return  # the hub's side writes to the client from now on
    try:
        while True:
            subscription.wake_at(live.next_wake())
            chunk, done = live.turn(subscription.wait())
            if chunk:
                yield chunk
            if done:
                return
    finally:
        live.finish()


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
                chunk, count = _render(deliveries, subscription.channels, self._positions)
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


def channel_events(
    subscription: Subscription,
    wake_every: float,
    history: History | None,
    positions: dict[str, Position],
    resume: bool,
) -> Generator[tuple[str, bytes], None, None]:
    """Each event's channel and wire form, as :func:`listen` describes.

    Wakes every ``wake_every`` seconds to see whether the subscription ended.
    """
    channels = subscription.channels
    pending = _backlog(history, channels, positions) if history is not None and resume else []
    while True:
        for delivery in pending:
            if history is None:
                chunk = delivery.chunk
            else:
                chunk, _ = _render([delivery], channels, positions)
            if chunk:
                yield delivery.channel, chunk
        if subscription.ended:
            return
        subscription.wake_at(time.monotonic() + wake_every)
        pending = subscription.wait()


def _backlog(
    history: History, channels: tuple[str, ...], positions: dict[str, Position]
) -> list[Delivery]:
    """What history holds after each channel's position, oldest first."""
    backlog: list[tuple[Position, Delivery]] = []
    for channel in channels:
        since = positions[channel]
        backlog += from_history(channel, since, *history.after(channel, since))
    backlog.sort(key=lambda item: item[0])
    return [delivery for _, delivery in backlog]


def _render(
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

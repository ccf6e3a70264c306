"""One client's stream: the opening lines, resume from history, then live (``live.py``).

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
import time
from collections.abc import Callable, Generator

import redis

from . import handover, metrics, registry
from .config import SSEConfig
from .delivery import Delivery, from_history
from .event_ids import format_last_event_id
from .hangups import HangUps
from .history import History, Position
from .hub import Hub
from .live import LiveStream, render
from .subscription import Subscription
from .transport import Transport

logger = logging.getLogger("flask_sse")


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
        chunk, count = render(backlog, channels, positions)
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
                chunk, _ = render([delivery], channels, positions)
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


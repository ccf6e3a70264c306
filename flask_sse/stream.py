"""One client's stream: the opening lines, resume from history, live events.

Ids: with history on, the ``id`` of every event is a history position, so
whatever id a browser sends back in ``Last-Event-ID`` says where to resume.
A stream on several channels sends one position per channel, comma-separated
in the order of its ``channel`` parameters (``"1700000000000-0,0-0"``): short,
bounded by ``SSE_MAX_CHANNELS``, and enough to resume every channel. The
first lines already carry the current positions, so even a browser that has
received no event yet resumes from where it connected.

The seam: the subscription is taken before history is read, so an event
published meanwhile is both in history and in the live queue; positions make
sure each is written exactly once, in order.
"""

from __future__ import annotations

import logging
import math
import os
import select
import socket
import ssl
import time
from collections.abc import Generator
from typing import Any

import redis

from .broker import history_for, hub_for
from .config import SSEConfig
from .history import History, Position, format_position, parse_position
from .hub import Delivery, Hub, Subscription

logger = logging.getLogger("flask_sse")

#: Sent after ``SSE_KEEPALIVE`` seconds of silence: a comment, ignored by
#: ``EventSource``, that keeps proxies from closing an idle connection.
KEEPALIVE = b":\n\n"
#: Longest text one channel's position takes in an id.
_POSITION_LENGTH = 41


def parse_last_event_id(text: str, channels: tuple[str, ...]) -> dict[str, Position]:
    """The per-channel positions of a ``Last-Event-ID``; ``ValueError`` says what is wrong."""
    if len(text) > _POSITION_LENGTH * len(channels):
        raise ValueError(
            f"Last-Event-ID is {len(text)} characters long: longer than any id this stream sends."
        )
    parts = text.split(",")
    if len(parts) != len(channels):
        raise ValueError(
            f"Last-Event-ID has {len(parts)} positions but the stream has {len(channels)} "
            "channels: resume with the same channel parameters, in the same order."
        )
    positions = {}
    for channel, part in zip(channels, parts, strict=True):
        position = parse_position(part)
        if position is None:
            raise ValueError(
                f"Last-Event-ID {text[:100]!r} is not an id this stream sent: expected "
                "'<milliseconds>-<sequence>' for each channel, separated by commas."
            )
        positions[channel] = position
    return positions


def format_last_event_id(channels: tuple[str, ...], positions: dict[str, Position]) -> str:
    return ",".join(format_position(positions[channel]) for channel in channels)


def open_stream(
    config: SSEConfig,
    channels: tuple[str, ...],
    resume: dict[str, Position] | None,
    client: Any = None,
    chunked: bool = False,
) -> tuple[Hub, Subscription, Generator[bytes, None, None]]:
    """Subscribe ``channels`` on this process's hub and make the stream's body.

    ``resume``: the positions of a ``Last-Event-ID`` to replay after, or
    ``None`` to start from now. Raises :class:`HubUnavailable` when Redis
    cannot be reached. The caller unsubscribes when the body is done.
    """
    hub = hub_for(config.redis_url)
    subscription = hub.subscribe(channels, config.queue_size)
    history = history_for(config.redis_url) if config.history else None
    positions = resume or hub.positions(channels)
    resuming = resume is not None
    body = event_stream(subscription, config, history, positions, resuming, client, chunked)
    return hub, subscription, body


def event_stream(
    subscription: Subscription,
    config: SSEConfig,
    history: History | None,
    positions: dict[str, Position],
    resume: bool,
    client: Any,
    chunked: bool = False,
) -> Generator[bytes, None, None]:
    """The body of one stream.

    ``history`` is ``None`` when ``SSE_HISTORY`` is 0: ids then pass through
    as publishers gave them. ``resume`` replays what history holds after
    ``positions`` before going live. ``client`` is the socket, when the
    server exposes it, to notice a client that left; ``chunked`` says the
    server frames this response as HTTP/1.1 chunks on that socket, which lets
    the hub write events straight to it (see :class:`DirectWriter`).
    """
    channels = subscription.channels
    opening = f"retry:{config.retry}\n"
    if history is not None:
        opening += f"id:{format_last_event_id(channels, positions)}\n"
    yield (opening + "\n").encode()
    if history is not None and resume:
        try:
            backlog = _backlog(history, channels, positions)
        except redis.RedisError as error:
            logger.warning("Cannot read history to resume a stream (%s); ending it", error)
            return
        if backlog:
            yield _render(backlog, channels, positions)
    keepalive = config.keepalive
    deadline = time.monotonic() + config.max_age if config.max_age else math.inf
    subscription.due = min(time.monotonic() + keepalive, deadline)
    direct = DirectWriter.for_stream(
        subscription, client, chunked, history is not None, positions, keepalive, deadline
    )
    subscription.fast_write = direct
    try:
        while True:
            deliveries = subscription.wait()
            if direct is not None and not direct.flush(client):
                return  # the client is gone (the default reason)
            if subscription.closing:
                subscription.end_reason = "shutdown"
                return
            if subscription.overflowed:
                subscription.end_reason = "slow"
                return
            now = time.monotonic()
            if deliveries:
                if history is None:
                    yield b"".join([delivery.chunk for delivery in deliveries])
                else:
                    chunk = _render(deliveries, channels, positions)
                    if chunk:
                        yield chunk
            elif now < subscription.due:
                continue  # woken early: the hub wrote directly meanwhile
            if now >= deadline:
                subscription.end_reason = "max age"
                return  # also on a busy stream; what is queued resumes from history
            if not deliveries:
                if client is not None and _client_gone(client):
                    return
                yield KEEPALIVE
            subscription.due = min(time.monotonic() + keepalive, deadline)
    finally:
        subscription.fast_write = None


class DirectWriter:
    """Writes an event straight to the client's socket, from the hub's thread.

    While a stream's own greenlet sleeps with nothing queued, the hub offers
    it each event: framed once as an HTTP chunk and shared by every client,
    it goes out in one non-blocking ``os.write``, without waking the stream's
    greenlet or passing through WSGI. That is what lets one worker fan out
    as fast as a bare gevent loop. Only under a server that frames the
    response as chunks on a non-blocking socket (``gunicorn -k gevent``);
    only single-channel streams (several channels need per-client ids).

    If the socket takes only part of the chunk, the rest is kept for the
    stream's greenlet, which is woken to send it before anything else; if it
    takes nothing, the event is queued as usual.
    """

    __slots__ = ("_subscription", "_fd", "_history", "_positions", "_channel", "_keepalive",
                 "_deadline", "remainder", "broken")

    def __init__(
        self, subscription: Subscription, fd: int, history: bool,
        positions: dict[str, Position], keepalive: float, deadline: float,
    ) -> None:
        self._subscription = subscription
        self._fd = fd
        self._history = history
        self._positions = positions
        self._channel = subscription.channels[0]
        self._keepalive = keepalive
        self._deadline = deadline
        self.remainder = b""
        self.broken = False

    @classmethod
    def for_stream(
        cls, subscription: Subscription, client: Any, chunked: bool, history: bool,
        positions: dict[str, Position], keepalive: float, deadline: float,
    ) -> DirectWriter | None:
        if client is None or not chunked or len(subscription.channels) != 1:
            return None
        try:
            fd = client.fileno()
            if os.get_blocking(fd) or isinstance(client, ssl.SSLSocket):
                return None
        except (OSError, ValueError):
            return None
        return cls(subscription, fd, history, positions, keepalive, deadline)

    def __call__(self, delivery: Delivery) -> bool:
        if self.remainder or self.broken:
            return False  # queued behind what the stream's greenlet has yet to send
        position = delivery.position
        if self._history:
            if position is None:
                return False  # rendered without id by the stream's own greenlet
            if position <= self._positions[self._channel]:
                return True  # the client has it
        framed = delivery.framed()
        try:
            sent = os.write(self._fd, framed)
        except BlockingIOError:
            return False
        except OSError:
            self.broken = True
            self._subscription.wake()
            return True
        if position is not None:
            self._positions[self._channel] = position
        self._subscription.due = min(delivery.created + self._keepalive, self._deadline)
        if sent < len(framed):
            self.remainder = framed[sent:]
            self._subscription.wake()
        return True

    def flush(self, client: Any) -> bool:
        """Send what the hub could not; False if the client is gone."""
        if self.remainder:
            try:
                client.sendall(self.remainder)
            except OSError:
                return False
            self.remainder = b""
        return not self.broken


def _backlog(
    history: History, channels: tuple[str, ...], positions: dict[str, Position]
) -> list[Delivery]:
    """What history holds after each channel's position, oldest first."""
    backlog: list[tuple[Position, Delivery]] = []
    for channel in channels:
        events, gap = history.after(channel, positions[channel])
        if gap:
            backlog.append((positions[channel], Delivery.reset(channel)))
        for position, payload in events:
            delivery = Delivery.decode(channel, payload)
            if delivery is not None:
                backlog.append((position, delivery))
    backlog.sort(key=lambda item: item[0])
    return [delivery for _, delivery in backlog]


def _render(
    deliveries: list[Delivery], channels: tuple[str, ...], positions: dict[str, Position]
) -> bytes:
    """Write each event once: skip what the client has, keep its positions current."""
    several = len(channels) > 1
    parts = []
    for delivery in deliveries:
        position = delivery.position
        if position is None:  # not from history (a reset, a raw PUBLISH): sent without id
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
    return b"".join(parts)


def _client_gone(client: socket.socket) -> bool:
    """True if the client closed its end; checked without reading its data."""
    try:
        readable, _, _ = select.select([client], [], [], 0)
        return bool(readable) and client.recv(1, socket.MSG_PEEK) == b""
    except ValueError:  # a TLS socket cannot peek: the next write will tell
        return False
    except OSError:
        return True


def hang_up(client: socket.socket) -> None:
    """Close a slow client's connection, even while a write to it is blocked."""
    try:
        client.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
